"""Checkpoints: the one ``FIBERCheckpointer`` and the formats it reads (official fine-grained
FIBER, coarse-grained FIBER, Swin ImageNet, roberta-base, fiber-det's own)."""

from .checkpointer import FIBERCheckpointer
from .loading import build_and_load_model, load_ema_weights
from .official import (
    CheckpointError,
    ConversionReport,
    convert_official_state_dict,
    detect_fusion_version,
    is_official_state_dict,
    unwrap_state_dict,
)
from .pretrained import find_submodule

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "FIBERCheckpointer",
    "build_and_load_model",
    "convert_official_state_dict",
    "detect_fusion_version",
    "find_submodule",
    "is_official_state_dict",
    "load_ema_weights",
    "unwrap_state_dict",
]
