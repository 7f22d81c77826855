"""The training stream of fiber-det: resumable, reproducible per image, for every sampler.

* :class:`MixedTrainingSampler`: an infinite stream over the concatenation of the training
  datasets (a new permutation per pass, as the official random sampler over a ``ConcatDataset``),
  with whole-number dataset copies (``DATALOADER.FIBER.COPIES``) or, as an option, each image's
  dataset drawn with ``DATALOADER.FIBER.SAMPLING_RATIOS``. Each pass is seeded from (seed, pass), so
  ``set_start_iter`` skips to any iteration in O(1) (``--resume``).
* :class:`PositionedSampler`: detectron2's own samplers (``TrainingSampler``,
  ``RepeatFactorTrainingSampler``) with the same interface: their stream, numbered by position,
  and fast-forwarded on resume.
* Ranks take every ``world_size``-th position, like detectron2's ``TrainingSampler``, so the
  images of an iteration are the same for any number of processes with the same total batch.
* :class:`SeededMapDataset`: maps a stream position to a model input with the RNGs seeded from
  (seed, position), so an image's augmentation and prompt sampling do not depend on workers,
  processes or resumption (the global RNG states are restored afterwards).
* :class:`NegativeBatchFilter`: replaces a batch with too many images without boxes by the next
  one (official ``MAX_NEG_PER_BATCH``, which skips it).
"""

import itertools
import logging
import random
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

__all__ = [
    "MixedTrainingSampler",
    "NegativeBatchFilter",
    "PositionedSampler",
    "SeededMapDataset",
    "mix_seed",
]

logger = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A deterministic 63-bit seed from integers (splitmix-style, no Python hash randomisation)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK63)) * 0xBF58476D1CE4E5B9 & _MASK63
        x ^= x >> 31
    return x & _MASK63


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
        g = torch.Generator().manual_seed(mix_seed(self.seed, p))
        return base[torch.randperm(len(base), generator=g)]

    def _ratio_pass(self, p: int) -> torch.Tensor:
        """Pass ``p`` in ratio mode: datasets drawn per position, images from per-dataset passes."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, p, 1))
        which = torch.multinomial(
            torch.tensor(self.ratios, dtype=torch.float64), self.pass_length, True, generator=g
        )
        out = torch.empty(self.pass_length, dtype=torch.long)
        for d, (o, s) in enumerate(zip(self.offsets, self.sizes)):
            slots = (which == d).nonzero().flatten()
            reps = -(-len(slots) // s) if len(slots) else 0
            gd = torch.Generator().manual_seed(mix_seed(self.seed, p, 2, d))
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


class PositionedSampler(Sampler):
    """A detectron2 index sampler (``TrainingSampler``, ``RepeatFactorTrainingSampler``) as a
    stream of ``(position, index)``, like :class:`MixedTrainingSampler`.

    The wrapped sampler yields this rank's indices; the k-th of them is global position
    ``k * world_size + rank``. ``set_start_iter`` fast-forwards through the (seeded, so
    reproducible) index stream, which costs a pass over the skipped indices, not over images.
    """

    def __init__(
        self, sampler: Sampler, *, rank: Optional[int] = None, world_size: Optional[int] = None
    ):
        self.sampler = sampler
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.skip = 0

    def set_start_iter(self, iteration: int, batch_size_per_rank: int) -> None:
        """Continue the stream at the first image of ``iteration`` (before iterating)."""
        self.skip = iteration * batch_size_per_rank

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        stream = itertools.islice(iter(self.sampler), self.skip, None)
        for k, index in enumerate(stream, start=self.skip):
            yield k * self.world_size + self.rank, int(index)


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
            seed = mix_seed(self._seed, position, attempt) % (2**32)
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
