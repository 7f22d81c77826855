"""FIBER's training losses: token-level sigmoid focal loss, GIoU box loss, centerness BCE.

Reproduces ``ATSSLossComputation`` of the official code (``modeling/rpn/loss.py``) with the
dot-product token loss (the only classification loss FIBER trains):

* token targets: the positive-map row of the matched GT; unmatched anchors get a one-hot on the
  last position of the token budget (the official "no object" token at ``MAX_QUERY_LEN - 1``: with
  prompts padded to the budget it is padding, so masked out, unless the prompt fills the whole
  budget; with prompts padded only to the longest of the batch it is then absent, which gives the
  same loss); the focal loss is summed over anchors x real tokens;
* normalisation by the number of positive anchors averaged over GPUs (at least 1);
* GIoU on decoded boxes (no "+1"), weighted by the centerness targets and normalised by their
  GPU-averaged sum, times ``reg_weight`` (2);
* centerness: BCE with logits (sum) against sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)).
"""

from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .atss import atss_assign
from .boxes import BoxCoder

__all__ = ["FIBERLoss", "token_sigmoid_focal_loss", "giou_loss"]


def token_sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, text_mask: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sum of the binary focal loss (Lin et al. 2017) over anchors and real tokens.

    Args:
        logits, targets (Tensor): (B, A, T).
        text_mask (Tensor): (B, T) bool, True for real tokens.
    """
    mask = text_mask[:, None, :].expand_as(logits)
    x, t = logits[mask], targets[mask].to(logits.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.sum()


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Sum of ``weight * (1 - GIoU)`` for (N, 4) xyxy boxes (Rezatofighi et al. 2019), no "+1".

    As the official code: predicted x2/y2 are raised to x1/y1 when smaller; the plain sum is
    used when the weights sum to 0.
    """
    px1, py1 = pred[:, 0], pred[:, 1]
    px2, py2 = torch.max(px1, pred[:, 2]), torch.max(py1, pred[:, 3])
    tx1, ty1, tx2, ty2 = target.unbind(1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.min(px2, tx2) - torch.max(px1, tx1)
    ih = torch.min(py2, ty2) - torch.max(py1, ty1)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (
        torch.max(py2, ty2) - torch.min(py1, ty1)
    ) + 1e-7
    union = pred_area + target_area - inter + 1e-7
    losses = 1 - (inter / union - (enclosing - union) / enclosing)
    if weight.sum() > 0:
        return (losses * weight).sum()
    return losses.sum()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(x: Tensor) -> Tensor:
    if _world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


class FIBERLoss:
    """Official FIBER losses (see module docstring).

    Args:
        box_coder (BoxCoder): box parametrisation.
        topk (int): ATSS candidates per level.
        focal_alpha, focal_gamma (float): token focal loss parameters.
        reg_weight, centerness_weight, token_weight (float): loss weights.
        plus_one (bool): legacy IoU in the ATSS assignment.
        max_query_len (int): the token budget (``MODEL.LANGUAGE.MAX_QUERY_LEN``); its last
            position is the "no object" token.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        *,
        topk: int = 9,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reg_weight: float = 2.0,
        centerness_weight: float = 1.0,
        token_weight: float = 1.0,
        plus_one: bool = True,
        max_query_len: int = 256,
    ):
        self.box_coder = box_coder
        self.topk = topk
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_weight = reg_weight
        self.centerness_weight = centerness_weight
        self.token_weight = token_weight
        self.no_object_token = max_query_len - 1
        self.plus_one = plus_one

    def __call__(
        self,
        box_regression: Sequence[Tensor],
        centerness: Sequence[Tensor],
        logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        gt_boxes: List[Tensor],
        gt_positive_maps: List[Tensor],
        text_mask: Tensor,
    ) -> Dict[str, Tensor]:
        """
        Args:
            box_regression, centerness, logits: head outputs per level, (B, 4, H, W),
                (B, 1, H, W) and (B, H*W, T).
            anchors (list[Tensor]): per level (H*W, 4), shared by the batch.
            gt_boxes (list[Tensor]): per image (G_i, 4) xyxy boxes.
            gt_positive_maps (list[Tensor]): per image (G_i, T) token maps of the GT boxes.
            text_mask (Tensor): (B, T) bool, real tokens.
        Returns:
            dict: ``loss_dot_product_token``, ``loss_reg``, ``loss_centerness``.
        """
        num_images, num_tokens = text_mask.shape
        all_anchors = torch.cat(list(anchors)).float()
        # losses in fp32 under AMP, as the official custom_fwd(cast_inputs=float32)
        reg = torch.cat([r.flatten(2) for r in box_regression], dim=2).transpose(1, 2).float()
        ctr = torch.cat([c.flatten(2) for c in centerness], dim=2).reshape(num_images, -1).float()
        logit = torch.cat(list(logits), dim=1).float()  # (B, A, T)

        token_targets, reg_targets, positive = [], [], []
        for i in range(num_images):
            boxes = gt_boxes[i].to(all_anchors.dtype)
            matched = atss_assign(anchors, boxes, self.topk, self.plus_one)
            pos = matched >= 0
            target = torch.zeros(all_anchors.shape[0], num_tokens, device=logit.device)
            if boxes.shape[0]:
                pmap = (gt_positive_maps[i] > 0).to(target.dtype)
                target[pos] = pmap[matched[pos]]
            if self.no_object_token < num_tokens:  # else beyond the prompts: masked anyway
                target[~pos, self.no_object_token] = 1.0
            token_targets.append(target)
            matched_boxes = boxes[matched.clamp(min=0)] if boxes.shape[0] else boxes.new_zeros(0, 4)
            reg_targets.append(self.box_coder.encode(matched_boxes, all_anchors))
            positive.append(pos)
        token_targets = torch.stack(token_targets)
        positive = torch.stack(positive)  # (B, A)

        world = float(_world_size())
        num_pos = _all_reduce_sum(positive.sum().to(logit.dtype).detach()).item()
        num_pos_avg = max(num_pos / world, 1.0)

        token_loss = token_sigmoid_focal_loss(
            logit, token_targets, text_mask, self.focal_alpha, self.focal_gamma
        )
        losses = {"loss_dot_product_token": token_loss / num_pos_avg * self.token_weight}

        pos_reg = reg[positive]
        pos_ctr = ctr[positive]
        if pos_reg.shape[0] == 0:
            _all_reduce_sum(ctr.new_zeros(1))  # keep the collective calls matched across ranks
            losses["loss_reg"] = pos_reg.sum() * self.reg_weight
            losses["loss_centerness"] = pos_ctr.sum() * self.centerness_weight
            return losses
        pos_anchors = all_anchors.expand(num_images, -1, -1)[positive]
        pos_targets = torch.stack(reg_targets)[positive]
        ctr_targets = self.centerness_targets(pos_targets, pos_anchors)
        ctr_sum = _all_reduce_sum(ctr_targets.sum().detach()).item() / world
        pred_boxes = self.box_coder.decode(pos_reg, pos_anchors)
        target_boxes = self.box_coder.decode(pos_targets, pos_anchors)
        losses["loss_reg"] = (
            giou_loss(pred_boxes, target_boxes, ctr_targets) / ctr_sum * self.reg_weight
        )
        ctr_loss = F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, reduction="sum")
        losses["loss_centerness"] = ctr_loss / num_pos_avg * self.centerness_weight
        return losses

    def centerness_targets(self, reg_targets: Tensor, anchors: Tensor) -> Tensor:
        """(N, 4) deltas of the matched GT and (N, 4) anchors -> (N,) centerness targets."""
        gts = self.box_coder.decode(reg_targets, anchors)
        cx = (anchors[:, 2] + anchors[:, 0]) / 2
        cy = (anchors[:, 3] + anchors[:, 1]) / 2
        lr = torch.stack((cx - gts[:, 0], gts[:, 2] - cx), dim=1)
        tb = torch.stack((cy - gts[:, 1], gts[:, 3] - cy), dim=1)
        return torch.sqrt(
            (lr.min(dim=1).values / lr.max(dim=1).values)
            * (tb.min(dim=1).values / tb.max(dim=1).values)
        )
