"""Datasets, mappers, samplers and loaders of fiber-det.

Importing this package registers the builtin datasets (COCO, LVIS, Objects365, Flickr30k, GoldG,
RefCOCO/+/g, ODinW-13, COCO-O, D3; the image-text pairs of stage 1: COCO / Flickr30k Karpathy
splits, VG, SBU, CC3M) under ``$DETECTRON2_DATASETS`` (default ``datasets/``), lazily:
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
    is_pair_dataset,
    load_training_set,
)
from .datasets import (
    load_d3_json,
    load_detection_json,
    load_lvis_detection_json,
    load_mdetr_grounding_json,
    pair_repeat_factors,
    register_all_fiber_datasets,
    register_custom_datasets,
    register_d3_dataset,
    register_detection_dataset,
    register_grounding_dataset,
    register_pair_dataset,
    retrieval_texts,
)
from .mapper import FIBERDatasetMapper
from .pair_mapper import PairDatasetMapper
from .pair_transforms import build_pair_transform
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
    "PairDatasetMapper",
    "PromptEncoder",
    "build_fiber_augmentations",
    "build_fiber_test_loader",
    "build_fiber_train_loader",
    "build_train_sampler",
    "few_shot_subset",
    "build_pair_transform",
    "get_fiber_dataset_dicts",
    "has_valid_annotation",
    "is_pair_dataset",
    "load_d3_json",
    "load_detection_json",
    "load_lvis_detection_json",
    "load_mdetr_grounding_json",
    "load_training_set",
    "pair_repeat_factors",
    "register_all_fiber_datasets",
    "register_custom_datasets",
    "register_d3_dataset",
    "register_detection_dataset",
    "register_grounding_dataset",
    "register_pair_dataset",
    "retrieval_texts",
]
