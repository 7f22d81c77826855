"""FIBER model. Importing this package registers the backbone (``build_fiber_backbone``) and the
meta-architectures (``FIBERDetector``, ``FIBERCoarse``) in detectron2's registries."""

from . import backbone, head, meta_arch  # noqa: F401  registration
from .backbone import FIBERBackbone, TextFeatures, build_fiber_backbone
from .head import FIBERGroundingHead
from .meta_arch import FIBERCoarse, FIBERDetector

__all__ = [
    "FIBERBackbone",
    "FIBERCoarse",
    "FIBERDetector",
    "FIBERGroundingHead",
    "TextFeatures",
    "build_fiber_backbone",
]
