"""Datasets, mappers, samplers and loaders of fiber-det.

Importing this package registers the builtin datasets (COCO, LVIS, Objects365, Flickr30k, GoldG,
RefCOCO/+/g, ODinW-13, COCO-O, D3) under ``$DETECTRON2_DATASETS`` (default ``datasets/``), lazily:
no file is read until a dataset is loaded.
"""

from . import datasets  # noqa: F401  registers the builtin datasets
from .build import (
    TRAIN_SAMPLERS,
    TrainingSet,
    build_fiber_test_loader,
    build_fiber_train_loader,
    build_train_sampler,
    few_shot_subset,
    get_fiber_dataset_dicts,
    has_valid_annotation,
    load_training_set,
)
from .datasets import (
    load_d3_json,
    load_detection_json,
    load_lvis_detection_json,
    load_mdetr_grounding_json,
    register_all_fiber_datasets,
    register_custom_datasets,
    register_d3_dataset,
    register_detection_dataset,
    register_grounding_dataset,
)
from .mapper import FIBERDatasetMapper
from .prompting import EncodedPrompt, PromptEncoder
from .samplers import MixedTrainingSampler, NegativeBatchFilter, PositionedSampler, SeededMapDataset
from .transforms import build_fiber_augmentations

__all__ = [
    "EncodedPrompt",
    "FIBERDatasetMapper",
    "MixedTrainingSampler",
    "NegativeBatchFilter",
    "PositionedSampler",
    "SeededMapDataset",
    "TRAIN_SAMPLERS",
    "TrainingSet",
    "PromptEncoder",
    "build_fiber_augmentations",
    "build_fiber_test_loader",
    "build_fiber_train_loader",
    "build_train_sampler",
    "few_shot_subset",
    "get_fiber_dataset_dicts",
    "has_valid_annotation",
    "load_d3_json",
    "load_detection_json",
    "load_lvis_detection_json",
    "load_mdetr_grounding_json",
    "load_training_set",
    "register_all_fiber_datasets",
    "register_custom_datasets",
    "register_d3_dataset",
    "register_detection_dataset",
    "register_grounding_dataset",
]
