"""Meta-architecture (registers ``FIBERDetector`` in META_ARCH_REGISTRY)."""

from .fiber_detector import FIBERDetector

__all__ = ["FIBERDetector"]
