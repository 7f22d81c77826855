"""Dataset loaders and registration. Importing this package registers the builtin datasets."""

from . import builtin  # noqa: F401  registers the builtin datasets under $DETECTRON2_DATASETS
from .builtin import COCO_O_DOMAINS, ODINW_13, register_all_fiber_datasets
from .d3 import load_d3_json, register_d3_dataset
from .detection import load_detection_json, load_lvis_detection_json, register_detection_dataset
from .grounding import load_mdetr_grounding_json, register_grounding_dataset
from .validation import AnnotationError

__all__ = [
    "AnnotationError",
    "COCO_O_DOMAINS",
    "ODINW_13",
    "load_d3_json",
    "load_detection_json",
    "load_lvis_detection_json",
    "load_mdetr_grounding_json",
    "register_all_fiber_datasets",
    "register_d3_dataset",
    "register_detection_dataset",
    "register_grounding_dataset",
]
