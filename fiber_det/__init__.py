"""fiber_det: FIBER as a detectron2 extension.

Importing the package registers everything with detectron2 (backbone, meta-architecture and
datasets), so that ``build_model(cfg)`` and ``DatasetCatalog.get(name)`` work after
``import fiber_det``.
"""

__version__ = "0.1.0"

from . import modeling  # noqa: E402,F401  registers the FIBER backbone, head and meta-arch
from .config import add_fiber_config  # noqa: E402
from .data import datasets as _datasets  # noqa: E402,F401  registers the builtin datasets

__all__ = ["add_fiber_config", "__version__"]
