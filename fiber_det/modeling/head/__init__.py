"""Grounding head: DyHead tower, region-word logits, ATSS losses and inference."""

from .atss import atss_assign
from .boxes import BoxCoder, classwise_nms, clip_boxes, make_anchors, pairwise_iou
from .dyhead import DyHeadBlock, DyReLU, ModulatedDeformConv3x3
from .grounding_head import FIBERGroundingHead, HeadOutputs
from .inference import Detections, PostProcessor, label_scores
from .losses import FIBERLoss, giou_loss, token_sigmoid_focal_loss

__all__ = [
    "BoxCoder",
    "Detections",
    "DyHeadBlock",
    "DyReLU",
    "FIBERGroundingHead",
    "FIBERLoss",
    "HeadOutputs",
    "ModulatedDeformConv3x3",
    "PostProcessor",
    "atss_assign",
    "classwise_nms",
    "clip_boxes",
    "giou_loss",
    "label_scores",
    "make_anchors",
    "pairwise_iou",
    "token_sigmoid_focal_loss",
]
