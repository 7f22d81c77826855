"""The data loaders of fiber-det: one training loader (every sampler, mixed datasets,
resumable) and the evaluation loader.

``build_fiber_train_loader(cfg)`` loads every dataset of ``DATASETS.TRAIN`` (detection and
grounding datasets may be mixed, as in FIBER pre-training: Objects365 + GoldG + Flickr30k; each
dict tagged with ``source_dataset`` so the mapper finds its metadata), filters images without
usable boxes like the official code, optionally cuts few-shot subsets and copies datasets, and
streams them with the sampler of ``DATALOADER.SAMPLER_TRAIN`` (:mod:`.samplers`):

* ``MixedTrainingSampler`` (default): the official random order over the concatenation, with
  ``DATALOADER.FIBER.COPIES`` or ``SAMPLING_RATIOS``, resumable in O(1);
* ``TrainingSampler`` / ``RepeatFactorTrainingSampler``: detectron2's samplers (the latter with
  LVIS-style repeat factors, ``DATALOADER.REPEAT_THRESHOLD``), resumable by fast-forward.

Image-text pair datasets (stage 1, ``data_format == "pairs"``; :mod:`.datasets.pairs`) go through
the same loader with the :class:`~fiber_det.data.pair_mapper.PairDatasetMapper`, without the box
filter, and with the sampler of ``DATASETS.COARSE.SAMPLE_BY``: "caption" (official: an epoch visits
each image once per caption, detectron2's ``RepeatFactorTrainingSampler`` with
:func:`~fiber_det.data.datasets.pairs.pair_repeat_factors`) or "image" (``SAMPLER_TRAIN``, once per
image). Pair and box datasets cannot be mixed in one run (different models).

Whatever the sampler, each image's augmentation and prompt sampling are seeded by its stream
position, so ``--resume`` continues with the batches of the uninterrupted run. Batching
(aspect-ratio grouping, workers) is detectron2's ``build_batch_data_loader``.
``build_fiber_test_loader(cfg, name)`` wraps ``build_detection_test_loader`` with batch size 1
(official evaluation), or, with ``TEST.FIBER.GROUP_BY_IMAGE`` / ``SIZE_BUCKET_BATCH``, gives one
input per image of a grounding dataset and batches of one padded size (:mod:`.grouping`, exact).
"""

import logging
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.build import build_batch_data_loader
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.structures import BoxMode
from detectron2.utils import comm

from .datasets.custom import CUSTOM_PAIRS_TEST, CUSTOM_PAIRS_TRAIN, CUSTOM_TRAIN, CUSTOM_VAL
from .datasets.pairs import pair_repeat_factors
from .grouping import build_grouped_test_loader, evaluation_batch_size
from .mapper import FIBERDatasetMapper
from .pair_mapper import PairDatasetMapper
from .samplers import MixedTrainingSampler, NegativeBatchFilter, PositionedSampler, SeededMapDataset
from .transforms import build_fiber_augmentations

__all__ = [
    "TRAIN_SAMPLERS",
    "TrainingSet",
    "build_fiber_test_loader",
    "build_fiber_train_loader",
    "build_train_sampler",
    "few_shot_subset",
    "get_fiber_dataset_dicts",
    "has_valid_annotation",
    "is_pair_dataset",
    "load_training_set",
]

logger = logging.getLogger(__name__)

TRAIN_SAMPLERS = ("MixedTrainingSampler", "TrainingSampler", "RepeatFactorTrainingSampler")


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


def is_pair_dataset(name: str) -> bool:
    """Whether the registered dataset ``name`` holds image-text pairs (stage 1)."""
    return MetadataCatalog.get(name).get("data_format", "detection") == "pairs"


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
        if name in (CUSTOM_TRAIN, CUSTOM_VAL) and name not in DatasetCatalog:
            raise KeyError(
                f"dataset {name!r} is not registered: set DATASETS.CUSTOM.TRAIN_JSON / "
                "TRAIN_IMAGES (VAL_JSON / VAL_IMAGES for custom_val) and load the config with "
                "fiber_det.config.load_config, or call fiber_det.data.register_custom_datasets(cfg)"
            )
        if name in (CUSTOM_PAIRS_TRAIN, CUSTOM_PAIRS_TEST) and name not in DatasetCatalog:
            raise KeyError(
                f"dataset {name!r} is not registered: set DATASETS.COARSE.CUSTOM_TRAIN (or "
                "CUSTOM_TEST) to your pair files and load the config with "
                "fiber_det.config.load_config"
            )
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


# -- the training set --------------------------------------------------------------------------
def few_shot_subset(dicts: List[Dict], shots: int, seed: int = 0) -> List[Dict]:
    """Official few-shot selection (``FEW_SHOT``; maskrcnn_benchmark ``coco.py``).

    Images are visited in file order (shuffled with ``random.Random(seed)`` when ``seed`` != 0);
    an image is kept when one of its categories still needs examples, and then counts once for
    every category it contains.
    """
    order = list(dicts)
    if seed:
        random.Random(seed).shuffle(order)
    needed: Dict[int, int] = {}
    kept = []
    for d in order:
        cats = {int(a["category_id"]) for a in d.get("annotations", [])}
        if any(needed.get(c, shots) > 0 for c in cats):
            kept.append(d)
            for c in cats:
                needed[c] = needed.get(c, shots) - 1
    return kept


@dataclass
class TrainingSet:
    """Dataset dicts of ``DATASETS.TRAIN`` (one list per dataset) and their copies / ratios.

    ``pairs``: image-text pair datasets; ``sample_by`` ("caption" / "image", pairs only): what
    an epoch enumerates (``DATASETS.COARSE.SAMPLE_BY``).
    """

    names: List[str]
    dicts: List[List[Dict]]
    copies: List[int]
    ratios: List[float]
    pairs: bool = False
    sample_by: str = "image"

    def repeat_factors(self) -> List[torch.Tensor]:
        """Visits of each image per epoch, one tensor per dataset (copies included)."""
        by = self.sample_by if self.pairs else "image"
        return [pair_repeat_factors(d, by) * c for d, c in zip(self.dicts, self.copies)]

    def __len__(self) -> int:
        """Samples per epoch, copies included (the official dataset length: images, or
        image-caption pairs for pair datasets sampled by caption)."""
        if self.pairs and self.sample_by == "caption":
            return int(sum(float(f.sum()) for f in self.repeat_factors()))
        return sum(len(d) * c for d, c in zip(self.dicts, self.copies))

    def describe(self) -> str:
        parts = [
            f"{n}: {len(d)} images x{c}" + (f" (p={r:.3g})" if self.ratios else "")
            for n, d, c, r in zip(self.names, self.dicts, self.copies, self.ratios or self.copies)
        ]
        unit = "image-caption pairs" if self.pairs and self.sample_by == "caption" else "images"
        return f"training set of {len(self)} {unit} per epoch: " + "; ".join(parts)


def _per_dataset(values: Sequence, names: Sequence[str], key: str, default) -> List:
    if not values:
        return [default] * len(names)
    if len(values) != len(names):
        raise ValueError(
            f"{key} has {len(values)} values for {len(names)} datasets in DATASETS.TRAIN "
            f"{list(names)}: give one per dataset (or [] for the default)"
        )
    return list(values)


def load_training_set(cfg) -> TrainingSet:
    """Load the training datasets of ``cfg`` (see module docstring)."""
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: name the training datasets")
    opts = cfg.DATALOADER.FIBER
    copies = [int(c) for c in _per_dataset(opts.COPIES, names, "DATALOADER.FIBER.COPIES", 1)]
    if any(c < 1 for c in copies):
        raise ValueError(f"DATALOADER.FIBER.COPIES must be whole numbers >= 1, got {copies}")
    ratios = list(opts.SAMPLING_RATIOS)
    if ratios:
        ratios = _per_dataset(ratios, names, "DATALOADER.FIBER.SAMPLING_RATIOS", 1.0)
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"DATALOADER.FIBER.SAMPLING_RATIOS must be >= 0, not all 0: {ratios}")
        total = float(sum(ratios))
        ratios = [r / total for r in ratios]
    pairs = _check_one_kind(names)
    dicts = []
    for name in names:
        if pairs:  # no boxes: nothing to filter, no categories to sample shots of
            dicts.append(get_fiber_dataset_dicts([name], filter_empty=False))
            continue
        d = get_fiber_dataset_dicts([name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        grounding = MetadataCatalog.get(name).get("data_format", "detection") == "grounding"
        if opts.FEW_SHOT > 0 and grounding:
            logger.info("%s: grounding data, FEW_SHOT (per category) does not apply", name)
        elif opts.FEW_SHOT > 0:
            n = len(d)
            d = few_shot_subset(d, opts.FEW_SHOT, opts.FEW_SHOT_SEED)
            logger.info("%s: %d-shot subset of %d of %d images", name, opts.FEW_SHOT, len(d), n)
        dicts.append(d)
    sample_by = cfg.DATASETS.COARSE.SAMPLE_BY if pairs else "image"
    out = TrainingSet(names, dicts, copies, ratios, pairs=pairs, sample_by=sample_by)
    logger.info("%s", out.describe())
    return out


def _check_one_kind(names: Sequence[str]) -> bool:
    """True if every dataset of ``names`` holds image-text pairs, False if none does."""
    kinds = {name: is_pair_dataset(name) for name in names}
    if len(set(kinds.values())) > 1:
        pair_sets = [n for n, k in kinds.items() if k]
        box_sets = [n for n, k in kinds.items() if not k]
        raise ValueError(
            f"DATASETS.TRAIN mixes image-text pair datasets {pair_sets} (stage 1, the coarse "
            f"model FIBERCoarse) with box datasets {box_sets} (stage 2, FIBERDetector): train "
            "them in separate runs, the stage-1 checkpoint initialising stage 2 (MODEL.WEIGHTS)"
        )
    return bool(names) and all(kinds.values())


# -- the training loader ------------------------------------------------------------------------
def build_train_sampler(cfg, training_set: TrainingSet, seed: int):
    """The ``(position, index)`` stream of ``DATALOADER.SAMPLER_TRAIN`` over ``training_set``."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    sizes = [len(d) for d in training_set.dicts]
    if training_set.pairs:
        if training_set.ratios:
            raise ValueError(
                "DATALOADER.FIBER.SAMPLING_RATIOS is not supported for image-text pair datasets: "
                "use DATALOADER.FIBER.COPIES"
            )
        if training_set.sample_by == "caption":
            factors = torch.cat(training_set.repeat_factors())
            return PositionedSampler(RepeatFactorTrainingSampler(factors, seed=seed))
        if name == "RepeatFactorTrainingSampler":
            raise ValueError(
                "DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler repeats images by category "
                "frequency, which image-text pairs do not have: use DATASETS.COARSE.SAMPLE_BY "
                "'caption' (official) or another sampler"
            )
    if name == "MixedTrainingSampler":
        return MixedTrainingSampler(
            sizes, copies=training_set.copies, ratios=training_set.ratios, seed=seed
        )
    if name not in TRAIN_SAMPLERS:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported: use one of {TRAIN_SAMPLERS}"
        )
    if training_set.ratios or any(c != 1 for c in training_set.copies):
        raise ValueError(
            f"DATALOADER.FIBER.COPIES / SAMPLING_RATIOS need DATALOADER.SAMPLER_TRAIN "
            f"MixedTrainingSampler, not {name}"
        )
    dicts = [d for part in training_set.dicts for d in part]
    if name == "TrainingSampler":
        return PositionedSampler(TrainingSampler(len(dicts), seed=seed))
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, cfg.DATALOADER.REPEAT_THRESHOLD
    )
    return PositionedSampler(RepeatFactorTrainingSampler(factors, seed=seed))


def build_fiber_train_loader(
    cfg,
    mapper: Optional[Callable] = None,
    *,
    training_set: Optional[TrainingSet] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> NegativeBatchFilter:
    """The training loader of ``cfg`` (an infinite stream of lists of model inputs).

    Args:
        cfg: config with the FIBER keys.
        mapper: default :class:`FIBERDatasetMapper` (``is_train=True``), built after the datasets
            are loaded so that it snapshots their vocabularies; :class:`PairDatasetMapper` for
            image-text pairs.
        training_set: the loaded ``DATASETS.TRAIN`` (:func:`load_training_set`), if the caller
            already has it.
        seed: stream seed; default ``SEED``, or a seed shared by all processes when it is < 0.
        batch_size: images of one forward pass over all processes; default
            ``SOLVER.IMS_PER_BATCH`` (smaller with gradient accumulation).
    Returns:
        an iterable of batches with ``.sampler`` (``set_start_iter`` for resuming).
    """
    if training_set is None:
        training_set = load_training_set(cfg)
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    if mapper is None and training_set.pairs:
        mapper = PairDatasetMapper(cfg, True)
    elif mapper is None:
        mapper = FIBERDatasetMapper(cfg, True, dataset_names=training_set.names)
    sampler = build_train_sampler(cfg, training_set, seed)
    dicts = [d for part in training_set.dicts for d in part]
    loader = build_batch_data_loader(
        SeededMapDataset(dicts, mapper, seed),
        sampler,
        cfg.SOLVER.IMS_PER_BATCH if batch_size is None else batch_size,
        # Pair images are all S x S: grouping them would only make the images of a batch depend
        # on the number of workers (detectron2 interleaves the workers' single images).
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING and not training_set.pairs,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return NegativeBatchFilter(loader, cfg.SOLVER.FIBER.MAX_NEG_PER_BATCH, sampler=sampler)


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
