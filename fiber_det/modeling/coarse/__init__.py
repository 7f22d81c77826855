"""Parts of the coarse-grained FIBER model (:class:`~fiber_det.modeling.meta_arch.FIBERCoarse`):
heads, ITC queue, losses, the training step and retrieval scoring."""

from .heads import ITMHead, MLMHead, Pooler
from .queue import ITCQueue

__all__ = ["ITCQueue", "ITMHead", "MLMHead", "Pooler"]
