"""Data loaders for FIBER: detectron2's loaders with the FIBER mapper and mixed datasets.

``build_fiber_train_loader(cfg)`` concatenates every dataset of ``DATASETS.TRAIN`` (detection and
grounding datasets may be mixed, as in FIBER pre-training: Objects365 + GoldG + Flickr30k),
tags each dict with ``source_dataset`` so that the mapper can find its metadata, filters images
without usable boxes like the official code, and wraps ``build_detection_train_loader``.
``build_fiber_test_loader(cfg, name)`` wraps ``build_detection_test_loader`` with batch size 1
(official evaluation), or, with ``TEST.FIBER.GROUP_BY_IMAGE`` / ``SIZE_BUCKET_BATCH``, gives one
input per image of a grounding dataset and batches of one padded size (:mod:`.grouping`, exact).
"""

import logging
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.structures import BoxMode

from .grouping import build_grouped_test_loader, evaluation_batch_size
from .mapper import FIBERDatasetMapper
from .transforms import build_fiber_augmentations

__all__ = [
    "build_fiber_test_loader",
    "build_fiber_train_loader",
    "get_fiber_dataset_dicts",
    "has_valid_annotation",
]

logger = logging.getLogger(__name__)


def has_valid_annotation(annotations: Sequence[Dict]) -> bool:
    """Official training filter (``has_valid_annotation`` in maskrcnn_benchmark's coco.py).

    An image is kept if it has at least one annotation whose box is wider and taller than 1
    pixel (crowd annotations count, as officially).
    """
    for obj in annotations:
        mode = obj.get("bbox_mode", BoxMode.XYWH_ABS)
        _, _, w, h = BoxMode.convert(list(obj["bbox"]), mode, BoxMode.XYWH_ABS)
        if w > 1 and h > 1:
            return True
    return False


def get_fiber_dataset_dicts(names: Sequence[str], *, filter_empty: bool = False) -> List[Dict]:
    """Load and concatenate datasets; each dict gets ``source_dataset`` (its registered name).

    Args:
        names: registered dataset names.
        filter_empty: drop images without a valid box (:func:`has_valid_annotation`); the
            official code does this for every training set. The number dropped is logged.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no dataset given: set DATASETS.TRAIN / DATASETS.TEST")
    all_dicts = []
    for name in names:
        if name not in DatasetCatalog:
            raise KeyError(
                f"dataset {name!r} is not registered: register it with "
                "fiber_det.data.register_detection_dataset / register_grounding_dataset "
                "(see datasets/README.md)"
            )
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"dataset {name!r} is empty")
        for d in dicts:
            d["source_dataset"] = name
        if filter_empty:
            kept = [d for d in dicts if has_valid_annotation(d.get("annotations", []))]
            if len(kept) < len(dicts):
                logger.info(
                    "%s: removed %d of %d images without a valid box (official training filter; "
                    "DATALOADER.FILTER_EMPTY_ANNOTATIONS False keeps them as negative images)",
                    name,
                    len(dicts) - len(kept),
                    len(dicts),
                )
            if not kept:
                raise ValueError(f"dataset {name!r} has no image with a valid box")
            dicts = kept
        all_dicts.extend(dicts)
    return all_dicts


def _train_sampler(cfg, dicts: List[Dict]):
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return TrainingSampler(len(dicts))
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return RepeatFactorTrainingSampler(factors)
    raise ValueError(
        f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported by build_fiber_train_loader: use "
        "TrainingSampler (official) or RepeatFactorTrainingSampler"
    )


def build_fiber_train_loader(cfg, mapper: Optional[Callable] = None):
    """The training loader of ``cfg.DATASETS.TRAIN`` (infinite stream of lists of inputs).

    Args:
        cfg: config with the FIBER keys.
        mapper: default :class:`FIBERDatasetMapper` (``is_train=True``), built after the datasets
            are loaded so that it snapshots their vocabularies.
    """
    dicts = get_fiber_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    if mapper is None:
        mapper = FIBERDatasetMapper(cfg, True, dataset_names=cfg.DATASETS.TRAIN)
    return build_detection_train_loader(
        dataset=dicts,
        mapper=mapper,
        sampler=_train_sampler(cfg, dicts),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_fiber_test_loader(
    cfg, dataset_name: str, mapper: Optional[Callable] = None, batch_size: Optional[int] = None
):
    """The evaluation loader of one dataset (every image once).

    Args:
        cfg: config with the FIBER keys.
        dataset_name: a registered dataset.
        mapper: default :class:`FIBERDatasetMapper` (``is_train=False``).
        batch_size: images per batch, batched only with images of the same padded size
            (default ``TEST.FIBER.SIZE_BUCKET_BATCH``; official evaluation: 1).

    With ``TEST.FIBER.GROUP_BY_IMAGE``, the queries of one image of a grounding dataset (Flickr30k
    captions, RefCOCO expressions) come as one input with ``prompts``; the evaluators split its
    output back into one record per query.
    """
    dicts = get_fiber_dataset_dicts([dataset_name], filter_empty=False)
    if mapper is None:
        mapper = FIBERDatasetMapper(cfg, False, dataset_names=[dataset_name])
    if batch_size is None:
        batch_size = evaluation_batch_size(cfg)
    group = cfg.TEST.FIBER.GROUP_BY_IMAGE and _is_grounding(dataset_name, dicts)
    if not group and batch_size == 1:
        return build_detection_test_loader(
            dataset=dicts, mapper=mapper, batch_size=1, num_workers=cfg.DATALOADER.NUM_WORKERS
        )
    return build_grouped_test_loader(
        dicts,
        mapper,
        group_images=group,
        batch_size=batch_size,
        augmentations=build_fiber_augmentations(cfg, False),
        size_divisibility=cfg.MODEL.FIBER.SIZE_DIVISIBILITY,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def _is_grounding(dataset_name: str, dicts: List[Dict]) -> bool:
    """Grounding data (captions with phrases), as the mapper decides it."""
    fmt = MetadataCatalog.get(dataset_name).get("data_format", None)
    return fmt == "grounding" if fmt is not None else "caption" in dicts[0]
