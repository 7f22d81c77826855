"""Dataset loaders and registration. Importing this package registers the builtin datasets."""

from . import builtin  # noqa: F401  registers the builtin datasets under $DETECTRON2_DATASETS
from .builtin import COCO_O_DOMAINS, ODINW_13, OFFICIAL_PAIR_MIXES, register_all_fiber_datasets
from .custom import CUSTOM_TRAIN, CUSTOM_VAL, register_custom_datasets
from .d3 import load_d3_json, register_d3_dataset
from .detection import load_detection_json, load_lvis_detection_json, register_detection_dataset
from .grounding import load_mdetr_grounding_json, register_grounding_dataset
from .pairs import (
    ArrowImageReader,
    load_arrow_pairs,
    load_jsonl_pairs,
    pair_repeat_factors,
    register_pair_dataset,
    retrieval_texts,
)
from .validation import AnnotationError

__all__ = [
    "AnnotationError",
    "ArrowImageReader",
    "COCO_O_DOMAINS",
    "CUSTOM_TRAIN",
    "CUSTOM_VAL",
    "ODINW_13",
    "OFFICIAL_PAIR_MIXES",
    "load_arrow_pairs",
    "load_d3_json",
    "load_detection_json",
    "load_jsonl_pairs",
    "load_lvis_detection_json",
    "load_mdetr_grounding_json",
    "pair_repeat_factors",
    "register_all_fiber_datasets",
    "register_custom_datasets",
    "register_d3_dataset",
    "register_detection_dataset",
    "register_grounding_dataset",
    "register_pair_dataset",
    "retrieval_texts",
]
