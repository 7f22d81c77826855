"""Feature pyramid P3-P7 on top of the fused Swin stages (RetinaNet-style P6/P7 from P5).

Same computation as maskrcnn_benchmark's FPN with ``LastLevelP6P7(use_P5=True)`` used by FIBER:
1x1 laterals, nearest top-down upsampling, 3x3 outputs without norm or activation,
``P6 = conv3x3/2(P5)``, ``P7 = conv3x3/2(relu(P6))``, optional DropBlock (Ghiasi et al. 2018) on
the merged laterals in training.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FIBERFPN", "DropBlock2d"]


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018) as used by the official FPN: training only."""

    def __init__(self, drop_prob: float, block_size: int):
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        seeds = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < gamma).to(x.dtype)
        k = self.block_size
        block = F.max_pool2d(seeds, kernel_size=k, stride=1, padding=k // 2)
        if k % 2 == 0:
            block = block[:, :, :-1, :-1]
        keep = 1.0 - block
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


def _c2_init(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class FIBERFPN(nn.Module):
    """FPN from backbone stages (strides 8, 16, 32) to P3-P7 (strides 8 ... 128).

    Args:
        in_channels (sequence of int): channels of the input stages, finest first.
        out_channels (int): channels of every pyramid level (256).
        drop_block_prob (float), drop_block_size (int): DropBlock in training (0 = off).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        *,
        drop_block_prob: float = 0.0,
        drop_block_size: int = 3,
    ):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            _c2_init(nn.Conv2d(c, out_channels, 1)) for c in in_channels
        )
        self.output_convs = nn.ModuleList(
            _c2_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels
        )
        self.p6 = _c2_init(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))
        self.p7 = _c2_init(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))
        self.drop_block = DropBlock2d(drop_block_prob, drop_block_size)
        self.out_channels = out_channels

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        """(B, C_i, H_i, W_i) stage features, finest first -> [P3, ..., P7]."""
        inner = self.lateral_convs[-1](feats[-1])
        outs = [self.output_convs[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            if lateral.shape[-2:] != inner.shape[-2:]:
                inner = F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            inner = lateral + inner
            outs.insert(0, self.output_convs[i](self.drop_block(inner)))
        p6 = self.p6(outs[-1])
        p7 = self.p7(F.relu(p6))
        return outs + [p6, p7]
