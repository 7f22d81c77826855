"""Resize / flip augmentations and box bookkeeping with the official "+1" conventions.

With ``MODEL.FIBER.LEGACY_PLUS_ONE`` (official checkpoints) the behaviour follows
microsoft/FIBER's maskrcnn_benchmark (``data/transforms/transforms.py`` ``Resize.get_size`` and
``RandomHorizontalFlip``; ``structures/bounding_box.py`` ``convert``, ``clip_to_image``,
``transpose``):

* resize: if ``long / short * size > max_size`` then ``size = int(round(max_size * short /
  long))``; the short side becomes ``size`` and the long side ``int(size * long / short)``;
* boxes: ``x2 = x + w - 1``; clipping to ``[0, W - 1] x [0, H - 1]``; a box is kept only if
  ``x2 > x1`` and ``y2 > y1``; a horizontal flip maps ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1``.

Without it, detectron2's continuous conventions: ``ResizeShortestEdge`` rounding, ``x2 = x + w``,
clipping to ``[0, W] x [0, H]`` and ``x' = W - x``.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

__all__ = [
    "LegacyHFlipTransform",
    "LegacyResizeShortestEdge",
    "RandomHFlip",
    "annotations_to_boxes",
    "build_fiber_augmentations",
    "official_resize_shape",
]

logger = logging.getLogger(__name__)


def official_resize_shape(height: int, width: int, size: int, max_size: int) -> Tuple[int, int]:
    """Output (height, width) of the official ``Resize.get_size`` (maskrcnn_benchmark)."""
    short, long = float(min(height, width)), float(max(height, width))
    if max_size is not None and max_size > 0 and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class LegacyResizeShortestEdge(T.Augmentation):
    """Shortest-edge resize with the official rounding (see :func:`official_resize_shape`).

    Args:
        short_edge_length (int or list[int]): a size is drawn uniformly from the list per image
            (official multi-scale training, ``random.choice``).
        max_size (int): cap on the long side.
        interp: PIL interpolation (official: bilinear).
    """

    def __init__(self, short_edge_length, max_size: int, interp: int = Image.BILINEAR):
        super().__init__()
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length,)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        size = int(np.random.choice(self.short_edge_length))
        new_h, new_w = official_resize_shape(h, w, size, self.max_size)
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


class LegacyHFlipTransform(T.HFlipTransform):
    """Horizontal flip of pixel-index boxes: ``x' = W - x - 1`` (official ``BoxList.transpose``)."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = self.width - coords[:, 0] - 1
        return coords


class RandomHFlip(T.Augmentation):
    """Horizontal flip with probability ``prob``, continuous or with the "+1" convention."""

    def __init__(self, prob: float = 0.5, *, plus_one: bool = False):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if self._rand_range() < self.prob:
            width = image.shape[1]
            return LegacyHFlipTransform(width) if self.plus_one else T.HFlipTransform(width)
        return T.NoOpTransform()


def build_fiber_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Resize (+ flip in training) from the config.

    Training: ``INPUT.MIN_SIZE_TRAIN`` (a size drawn per image), ``INPUT.MAX_SIZE_TRAIN``,
    flip with ``DATASETS.FIBER.FLIP_PROB`` (detectron2's ``INPUT.RANDOM_FLIP`` is not used).
    Evaluation: ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``, no flip.
    """
    plus_one = cfg.MODEL.FIBER.LEGACY_PLUS_ONE
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = (
            cfg.INPUT.MIN_SIZE_TEST,
            cfg.INPUT.MAX_SIZE_TEST,
            "choice",
        )
    if plus_one:
        if sample_style != "choice":
            raise ValueError(
                "MODEL.FIBER.LEGACY_PLUS_ONE resizes like the official code, which draws the "
                f"short side from a list: set INPUT.MIN_SIZE_TRAIN_SAMPLING 'choice' (got "
                f"{sample_style!r}) or turn LEGACY_PLUS_ONE off"
            )
        augs = [LegacyResizeShortestEdge(min_size, max_size)]
    else:
        augs = [T.ResizeShortestEdge(min_size, max_size, sample_style)]
    flip_prob = cfg.DATASETS.FIBER.FLIP_PROB
    if is_train and flip_prob > 0:
        augs.append(RandomHFlip(flip_prob, plus_one=plus_one))
    return augs


def annotations_to_boxes(
    annotations: Sequence[Dict], height: int, width: int, *, plus_one: bool
) -> Tuple[np.ndarray, List[int], Dict[str, int]]:
    """Convert annotation boxes to clipped xyxy and drop the empty ones (training).

    Args:
        annotations: dataset-dict annotations with ``bbox`` and ``bbox_mode`` (XYWH_ABS or
            XYXY_ABS).
        height, width: size of the image the boxes refer to.
        plus_one: official "+1" conventions (see module docstring).

    Returns:
        boxes (ndarray): (K, 4) float32 xyxy of the kept boxes;
        kept (list[int]): index into ``annotations`` of each kept box;
        issues (dict[str, int]): counts of ``degenerate_box`` (w or h <= 0 in the file, dropped),
        ``empty_after_clip`` (outside the image, or collapsed by the "+1" conversion; dropped)
        and ``clipped_box`` (partly outside the image; clipped and kept).
    """
    issues = {"degenerate_box": 0, "empty_after_clip": 0, "clipped_box": 0}
    if not annotations:
        return np.zeros((0, 4), dtype=np.float32), [], issues
    raw = np.zeros((len(annotations), 4), dtype=np.float64)
    for i, obj in enumerate(annotations):
        mode = obj.get("bbox_mode", BoxMode.XYWH_ABS)
        raw[i] = BoxMode.convert(list(obj["bbox"]), mode, BoxMode.XYWH_ABS)
    degenerate = (raw[:, 2] <= 0) | (raw[:, 3] <= 0)
    boxes = raw.copy()
    boxes[:, 2:] += boxes[:, :2] - (1.0 if plus_one else 0.0)
    hi_x, hi_y = (width - 1, height - 1) if plus_one else (width, height)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, hi_x)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, hi_y)
    nonempty = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    keep = nonempty & ~degenerate
    issues["degenerate_box"] = int(degenerate.sum())
    issues["empty_after_clip"] = int((~nonempty & ~degenerate).sum())
    issues["clipped_box"] = int((keep & (np.abs(clipped - boxes).sum(axis=1) > 0)).sum())
    kept = np.nonzero(keep)[0].tolist()
    return clipped[keep].astype(np.float32), kept, issues
