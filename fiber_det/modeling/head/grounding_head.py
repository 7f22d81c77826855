"""FIBER's grounding head: DyHead tower, box regression, centerness and region-word logits.

Region-word alignment score (GLIP's dot-product token head as used by FIBER; Li et al., "Grounded
Language-Image Pre-training", CVPR 2022, Eq. 2; ``microsoft/FIBER`` ``modeling/rpn/vldyhead.py``)::

    E  = fused text features x attention mask        (B, T, D)
    En = normalize(E)                                  (padded rows stay 0)
    logits = (V . Linear(En / 2)^T) / exp(log_scale) + (En . bias_lang + bias0)
    logits = clamp(logits, -5e4, 5e4)

with V the (un-normalised) tower output at each anchor.
"""

import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint
from torch import Tensor, nn

from ..backbone.fiber_backbone import TextFeatures
from .dyhead import DyHeadBlock

__all__ = ["FIBERGroundingHead", "HeadOutputs", "Scale"]


class Scale(nn.Module):
    """A learned scalar multiplier (one per pyramid level for the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@dataclass
class HeadOutputs:
    """Raw head outputs, one entry per pyramid level (P3 first).

    Attributes:
        box_regression (list[Tensor]): (B, 4, H_l, W_l) box deltas (after the level's Scale).
        centerness (list[Tensor]): (B, 1, H_l, W_l) centerness logits.
        logits (list[Tensor]): (B, H_l*W_l, T) region-word logits, anchors in row-major order.
    """

    box_regression: List[Tensor]
    centerness: List[Tensor]
    logits: List[Tensor]


class FIBERGroundingHead(nn.Module):
    """DyHead tower plus box, centerness and region-word alignment predictions (no fusion).

    Args:
        channels (int): pyramid channels (256).
        text_dim (int): width of the text features (768).
        num_levels (int): pyramid levels (5).
        num_convs (int): DyHead blocks in the tower (6).
        gn_groups, use_dyrelu, use_dyfuse, use_deform, emulate_offset_quirk: see DyHeadBlock.
        prior_prob (float): initial bias0 = -log((1 - p) / p).
        log_scale (float): initial log temperature of the logits.
        use_checkpoint (bool): activation checkpointing of the tower in training.
        dcn_impl (str): deformable conv implementation ("auto", "torchvision", "grid_sample").
        dcn_recompute (bool): grid_sample DCN recomputes its columns in the backward pass.
    """

    def __init__(
        self,
        *,
        channels: int = 256,
        text_dim: int = 768,
        num_levels: int = 5,
        num_convs: int = 6,
        gn_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_deform: bool = True,
        emulate_offset_quirk: bool = True,
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
        use_checkpoint: bool = False,
        dcn_impl: str = "auto",
        dcn_recompute: bool = True,
    ):
        super().__init__()
        self.tower = nn.ModuleList(
            DyHeadBlock(
                channels,
                gn_groups=gn_groups,
                use_dyrelu=use_dyrelu,
                use_dyfuse=use_dyfuse,
                use_deform=use_deform,
                emulate_offset_quirk=emulate_offset_quirk,
                dcn_impl=dcn_impl,
                dcn_recompute=dcn_recompute,
            )
            for _ in range(num_convs)
        )
        self.bbox_pred = nn.Conv2d(channels, 4, 1)
        self.centerness = nn.Conv2d(channels, 1, 1)
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.text_proj = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([log_scale]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        self.use_checkpoint = use_checkpoint

    def run_tower(self, feats: List[Tensor]) -> List[Tensor]:
        for block in self.tower:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                feats = activation_checkpoint.checkpoint(block, feats, use_reentrant=False)
            else:
                feats = block(feats)
        return feats

    def forward(self, feats: List[Tensor], text: TextFeatures) -> HeadOutputs:
        """
        Args:
            feats (list[Tensor]): pyramid levels, each (B, C, H_l, W_l).
            text (TextFeatures): fused text features (B, T, D) and mask.
        """
        tower = self.run_tower(list(feats))
        emb = F.normalize(text.embedded, p=2, dim=-1)
        tokens = self.text_proj(emb / 2.0)  # (B, T, C)
        token_bias = emb @ self.bias_lang + self.bias0  # (B, T)
        temperature = self.log_scale.exp()
        box, ctr, logits = [], [], []
        for level, v in enumerate(tower):
            box.append(self.scales[level](self.bbox_pred(v)))
            ctr.append(self.centerness(v))
            queries = v.flatten(2).transpose(1, 2)  # (B, H*W, C)
            logit = (queries @ tokens.transpose(1, 2)) / temperature + token_bias[:, None, :]
            logits.append(logit.clamp(min=-50000.0, max=50000.0))
        return HeadOutputs(box_regression=box, centerness=ctr, logits=logits)
