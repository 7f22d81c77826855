"""ATSS label assignment (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020), as in FIBER/GLIP's
``ATSSLossComputation.prepare_targets``:

* per level, the ``topk`` anchors whose centres are closest to the GT centre are candidates;
* a candidate is positive if its IoU with the GT is >= mean + std (unbiased) of the candidates'
  IoUs and its centre lies inside the GT (all of l, t, r, b > 0.01);
* an anchor positive for several GTs goes to the one with the highest IoU.
"""

from typing import Sequence

import torch
from torch import Tensor

from .boxes import pairwise_iou

__all__ = ["atss_assign"]


def atss_assign(
    anchors: Sequence[Tensor], gt_boxes: Tensor, topk: int = 9, plus_one: bool = True
) -> Tensor:
    """Assign anchors of one image to ground-truth boxes.

    Args:
        anchors (list[Tensor]): per level (A_l, 4) xyxy anchors.
        gt_boxes (Tensor): (G, 4) xyxy ground truth.
        topk (int): candidates per level.
        plus_one (bool): legacy IoU.
    Returns:
        Tensor: (sum A_l,) index of the matched GT, -1 for background.
    """
    all_anchors = torch.cat(list(anchors))
    num_anchors, num_gt = all_anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=all_anchors.device)
    ious = pairwise_iou(all_anchors, gt_boxes, plus_one)  # (A, G)
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
    anchor_centers = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2.0
    distances = (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()

    candidates = []
    start = 0
    for level_anchors in anchors:
        end = start + level_anchors.shape[0]
        k = min(topk, level_anchors.shape[0])
        _, idx = distances[start:end].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start = end
    candidates = torch.cat(candidates, dim=0)  # (K, G)

    gt_index = torch.arange(num_gt, device=all_anchors.device)
    cand_ious = ious[candidates, gt_index]  # (K, G)
    threshold = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= threshold[None, :]

    cx = anchor_centers[candidates, 0]
    cy = anchor_centers[candidates, 1]
    ltrb = torch.stack(
        (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy), dim=-1
    )
    is_pos &= ltrb.min(dim=-1).values > 0.01

    masked = torch.full_like(ious, -float("inf"))
    pos_anchor = candidates[is_pos]
    pos_gt = gt_index.expand_as(candidates)[is_pos]
    masked[pos_anchor, pos_gt] = ious[pos_anchor, pos_gt]
    best_iou, best_gt = masked.max(dim=1)
    return torch.where(best_iou == -float("inf"), torch.full_like(best_gt, -1), best_gt)
