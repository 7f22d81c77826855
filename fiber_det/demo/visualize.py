"""Pictures of predictions and ground truth, drawn with detectron2's ``Visualizer``."""

import os
from typing import List, Optional, Sequence

import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from PIL import Image, ImageDraw, ImageFont

from ..predictor import FIBERPrediction
from ..utils.io import atomic_open

__all__ = [
    "draw_boxes",
    "draw_prediction",
    "label_colors",
    "save_image",
    "side_by_side",
    "stack_rows",
]

_PALETTE = colormap(rgb=True, maximum=1)


def label_colors(label_ids: Sequence[int]) -> List[np.ndarray]:
    """A colour per label id, the same for the same id in every picture (RGB in [0, 1])."""
    return [_PALETTE[int(i) % len(_PALETTE)] for i in label_ids]


def draw_boxes(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    label_ids: Sequence[int],
    *,
    title: Optional[str] = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Boxes with their labels on an image.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB.
        boxes (ndarray): (N, 4) xyxy in image pixels.
        labels (list[str]): text of each box.
        label_ids (list[int]): picks each box's colour (:func:`label_colors`).
        title (str): written in the top-left corner.
        scale (float): output size relative to the image.

    Returns:
        (H', W', 3) uint8 RGB.
    """
    vis = Visualizer(image_rgb, metadata=None, scale=scale)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes):
        out = vis.overlay_instances(
            boxes=boxes, labels=list(labels), assigned_colors=label_colors(label_ids), alpha=0.4
        )
    else:
        out = vis.output
    if title:
        out = vis.draw_text(title, (4, 2), font_size=10, color="w", horizontal_alignment="left")
    return out.get_image()


def draw_prediction(
    image_rgb: np.ndarray,
    prediction: FIBERPrediction,
    *,
    threshold: float = 0.0,
    title: Optional[str] = None,
    scale: float = 1.0,
) -> np.ndarray:
    """The boxes of a :class:`FIBERPrediction` scoring at least ``threshold``, labelled
    ``"<label> <score>"``."""
    keep = (prediction.scores >= threshold).nonzero().flatten().tolist()
    return draw_boxes(
        image_rgb,
        prediction.boxes[keep].numpy(),
        [f"{prediction.labels[i]} {float(prediction.scores[i]):.2f}" for i in keep],
        [int(prediction.label_ids[i]) for i in keep],
        title=title,
        scale=scale,
    )


def side_by_side(
    panels: Sequence[np.ndarray], *, caption: Optional[str] = None, gap: int = 6
) -> np.ndarray:
    """Panels next to each other on white, with an optional caption line below."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    strip = 26 if caption else 0
    canvas = np.full((height + strip, width, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    if caption:
        img = Image.fromarray(canvas)
        font = ImageFont.load_default(size=15)
        ImageDraw.Draw(img).text((4, height + 5), caption, fill=(0, 0, 0), font=font)
        canvas = np.asarray(img)
    return canvas


def stack_rows(rows: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Pictures below each other on white (left-aligned)."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return canvas


def save_image(image_rgb: np.ndarray, path: str, quality: int = 90) -> None:
    """Save an RGB array (JPEG quality ``quality`` for .jpg files)."""
    img = Image.fromarray(np.ascontiguousarray(image_rgb))
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"cannot save {path}: unknown image extension {ext!r} (use .jpg or .png)")
    options = {"quality": quality} if fmt == "JPEG" else {}
    with atomic_open(path, "wb") as f:  # a crash never leaves half a picture
        img.save(f, format=fmt, **options)
