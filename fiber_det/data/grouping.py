"""Evaluation inputs that share work, with the results of one query per forward.

Two exact ways to pay less per evaluation query (FIBER's official evaluation runs one image and
one caption per forward):

* **One input per image** (:func:`group_by_image`, :class:`ImageGroupMapper`): grounding
  benchmarks have several queries per image (Flickr30k Entities: 5 captions, RefCOCO/+/g:
  several expressions), each a dataset dict of its own. The dicts of one image become one model
  input whose ``prompts`` are their captions, so the model's cached multi-prompt path runs the
  pre-fusion image part once and batches the captions through the fused tail and the head. Each
  caption keeps its own post-processing (threshold, NMS, detection cap), and the evaluators split
  the output back into one record per caption (``fiber_det.evaluation.base.ungroup``).
  The member dicts ride along in the input's ``group`` key.
* **Batches of one padded size** (:func:`size_bucket_batches`): images are zero-padded to a
  multiple of the size divisibility, and batching images of different padded sizes changes the
  numbers (see ``FIBERDetector``); images that share a padded size are batched without changing
  them. Evaluation order changes, records do not.
"""

import functools
import logging
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data import transforms as T
from detectron2.utils import comm

__all__ = [
    "GROUP_KEY",
    "ImageGroupMapper",
    "build_grouped_test_loader",
    "check_same_padded_size",
    "evaluation_batch_size",
    "group_by_image",
    "padded_input_size",
    "size_bucket_batches",
]

logger = logging.getLogger(__name__)

#: Key of a grouped input that lists its member inputs (one per dataset dict, without image);
#: ``fiber_det.evaluation.base.ungroup`` reads it.
GROUP_KEY = "group"
# Fields of a mapped input that make up one entry of ``prompts``.
_PROMPT_FIELDS = ("input_ids", "attention_mask", "positive_map")
# Fields shared by the whole image, kept once on the grouped input.
_IMAGE_FIELDS = ("image", "height", "width", "file_name", "source_dataset")


def group_by_image(dicts: Sequence[Dict]) -> List[List[Dict]]:
    """Dataset dicts grouped by ``file_name`` (first-appearance order, dict order kept within)."""
    groups: OrderedDict[str, List[Dict]] = OrderedDict()
    for d in dicts:
        groups.setdefault(d["file_name"], []).append(d)
    return list(groups.values())


class ImageGroupMapper:
    """Map a group of dataset dicts of one image to one model input.

    A group of one dict maps to the mapper's input unchanged. A larger group maps every dict
    (evaluation mapping is deterministic: the same resized image each time), then gives one
    input with the image, ``prompts`` (each member's ``input_ids``, ``attention_mask``,
    ``positive_map``, in order) and ``group`` (the member inputs without their image), whose
    ``image_id`` is the first member's.

    Args:
        mapper: maps one dataset dict to a model input (:class:`FIBERDatasetMapper`, eval mode).
    """

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper

    def __call__(self, dicts: Sequence[Dict]) -> Dict:
        members = [self.mapper(d) for d in dicts]
        if len(members) == 1:
            return members[0]
        first = members[0]
        for m in members[1:]:
            if m["image"].shape != first["image"].shape:
                raise ValueError(
                    f"{first['file_name']}: the dataset dicts of this image map to images of "
                    f"different sizes ({tuple(first['image'].shape)} vs "
                    f"{tuple(m['image'].shape)}); their height/width fields disagree"
                )
            if "prompts" in m:
                raise ValueError(
                    f"{first['file_name']}: a chunked input cannot be grouped by image (turn "
                    "TEST.FIBER.GROUP_BY_IMAGE off for this dataset)"
                )
        grouped = {k: first[k] for k in _IMAGE_FIELDS if k in first}
        grouped["image_id"] = first.get("image_id")
        grouped["prompts"] = [{k: m[k] for k in _PROMPT_FIELDS} for m in members]
        grouped[GROUP_KEY] = [{k: v for k, v in m.items() if k != "image"} for m in members]
        return grouped


def padded_input_size(
    height: int, width: int, augmentations: Sequence[T.Augmentation], size_divisibility: int
) -> Tuple[int, int]:
    """Size of the model's padded input tensor for an image of ``height`` x ``width``: the
    deterministic evaluation augmentations applied to the size (no pixel is read), rounded up to
    ``size_divisibility``."""
    h, w = int(height), int(width)
    for aug in augmentations:
        shape_only = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (h, w, 3))
        tfm = aug.get_transform(shape_only)
        box = tfm.apply_box(np.array([[0.0, 0.0, w, h]]))[0]
        w, h = int(round(box[2] - box[0])), int(round(box[3] - box[1]))
    d = max(int(size_divisibility), 1)
    return -(-h // d) * d, -(-w // d) * d


def size_bucket_batches(keys: Sequence[Hashable], batch_size: int) -> List[List[int]]:
    """Indices grouped into batches of at most ``batch_size`` that share a key (padded size),
    buckets in first-appearance order; ``None`` keys are batched alone."""
    buckets: OrderedDict[Hashable, List[int]] = OrderedDict()
    batches = []
    for i, key in enumerate(keys):
        if key is None:
            batches.append([i])
            continue
        bucket = buckets.setdefault(key, [])
        bucket.append(i)
        if len(bucket) == batch_size:
            batches.append(bucket)
            buckets[key] = []
    batches += [b for b in buckets.values() if b]
    return batches


def check_same_padded_size(batch: List[Dict], size_divisibility: int) -> List[Dict]:
    """Collate function of bucketed batches: the batch itself, after checking that its images
    share a padded size (else batching would change the numbers)."""
    d = max(int(size_divisibility), 1)
    sizes = {tuple(-(-s // d) * d for s in x["image"].shape[-2:]) for x in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"a size-bucketed batch has images of padded sizes {sorted(sizes)}: the dataset "
            "dicts' height/width do not match the image files; fix them or set "
            "TEST.FIBER.SIZE_BUCKET_BATCH 1"
        )
    return batch


#: Size-bucketed evaluation batch on GPU when ``TEST.FIBER.SIZE_BUCKET_BATCH`` is 0 (auto); on
#: CPU auto means 1: the matmuls of one image already keep the cores busy.
AUTO_GPU_BUCKET_BATCH = 8


def evaluation_batch_size(cfg) -> int:
    """``TEST.FIBER.SIZE_BUCKET_BATCH``, with 0 resolved for ``MODEL.DEVICE``."""
    size = int(cfg.TEST.FIBER.SIZE_BUCKET_BATCH)
    if size < 0:
        raise ValueError(f"TEST.FIBER.SIZE_BUCKET_BATCH must be >= 0 (0: auto), got {size}")
    if size == 0:
        return 1 if str(cfg.MODEL.DEVICE).startswith("cpu") else AUTO_GPU_BUCKET_BATCH
    return size


def build_grouped_test_loader(
    dicts: Sequence[Dict],
    mapper: Callable[[Dict], Dict],
    *,
    group_images: bool,
    batch_size: int,
    augmentations: Sequence[T.Augmentation],
    size_divisibility: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """The evaluation loader with grouping by image and / or size-bucketed batches.

    Every dataset dict is evaluated exactly once (across processes: the batches are split
    between ranks, as detectron2's ``InferenceSampler`` splits images).

    Args:
        dicts: dataset dicts of one dataset.
        mapper: maps one dict to a model input.
        group_images (bool): one input per image (:class:`ImageGroupMapper`).
        batch_size (int): images per batch, batched only within a padded size.
        augmentations: the evaluation augmentations of ``mapper`` (to predict padded sizes).
        size_divisibility (int): the backbone's padding multiple.
    """
    groups = group_by_image(dicts) if group_images else [[d] for d in dicts]
    keys = [_padded_key(g[0], augmentations, size_divisibility) for g in groups]
    batches = size_bucket_batches(keys, max(1, int(batch_size)))
    rank, world = comm.get_rank(), comm.get_world_size()
    share = -(-len(batches) // world)
    mine = batches[rank * share : (rank + 1) * share]
    if group_images and len(groups) < len(dicts):
        logger.info(
            "Evaluation: %d queries of %d images, one input per image", len(dicts), len(groups)
        )
    dataset = MapDataset(DatasetFromList(groups, copy=False), ImageGroupMapper(mapper))
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=mine,
        num_workers=num_workers,
        collate_fn=functools.partial(check_same_padded_size, size_divisibility=size_divisibility),
    )


def _padded_key(
    d: Dict, augmentations: Sequence[T.Augmentation], size_divisibility: int
) -> Optional[Tuple[int, int]]:
    if "height" not in d or "width" not in d:
        return None
    return padded_input_size(d["height"], d["width"], augmentations, size_divisibility)
