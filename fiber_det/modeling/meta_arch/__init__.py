"""Meta-architectures (register ``FIBERDetector`` and ``FIBERCoarse`` in META_ARCH_REGISTRY)."""

from .coarse import FIBERCoarse
from .fiber_detector import FIBERDetector

__all__ = ["FIBERCoarse", "FIBERDetector"]
