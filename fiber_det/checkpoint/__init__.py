"""Checkpoint conversion and loading: official FIBER releases, Swin ImageNet, roberta-base."""

from .checkpointer import FIBERCheckpointer
from .official import (
    CheckpointError,
    ConversionReport,
    convert_official_state_dict,
    detect_fusion_version,
    is_official_state_dict,
    unwrap_state_dict,
)

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "FIBERCheckpointer",
    "convert_official_state_dict",
    "detect_fusion_version",
    "is_official_state_dict",
    "unwrap_state_dict",
]
