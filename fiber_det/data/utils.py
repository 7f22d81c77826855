"""Small data helpers: file checks with helpful errors, image reading, counters of bad data."""

import json
import logging
import os
from collections import Counter
from typing import Dict, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MIN_IMAGE_SIDE",
    "DataIssueCounter",
    "UnusableImageError",
    "check_image_size",
    "read_image",
    "read_json",
    "require_file",
]

logger = logging.getLogger(__name__)

README_HINT = (
    "see datasets/README.md for where to get it and the folder tree expected under "
    "$DETECTRON2_DATASETS"
)


def require_file(path: str, what: str = "annotation file", is_dir: bool = False) -> str:
    """Return ``path`` if it exists, else raise a FileNotFoundError that names it and the fix."""
    ok = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not ok:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
        raise FileNotFoundError(
            f"{what} not found: {path} ($DETECTRON2_DATASETS={root!r}); {README_HINT}"
        )
    return path


def read_json(path: str, what: str = "annotation file"):
    """``json.load`` with the helpful missing-file error of :func:`require_file`."""
    with open(require_file(path, what)) as f:
        return json.load(f)


# Smallest image side and largest side ratio accepted: a thinner image has a side of 0 pixels
# after the resize to the model's input size (shortest edge, capped longest edge).
MIN_IMAGE_SIDE = 2
MAX_ASPECT_RATIO = 100
# PIL modes of more than 8 bits per channel that ``convert("RGB")`` clips instead of scaling.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnusableImageError(ValueError):
    """An image file that decodes but cannot be used (degenerate, oversized, no fixed range)."""


def check_image_size(height: int, width: int, file_name: str = "the image") -> None:
    """Raise an :class:`UnusableImageError` naming ``file_name`` if an image is too thin to be
    resized for the model (a side under MIN_IMAGE_SIDE pixels, or sides more than
    MAX_ASPECT_RATIO apart)."""
    short, long = min(height, width), max(height, width)
    if short < MIN_IMAGE_SIDE or long > MAX_ASPECT_RATIO * short:
        raise UnusableImageError(
            f"{file_name} is {width}x{height} pixels: degenerate (a side under {MIN_IMAGE_SIDE} "
            f"pixels or an aspect ratio over {MAX_ASPECT_RATIO}), it cannot be resized for the "
            "model; crop or pad it, or remove it from the input / the annotation file"
        )


def _to_rgb(img: Image.Image, file_name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an opened PIL image; 16-bit grey levels are scaled to 8 bits (high
    byte, as PIL reads 16-bit RGB PNGs) instead of being clipped at 255."""
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        grey = np.asarray(img).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        raise UnusableImageError(
            f"{file_name} has floating-point pixels (PIL mode F) without a fixed range: convert it "
            "to 8 or 16 bits per channel"
        )
    return np.asarray(img.convert("RGB"))


def read_image(file_name: str, image_format: str = "BGR") -> np.ndarray:
    """Read an image as (H, W, 3) uint8 in ``image_format`` ("BGR" or "RGB").

    The one image reader of fiber-det (training, evaluation, demo). Like the official loader
    (``PIL.Image.open(...).convert("RGB")``), EXIF orientation is NOT applied, in training and
    in inference alike, so boxes stay aligned with the stored pixels (detectron2's ``read_image``
    rotates). 16-bit images are scaled to 8 bits (their high byte), not clipped.

    Raises:
        IsADirectoryError: the path is a folder.
        FileNotFoundError: the file does not exist.
        OSError: the file cannot be decoded (corrupt or not an image), naming it.
        UnusableImageError (a ValueError): naming the file: a degenerate size
            (:func:`check_image_size`), more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows,
            or floating-point pixels.
    """
    if os.path.isdir(file_name):
        raise IsADirectoryError(
            f"{file_name} is a folder, not an image: give an image file (tools/demo.py --input "
            "takes folders and globs)"
        )
    if not os.path.isfile(file_name):
        raise FileNotFoundError(
            f"image not found: {file_name}; check the path or the dataset's image root "
            f"({README_HINT})"
        )
    try:
        with Image.open(file_name) as img:
            check_image_size(img.height, img.width, file_name)
            array = _to_rgb(img, file_name)
    except UnusableImageError:
        raise
    except Image.DecompressionBombError as e:
        raise UnusableImageError(
            f"{file_name} is too large to decode safely ({e}); downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise OSError(
            f"cannot read image {file_name} ({type(e).__name__}: {e}): the file is corrupt or not "
            "an image; re-download it, or remove its entry from the annotation file"
        ) from e
    if image_format == "BGR":
        return np.ascontiguousarray(array[:, :, ::-1])
    if image_format == "RGB":
        return array
    raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB' for FIBER, got {image_format!r}")


class DataIssueCounter:
    """Counts of bad-data events (dropped boxes, clipped boxes, truncated prompts, ...).

    Each kind is logged (with an example) the first ``first_n`` times it occurs, and a summary of
    all counts every ``log_period`` images. In a DataLoader each worker has its own counter.

    Attributes:
        counts (Counter): kind -> number of events so far.
        images (int): images seen.
    """

    def __init__(self, name: str, *, log_period: int = 1000, first_n: int = 3):
        self.name = name
        self.log_period = log_period
        self.first_n = first_n
        self.counts: Counter = Counter()
        self.images = 0

    def add(self, kind: str, n: int = 1, detail: Optional[str] = None) -> None:
        """Record ``n`` events of ``kind``; ``detail`` says where (file, span, ...)."""
        if n <= 0:
            return
        before = self.counts[kind]
        self.counts[kind] += n
        if before < self.first_n:
            logger.warning("%s: %s x%d%s", self.name, kind, n, f" ({detail})" if detail else "")

    def update(self, counts: Dict[str, int], detail: Optional[str] = None) -> None:
        for kind, n in counts.items():
            self.add(kind, n, detail)

    def step(self) -> None:
        """Call once per image; logs the summary every ``log_period`` images."""
        self.images += 1
        if self.log_period > 0 and self.images % self.log_period == 0 and self.counts:
            self.log_summary()

    def log_summary(self) -> None:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        logger.info("%s: after %d images: %s", self.name, self.images, summary or "no issues")
