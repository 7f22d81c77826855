"""DyHead tower without language fusion, as configured by FIBER.

Each block applies, per pyramid level l, three modulated deformable 3x3 convs (DCNv2, Zhu et al.
2019) to levels l+1 (then upsampled), l and l-1 (stride 2), weights the results with a
scale-aware attention and averages them, then applies DyReLU (Chen et al. 2020): Dai et al.,
"Dynamic Head", CVPR 2021. FIBER keeps GLIP's DyHead but without fusion inside the head
(``EARLY_FUSE_ON: False``; ``microsoft/FIBER`` ``modeling/rpn/vldyhead.py``, ``DyConv``).

The deformable convs run through ``torchvision.ops.deform_conv2d`` or, by default on CPU, an
equivalent formulation with ``grid_sample`` + one matmul per cache-sized tile
(:mod:`.deform_conv`), which in training recomputes its sampled columns in the backward pass
instead of keeping them; the README's benchmark table compares the two. They agree to ~1e-5
(float summation order).

The official "next level" branch computes the offsets and masks on level l but runs the conv on
level l+1 (half the size); the CUDA kernel never checks the offset size and reads the first
``18 * H' * W'`` floats of the level-l buffer as if it were ``(18, H', W')``. With
``emulate_offset_quirk=True`` (official checkpoints) that memory reinterpretation is reproduced
exactly; with ``False`` the offsets are resized to level l+1 instead (for models trained here).
"""

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from .deform_conv import (
    KERNEL_POINTS,
    MASK_CHANNELS,
    OFFSET_CHANNELS,
    deform_conv3x3_grid_sample,
)

__all__ = ["DyHeadBlock", "DyReLU", "ModulatedDeformConv3x3", "deform_conv3x3_grid_sample"]

DCN_IMPLS = ("auto", "torchvision", "grid_sample")


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ReLU6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0


class ModulatedDeformConv3x3(nn.Module):
    """Modulated deformable 3x3 conv (padding 1) followed by GroupNorm.

    Args:
        channels (int): input and output channels.
        stride (int): 1 or 2.
        gn_groups (int): GroupNorm groups (0 disables the norm).
        impl (str): "torchvision", "grid_sample", or "auto" (grid_sample on CPU).
        recompute (bool): grid_sample in training: recompute the sampled columns in the backward
            pass instead of keeping them (same gradients, less memory).
    """

    def __init__(
        self,
        channels: int,
        stride: int,
        gn_groups: int = 16,
        impl: str = "auto",
        recompute: bool = True,
    ):
        super().__init__()
        if impl not in DCN_IMPLS:
            raise ValueError(f"MODEL.DYHEAD.DCN_IMPL must be one of {DCN_IMPLS}, got {impl!r}")
        self.impl = impl
        self.recompute = recompute
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        # official ModulatedDeformConv.reset_parameters
        bound = 1.0 / math.sqrt(channels * KERNEL_POINTS)
        nn.init.uniform_(self.weight, -bound, bound)
        self.norm = nn.GroupNorm(gn_groups, channels) if gn_groups else nn.Identity()

    def resolved_impl(self, x: Tensor) -> str:
        """The implementation used for ``x`` ("auto": grid_sample on CPU, torchvision on GPU)."""
        if self.impl == "auto":
            return "torchvision" if x.is_cuda else "grid_sample"
        return self.impl

    def prepare(self, x: Tensor) -> Tensor:
        """``x`` in the dtype and memory layout this conv reads: the parameters' dtype (fp32
        under AMP: deform_conv2d has no autocast rule, and the official custom_fwd casts to
        fp32), channels last for grid_sample on CPU. A feature read by several convs is
        converted once; :meth:`forward` converts what is not prepared."""
        x = x.to(self.weight.dtype)
        if x.device.type == "cpu" and self.resolved_impl(x) == "grid_sample":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """x (B, C, H, W); offset (B, 18, Ho, Wo) as (dy, dx) pairs; mask (B, 9, Ho, Wo)."""
        dtype = self.weight.dtype
        x, offset, mask = self.prepare(x), offset.to(dtype), mask.to(dtype)
        impl = self.resolved_impl(x)
        with torch.autocast(x.device.type, enabled=False):  # fp32 under AMP, as officially
            if impl == "grid_sample":
                out = deform_conv3x3_grid_sample(
                    x, offset, mask, self.weight, self.bias, self.stride, recompute=self.recompute
                )
            else:
                out = deform_conv2d(
                    x, offset, self.weight, self.bias, stride=self.stride, padding=1, mask=mask
                )
        return self.norm(out)


class DyReLU(nn.Module):
    """Dynamic ReLU-B (Chen et al., ECCV 2020): ``max(a1 x + b1, a2 x + b2)`` per channel,
    coefficients from the globally pooled input (init a = (1, 0), b = (0, 0), lambda_a = 1)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels * 4)

    def forward(self, x: Tensor) -> Tensor:
        y = h_sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        a1, b1, a2, b2 = y[:, :, None, None].split(self.channels, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        return torch.maximum(x * a1 + (b1 - 0.5), x * a2 + (b2 - 0.5))


def _reinterpret(t: Tensor, size: torch.Size) -> Tensor:
    """View the first C*H'*W' values of each (C, H, W) item as (C, H', W') (CUDA indexing)."""
    b, c = t.shape[:2]
    n = c * size[0] * size[1]
    return t.reshape(b, -1)[:, :n].reshape(b, c, size[0], size[1])


class DyHeadBlock(nn.Module):
    """One DyHead block (scale-, spatial- and task-aware attention) over all pyramid levels.

    ``convs[0]`` reads the coarser level l+1, ``convs[1]`` level l, ``convs[2]`` the finer level
    l-1 with stride 2 (official ``DyConv[0..2]`` order).

    Args:
        channels (int): pyramid channels (256).
        gn_groups (int): GroupNorm groups after each conv.
        use_dyrelu (bool): DyReLU (else ReLU) after the level fusion.
        use_dyfuse (bool): scale-aware attention weights (else a plain mean).
        use_deform (bool): deformable convs (else plain 3x3 convs with zero offsets).
        emulate_offset_quirk (bool): reproduce the official next-level offset reinterpretation.
        dcn_impl (str): deformable conv implementation (see ModulatedDeformConv3x3).
        dcn_recompute (bool): see ModulatedDeformConv3x3 ``recompute``.
    """

    def __init__(
        self,
        channels: int = 256,
        *,
        gn_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_deform: bool = True,
        emulate_offset_quirk: bool = True,
        dcn_impl: str = "auto",
        dcn_recompute: bool = True,
    ):
        super().__init__()
        self.convs = nn.ModuleList(
            ModulatedDeformConv3x3(channels, s, gn_groups, dcn_impl, dcn_recompute)
            for s in (1, 1, 2)
        )
        self.use_deform = use_deform
        self.emulate_offset_quirk = emulate_offset_quirk
        if use_deform:
            self.offset = nn.Conv2d(channels, OFFSET_CHANNELS + MASK_CHANNELS, 3, padding=1)
        self.scale_attn = None
        if use_dyfuse:
            self.scale_attn = nn.Conv2d(channels, 1, 1)
            nn.init.normal_(self.scale_attn.weight, std=0.01)
            nn.init.zeros_(self.scale_attn.bias)
        self.dyrelu = DyReLU(channels) if use_dyrelu else None

    def _offsets(self, feature: Tensor):
        if self.use_deform:
            om = self.offset(feature)
            return om[:, :OFFSET_CHANNELS], om[:, OFFSET_CHANNELS:].sigmoid()
        b, _, h, w = feature.shape
        return (
            feature.new_zeros(b, OFFSET_CHANNELS, h, w),
            feature.new_ones(b, MASK_CHANNELS, h, w),
        )

    def _next_level_offsets(self, offset: Tensor, mask: Tensor, size: torch.Size):
        if self.emulate_offset_quirk:
            return _reinterpret(offset, size), _reinterpret(mask, size)
        # Offsets are in input pixels of the conv's level: half as many on the coarser level.
        off = F.interpolate(offset, size=size, mode="bilinear", align_corners=False) * 0.5
        return off, F.interpolate(mask, size=size, mode="bilinear", align_corners=False)

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        """[(B, C, H_l, W_l)] for levels P3..P7 -> same shapes."""
        outs = []
        dcn_in = [self.convs[1].prepare(f) for f in feats]  # each level is read by 3 convs
        for level, feature in enumerate(feats):
            offset, mask = self._offsets(feature)
            parts = [self.convs[1](dcn_in[level], offset, mask)]
            if level > 0:
                parts.append(self.convs[2](dcn_in[level - 1], offset, mask))
            if level < len(feats) - 1:
                coarse = dcn_in[level + 1]
                off_n, mask_n = self._next_level_offsets(offset, mask, coarse.shape[-2:])
                y = self.convs[0](coarse, off_n, mask_n)
                parts.append(
                    F.interpolate(y, size=feature.shape[-2:], mode="bilinear", align_corners=True)
                )
            if self.scale_attn is not None:  # scale-aware attention: one weight per level
                parts = [
                    p * h_sigmoid(F.relu(self.scale_attn(p.mean(dim=(2, 3), keepdim=True))))
                    for p in parts
                ]
            # the mean of the levels, summed in order without stacking them (same values)
            out = parts[0]
            for p in parts[1:]:
                out = out + p
            out = out / len(parts)
            outs.append(self.dyrelu(out) if self.dyrelu is not None else F.relu(out))
        return outs
