"""From head outputs to detections: label scores, per-level top-k, decoding, class-wise NMS.

Follows the official ATSS post-processor of FIBER/GLIP (``modeling/rpn/inference.py``,
``ATSSPostProcessor``):

1. label score = mean over the label's tokens of sigmoid(region-word logit);
2. candidates: label score > ``score_threshold`` (before centerness);
3. per level, the top ``pre_nms_top_n`` candidates by ``score x sigmoid(centerness)``;
4. final score ``sqrt(score x sigmoid(centerness))``; boxes decoded, clipped, empty ones dropped;
5. class-wise NMS (IoU > ``nms_threshold`` suppresses), then the best ``detections_per_image``
   (ties at the cut are kept, as the official ``kthvalue`` threshold does).

:meth:`PostProcessor.dense` is the fixed-shape part (every anchor decoded and scored, also run
inside the ONNX graph of :mod:`fiber_det.export`), :meth:`PostProcessor.select` the
data-dependent rest (steps 2-5).
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from torch import Tensor

from .boxes import BoxCoder, classwise_nms, clip_boxes

__all__ = ["PostProcessor", "Detections", "label_scores"]


@dataclass
class Detections:
    """Detections of one image, sorted by score (descending).

    Attributes:
        boxes (Tensor): (K, 4) xyxy in input-image pixels.
        scores (Tensor): (K,).
        labels (Tensor): (K,) 0-based index into the image's labels (rows of its positive map).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def label_scores(token_probs: Tensor, positive_map: Tensor) -> Tensor:
    """Mean token probability per label.

    Args:
        token_probs (Tensor): (A, T) sigmoid of the region-word logits.
        positive_map (Tensor): (C, T) label -> tokens (non-zero = token belongs to the label).
    Returns:
        Tensor: (A, C); labels without tokens score 0.
    """
    pm = (positive_map > 0).to(token_probs.dtype)
    counts = pm.sum(1)
    return (token_probs @ pm.t()) / counts.clamp(min=1.0)


class PostProcessor:
    """Official FIBER/GLIP inference settings by default (see module docstring).

    Args:
        box_coder (BoxCoder): decodes the regression.
        score_threshold (float): ``ATSS.INFERENCE_TH`` on the mean token probability.
        pre_nms_top_n (int): candidates kept per level.
        nms_threshold (float): IoU threshold of the class-wise NMS.
        detections_per_image (int): final cap (ties at the cut kept); <= 0 for no cap.
        plus_one (bool): legacy box conventions (clipping to W-1/H-1, NMS IoU, empty boxes).
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        *,
        score_threshold: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        plus_one: bool = True,
    ):
        self.box_coder = box_coder
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.plus_one = plus_one

    @classmethod
    def from_config(cls, cfg) -> "PostProcessor":
        """The settings of ``cfg.MODEL.ATSS`` and ``MODEL.FIBER.LEGACY_PLUS_ONE``."""
        atss, plus_one = cfg.MODEL.ATSS, cfg.MODEL.FIBER.LEGACY_PLUS_ONE
        return cls(
            BoxCoder(atss.BBOX_REG_WEIGHTS, plus_one=plus_one),
            score_threshold=atss.INFERENCE_TH,
            pre_nms_top_n=atss.PRE_NMS_TOP_N,
            nms_threshold=atss.NMS_TH,
            detections_per_image=atss.DETECTIONS_PER_IMG,
            plus_one=plus_one,
        )

    def __call__(
        self,
        box_regression: Sequence[Tensor],
        centerness: Sequence[Tensor],
        logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        positive_map: Tensor,
        image_size: Tuple[int, int],
    ) -> Detections:
        """Detections for one image.

        Args:
            box_regression, centerness, logits: per level, this image's (4, H, W), (1, H, W)
                and (H*W, T) head outputs.
            anchors (list[Tensor]): per level (H*W, 4).
            positive_map (Tensor): (C, T) this image's label -> token map.
            image_size (tuple): (h, w) of the image before padding (boxes are clipped to it).
        """
        levels = [
            self.dense(reg, ctr, logit, anc, positive_map)
            for reg, ctr, logit, anc in zip(box_regression, centerness, logits, anchors)
        ]
        return self.select(levels, image_size)

    def dense(
        self, reg: Tensor, ctr: Tensor, logit: Tensor, anchors: Tensor, positive_map: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """The fixed-shape part of one level: every anchor decoded and scored.

        Args:
            reg (Tensor): (4, H, W) box regression; ctr (Tensor): (1, H, W) centerness logits;
            logit (Tensor): (H*W, T) region-word logits; anchors (Tensor): (H*W, 4);
            positive_map (Tensor): (C, T).
        Returns:
            boxes (Tensor): (H*W, 4) decoded xyxy boxes, not clipped;
            probs (Tensor): (H*W, C) label scores (mean token probability);
            centerness (Tensor): (H*W,) sigmoid of the centerness logits.
        """
        boxes = self.box_coder.decode(reg.reshape(4, -1).t(), anchors)
        probs = label_scores(logit.sigmoid(), positive_map)
        return boxes, probs, ctr.reshape(-1).sigmoid()

    def select(
        self, levels: Sequence[Tuple[Tensor, Tensor, Tensor]], image_size: Tuple[int, int]
    ) -> Detections:
        """The data-dependent part: thresholds, per-level top-k, clipping, NMS and the cap.

        Args:
            levels: per level, the ``(boxes, probs, centerness)`` of :meth:`dense`.
            image_size (tuple): (h, w) of the image before padding (boxes are clipped to it).
        """
        boxes, scores, labels = [], [], []
        for level_boxes, probs, ctr in levels:
            b, s, lab = self._level(level_boxes, probs, ctr, image_size)
            boxes.append(b)
            scores.append(s)
            labels.append(lab)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = classwise_nms(boxes, scores, labels, self.nms_threshold, self.plus_one)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        n, cap = scores.numel(), self.detections_per_image
        if n > cap > 0:
            thresh = torch.kthvalue(scores.float().cpu(), n - cap + 1).values.item()
            keep = scores >= thresh
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True, stable=True)
        return Detections(boxes=boxes[order], scores=scores[order], labels=labels[order])

    def _level(self, boxes, probs, ctr, image_size):
        candidates = probs > self.score_threshold
        n = min(int(candidates.sum()), self.pre_nms_top_n)
        combined = (probs * ctr[:, None])[candidates]
        combined, top = combined.topk(n, sorted=False)
        loc, label = candidates.nonzero()[top].unbind(1)
        boxes = clip_boxes(boxes[loc], image_size[0], image_size[1], self.plus_one)
        off = 1.0 if self.plus_one else 0.0
        keep = (boxes[:, 2] - boxes[:, 0] + off >= 0) & (boxes[:, 3] - boxes[:, 1] + off >= 0)
        return boxes[keep], combined.sqrt()[keep], label[keep]
