"""The training data of FIBER: mixed datasets, a resumable sample stream, reproducible images.

* :func:`load_training_set`: the datasets of ``DATASETS.TRAIN`` (loaded with
  ``fiber_det.data.get_fiber_dataset_dicts``; empty images filtered as officially), optionally cut
  to a few-shot subset (official ``FEW_SHOT``, detection datasets), copied a whole number of times
  (``DATALOADER.FIBER.COPIES``, official ``*_COPY`` / ``GENERAL_COPY``). Its size is the epoch
  length of ``SOLVER.FIBER.MAX_EPOCH``.
* :class:`MixedTrainingSampler`: an infinite stream over the concatenation (a new permutation per
  pass, as the official random sampler over a ``ConcatDataset``), or, as an option, each image's
  dataset drawn with ``DATALOADER.FIBER.SAMPLING_RATIOS``. Ranks take every ``world_size``-th
  position, like detectron2's ``TrainingSampler``, so the images of an iteration are the same for
  any number of processes with the same total batch. Each pass is seeded from (seed, pass), so
  ``set_start_iter`` skips to any iteration in O(1) (``--resume``).
* :class:`SeededMapDataset`: maps a stream position to a model input with the RNGs seeded from
  (seed, position), so an image's augmentation and prompt sampling do not depend on workers,
  processes or resumption (the global RNG states are restored afterwards).
* :class:`NegativeBatchFilter`: replaces a batch with too many images without boxes by the next
  one (official ``MAX_NEG_PER_BATCH``, which skips it).

Batching (aspect-ratio grouping, workers) is detectron2's ``build_batch_data_loader``.
"""

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList, MetadataCatalog
from detectron2.data.build import build_batch_data_loader
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

__all__ = [
    "MixedTrainingSampler",
    "NegativeBatchFilter",
    "SeededMapDataset",
    "TrainingSet",
    "build_mixed_train_loader",
    "few_shot_subset",
    "load_training_set",
]

logger = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers (splitmix-style, no Python hash randomisation)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK63)) * 0xBF58476D1CE4E5B9 & _MASK63
        x ^= x >> 31
    return x & _MASK63


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
    """Dataset dicts of ``DATASETS.TRAIN`` (one list per dataset) and their copies / ratios."""

    names: List[str]
    dicts: List[List[Dict]]
    copies: List[int]
    ratios: List[float]

    def __len__(self) -> int:
        """Images per epoch, copies included (the official dataset length)."""
        return sum(len(d) * c for d, c in zip(self.dicts, self.copies))

    def describe(self) -> str:
        parts = [
            f"{n}: {len(d)} images x{c}" + (f" (p={r:.3g})" if self.ratios else "")
            for n, d, c, r in zip(self.names, self.dicts, self.copies, self.ratios or self.copies)
        ]
        return f"training set of {len(self)} images per epoch: " + "; ".join(parts)


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
    from ..data import get_fiber_dataset_dicts

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
    dicts = []
    for name in names:
        d = get_fiber_dataset_dicts([name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        grounding = MetadataCatalog.get(name).get("data_format", "detection") == "grounding"
        if opts.FEW_SHOT > 0 and grounding:
            logger.info("%s: grounding data, FEW_SHOT (per category) does not apply", name)
        elif opts.FEW_SHOT > 0:
            n = len(d)
            d = few_shot_subset(d, opts.FEW_SHOT, opts.FEW_SHOT_SEED)
            logger.info("%s: %d-shot subset of %d of %d images", name, opts.FEW_SHOT, len(d), n)
        dicts.append(d)
    out = TrainingSet(names=names, dicts=dicts, copies=copies, ratios=ratios)
    logger.info("%s", out.describe())
    return out


# -- the sample stream -------------------------------------------------------------------------
class MixedTrainingSampler(Sampler):
    """Infinite, resumable stream of ``(position, index)`` over a concatenation of datasets.

    Args:
        sizes (list[int]): images per dataset; the concatenated index of image ``j`` of dataset
            ``d`` is ``sum(sizes[:d]) + j``.
        copies (list[int]): whole-number copies of each dataset per pass.
        ratios (list[float]): if given, each position draws its dataset with these probabilities
            (and an image of it from that dataset's own passes) instead of the concatenation.
        shuffle (bool): random order (False: file order, for debugging).
        seed (int): stream seed; all ranks must use the same.
        rank, world_size (int): this process takes positions ``rank, rank + world_size, ...``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        copies: Optional[Sequence[int]] = None,
        ratios: Optional[Sequence[float]] = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"every training dataset needs images, got sizes {self.sizes}")
        self.copies = list(copies) if copies else [1] * len(self.sizes)
        self.ratios = list(ratios) if ratios else []
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.pass_length = sum(s * c for s, c in zip(self.sizes, self.copies))
        self.start_position = 0

    def set_start_iter(self, iteration: int, batch_size_per_rank: int) -> None:
        """Continue the stream at the first image of ``iteration`` (before iterating)."""
        self.start_position = iteration * batch_size_per_rank * self.world_size

    def _pass(self, p: int) -> torch.Tensor:
        """Concatenated indices of pass ``p`` (copies included)."""
        base = torch.cat(
            [
                torch.arange(o, o + s).repeat(c)
                for o, s, c in zip(self.offsets, self.sizes, self.copies)
            ]
        )
        if not self.shuffle:
            return base
        g = torch.Generator().manual_seed(_mix(self.seed, p))
        return base[torch.randperm(len(base), generator=g)]

    def _ratio_pass(self, p: int) -> torch.Tensor:
        """Pass ``p`` in ratio mode: datasets drawn per position, images from per-dataset passes."""
        g = torch.Generator().manual_seed(_mix(self.seed, p, 1))
        which = torch.multinomial(
            torch.tensor(self.ratios, dtype=torch.float64), self.pass_length, True, generator=g
        )
        out = torch.empty(self.pass_length, dtype=torch.long)
        for d, (o, s) in enumerate(zip(self.offsets, self.sizes)):
            slots = (which == d).nonzero().flatten()
            reps = -(-len(slots) // s) if len(slots) else 0
            gd = torch.Generator().manual_seed(_mix(self.seed, p, 2, d))
            idx = torch.cat(
                [torch.randperm(s, generator=gd) for _ in range(reps)]
                or [torch.empty(0, dtype=torch.long)]
            )
            out[slots] = idx[: len(slots)] + o
        return out

    def positions(self) -> Iterator[Tuple[int, int]]:
        """The whole stream (all ranks) from ``start_position``: (position, index)."""
        p, offset = divmod(self.start_position, self.pass_length)
        while True:
            order = (self._ratio_pass(p) if self.ratios else self._pass(p)).tolist()
            for i in range(offset, self.pass_length):
                yield p * self.pass_length + i, order[i]
            p, offset = p + 1, 0

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        first = (self.rank - self.start_position) % self.world_size
        for k, item in enumerate(self.positions()):
            if k >= first and (k - first) % self.world_size == 0:
                yield item


class SeededMapDataset(Dataset):
    """``mapper(dicts[index])`` for ``(position, index)`` keys, reproducible per position.

    Args:
        dicts (list[dict]): the concatenated dataset dicts (stored serialised, as detectron2's
            ``DatasetFromList``, so that workers share the memory).
        mapper (callable): dataset dict -> model input (``FIBERDatasetMapper``).
        seed (int): stream seed.
        max_retries (int): a mapper returning None (an unusable image) is retried on other
            images, chosen deterministically.
    """

    def __init__(self, dicts: List[Dict], mapper: Callable, seed: int, max_retries: int = 10):
        self._data = DatasetFromList(dicts, copy=False, serialize=True)
        self._mapper = mapper
        self._seed = int(seed)
        self._max_retries = max_retries

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: Tuple[int, int]):
        position, index = key
        for attempt in range(self._max_retries + 1):
            seed = _mix(self._seed, position, attempt) % (2**32)
            with _seeded_rngs(seed):
                out = self._mapper(self._data[index])
            if out is not None:
                return out
            retry = random.Random(seed).randrange(len(self._data))
            logger.warning("the mapper returned None for image %d; trying image %d", index, retry)
            index = retry
        raise RuntimeError(
            f"the mapper returned None {self._max_retries + 1} times in a row; check the dataset"
        )


@contextmanager
def _seeded_rngs(seed: int):
    """Seed ``random``, ``numpy`` and ``torch`` (CPU) for a block; restore their states after."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA RNGs are left alone
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class NegativeBatchFilter:
    """Yield the batches of ``loader``, replacing those with too many images without boxes.

    A batch is replaced when all its images, or more than ``max_negative_fraction`` of them, have
    no box (official ``MAX_NEG_PER_BATCH``). The decision is local to each process.
    """

    def __init__(self, loader, max_negative_fraction: float, sampler=None, max_tries: int = 100):
        self.loader = loader
        self.max_negative_fraction = max_negative_fraction
        self.sampler = sampler
        self.max_tries = max_tries
        self.replaced = 0

    def _too_negative(self, batch: List[Dict]) -> bool:
        neg = sum(1 for x in batch if "instances" in x and len(x["instances"]) == 0)
        return neg == len(batch) or neg > len(batch) * self.max_negative_fraction

    def __iter__(self):
        tries = 0
        for batch in self.loader:
            if self.max_negative_fraction < 1 and self._too_negative(batch):
                self.replaced += 1
                tries += 1
                if tries > self.max_tries:
                    raise RuntimeError(
                        f"{self.max_tries} batches in a row had too many images without boxes: "
                        "check the dataset / prompts, or raise SOLVER.FIBER.MAX_NEG_PER_BATCH"
                    )
                if self.replaced % 100 == 1:
                    logger.info(
                        "replaced %d batches with too many images without boxes so far",
                        self.replaced,
                    )
                continue
            tries = 0
            yield batch


def build_mixed_train_loader(
    cfg, training_set: TrainingSet, mapper: Callable, seed: int
) -> NegativeBatchFilter:
    """The training loader of ``training_set`` (lists of model inputs, one per iteration).

    The returned iterable has ``.sampler`` (a :class:`MixedTrainingSampler`).
    """
    dicts = [d for part in training_set.dicts for d in part]
    sampler = MixedTrainingSampler(
        [len(d) for d in training_set.dicts],
        copies=training_set.copies,
        ratios=training_set.ratios,
        seed=seed,
    )
    loader = build_batch_data_loader(
        SeededMapDataset(dicts, mapper, seed),
        sampler,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return NegativeBatchFilter(loader, cfg.SOLVER.FIBER.MAX_NEG_PER_BATCH, sampler=sampler)
