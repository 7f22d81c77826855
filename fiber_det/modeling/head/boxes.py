"""Anchors, box coding, IoU and class-wise NMS with an optional legacy "+1" convention.

maskrcnn_benchmark (and so the official FIBER) measures a box [x1, x2] as x2 - x1 + 1 pixels wide
in its box coder, anchors, IoU, NMS and clipping. ``plus_one=True`` reproduces that exactly (the
official checkpoints were trained with it); ``plus_one=False`` is the continuous convention of
detectron2. The GIoU loss uses no "+1" in either case, as in the official code.
"""

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["BoxCoder", "make_anchors", "pairwise_iou", "classwise_nms", "clip_boxes"]


class BoxCoder:
    """(dx, dy, dw, dh) box deltas relative to anchors (Girshick et al., R-CNN parametrisation).

    Args:
        weights (4 floats): (wx, wy, ww, wh); FIBER uses (10, 10, 5, 5).
        plus_one (bool): legacy widths ``x2 - x1 + 1``.
        scale_clamp (float): upper bound of dw, dh before exp (log(1000 / 16)).
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        plus_one: bool = True,
        scale_clamp: float = math.log(1000.0 / 16),
    ):
        self.weights = tuple(float(w) for w in weights)
        self.offset = 1.0 if plus_one else 0.0
        self.scale_clamp = scale_clamp

    def _whc(self, boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        w = boxes[:, 2] - boxes[:, 0] + self.offset
        h = boxes[:, 3] - boxes[:, 1] + self.offset
        return w, h, (boxes[:, 2] + boxes[:, 0]) / 2, (boxes[:, 3] + boxes[:, 1]) / 2

    def encode(self, gt: Tensor, anchors: Tensor) -> Tensor:
        """(N, 4) xyxy targets and anchors -> (N, 4) deltas."""
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = self._whc(anchors)
        if gt.numel() == 0:
            return torch.zeros_like(anchors)
        gw, gh, gx, gy = self._whc(gt)
        return torch.stack(
            (
                wx * (gx - ax) / aw,
                wy * (gy - ay) / ah,
                ww * torch.log(gw / aw),
                wh * torch.log(gh / ah),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """(N, 4) deltas and anchors -> (N, 4) xyxy boxes."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = self._whc(anchors)
        dw = torch.clamp(deltas[:, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.scale_clamp)
        cx = deltas[:, 0] / wx * aw + ax
        cy = deltas[:, 1] / wy * ah + ay
        half_w = 0.5 * (torch.exp(dw) * aw - self.offset)
        half_h = 0.5 * (torch.exp(dh) * ah - self.offset)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


def make_anchors(
    grid_sizes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    plus_one: bool = True,
    device: torch.device | None = None,
) -> List[Tensor]:
    """One square anchor per location and level, row-major, as (H_l*W_l, 4) xyxy tensors.

    Legacy (Detectron) convention: the cell anchor of stride s and size S is centred on
    (s - 1) / 2 and spans S - 1 pixels, e.g. [-28, -28, 35, 35] for s = 8, S = 64.
    """
    anchors = []
    for (h, w), stride, size in zip(grid_sizes, strides, sizes):
        if plus_one:
            center, half = (stride - 1) / 2.0, (size - 1) / 2.0
        else:
            center, half = stride / 2.0, size / 2.0
        cell = torch.tensor(
            [center - half, center - half, center + half, center + half], device=device
        )
        xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
        ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 4)
        anchors.append(shifts + cell)
    return anchors


def pairwise_iou(a: Tensor, b: Tensor, plus_one: bool = True) -> Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M) IoU (legacy widths x2 - x1 + 1 when ``plus_one``)."""
    off = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + off) * (a[:, 3] - a[:, 1] + off)
    area_b = (b[:, 2] - b[:, 0] + off) * (b[:, 3] - b[:, 1] + off)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + off).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def classwise_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, plus_one: bool = True
) -> Tensor:
    """Greedy NMS within each label; suppress when IoU > threshold. Returns kept indices in
    ascending (input) order, as the official CUDA ``ml_nms`` does.

    The legacy IoU of two boxes equals the plain IoU of the boxes grown by one pixel on their
    right and bottom edges, so torchvision's ``batched_nms`` computes it exactly.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if plus_one:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + 1.0], dim=1)
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    return keep.sort().values


def clip_boxes(boxes: Tensor, height: int, width: int, plus_one: bool = True) -> Tensor:
    """Clamp xyxy boxes to the image: [0, W - 1] x [0, H - 1] (legacy) or [0, W] x [0, H]."""
    off = 1 if plus_one else 0
    x = boxes[:, 0::2].clamp(min=0, max=width - off)
    y = boxes[:, 1::2].clamp(min=0, max=height - off)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)
