"""FIBER backbone: fused Swin + RoBERTa + FPN (registers ``build_fiber_backbone``)."""

from .fiber_backbone import FIBERBackbone, TextFeatures, TextState, build_fiber_backbone
from .fpn import FIBERFPN
from .roberta import FusionRobertaModel
from .swin import FusionSwinTransformer, SwinState

__all__ = [
    "FIBERBackbone",
    "FIBERFPN",
    "FusionRobertaModel",
    "FusionSwinTransformer",
    "SwinState",
    "TextFeatures",
    "TextState",
    "build_fiber_backbone",
]
