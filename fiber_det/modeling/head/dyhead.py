"""DyHead tower without language fusion, as configured by FIBER.

Each block applies, per pyramid level l, three modulated deformable 3x3 convs (DCNv2, Zhu et al.
2019) to levels l+1 (then upsampled), l and l-1 (stride 2), weights the results with a
scale-aware attention and averages them, then applies DyReLU (Chen et al. 2020): Dai et al.,
"Dynamic Head", CVPR 2021. FIBER keeps GLIP's DyHead but without fusion inside the head
(``EARLY_FUSE_ON: False``; ``microsoft/FIBER`` ``modeling/rpn/vldyhead.py``, ``DyConv``).

The deformable convs run through ``torchvision.ops.deform_conv2d`` or, by default on CPU, an
equivalent formulation with ``grid_sample`` + one matmul (bilinear sampling of the 9 kernel
points with zero padding is exactly ``grid_sample(align_corners=True, padding_mode="zeros")``);
it avoids torchvision's per-call zero-filled column buffers and is cache-blocked (one image and a
band of output rows at a time); the README's benchmark table gives the whole-model CPU speed-up
over torchvision's op (the "before" row of tools/benchmark.py). The two agree to ~1e-5 (float
summation order).

The official "next level" branch computes the offsets and masks on level l but runs the conv on
level l+1 (half the size); the CUDA kernel never checks the offset size and reads the first
``18 * H' * W'`` floats of the level-l buffer as if it were ``(18, H', W')``. With
``emulate_offset_quirk=True`` (official checkpoints) that memory reinterpretation is reproduced
exactly; with ``False`` the offsets are resized to level l+1 instead (for models trained here).
"""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["DyHeadBlock", "DyReLU", "ModulatedDeformConv3x3", "deform_conv3x3_grid_sample"]

DCN_IMPLS = ("auto", "torchvision", "grid_sample")


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ReLU6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0


#: Column-buffer budget (elements) of one tile of the grid_sample DCN on CPU: 4 MB of fp32 keeps
#: the sampled columns in cache. Measured on FIBER-B at 512x512 (2-core Xeon): the DyHead takes
#: 0.96 s per prompt alone and 0.84 s per prompt in a batch of 8, against 1.18 s and 1.74 s with
#: one untiled (B, 9C, HW) buffer, whose transposed copy inside a batched ``matmul`` dominated
#: batched multi-prompt inference.
CPU_TILE_ELEMENTS = 1 << 20


def _dcn_sampling_grid(offset: Tensor, h: int, w: int, stride: int) -> Tensor:
    """Normalised sampling points (B, 9, Ho, Wo, 2) as (x, y) of a 3x3 DCN with padding 1."""
    b, _, ho, wo = offset.shape
    k = torch.arange(3, device=offset.device, dtype=offset.dtype)
    rows = torch.arange(ho, device=offset.device, dtype=offset.dtype) * stride - 1
    cols = torch.arange(wo, device=offset.device, dtype=offset.dtype) * stride - 1
    base_y = rows[None, :, None] + k.repeat_interleave(3)[:, None, None]  # (9, Ho, 1)
    base_x = cols[None, None, :] + k.repeat(3)[:, None, None]  # (9, 1, Wo)
    off = offset.reshape(b, 9, 2, ho, wo)
    gy = (base_y + off[:, :, 0]) * (2.0 / max(h - 1, 1)) - 1.0
    gx = (base_x + off[:, :, 1]) * (2.0 / max(w - 1, 1)) - 1.0
    return torch.stack((gx, gy), dim=-1)


def deform_conv3x3_grid_sample(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor,
    stride: int,
    tile_elements: Optional[int] = None,
) -> Tensor:
    """Modulated deformable 3x3 conv, padding 1, dilation 1, one offset group (DCNv2).

    Kernel point k = 3 i + j of output pixel (ho, wo) samples the input at
    ``(ho * stride - 1 + i + dy_k, wo * stride - 1 + j + dx_k)`` bilinearly (zero outside),
    scaled by ``mask_k``; the samples are then contracted with the weights in one matmul.

    The work is cache-blocked: one image at a time and, within it, bands of output rows whose
    sampled columns (9 C x rows x Wo values) fit ``tile_elements`` (default
    :data:`CPU_TILE_ELEMENTS` on CPU, whole images on GPU). Each output value is computed by the
    same operations whatever the batch, so batched and one-by-one results are identical.

    Args:
        x: (B, C, H, W); offset: (B, 18, Ho, Wo) as (dy, dx) per kernel point;
        mask: (B, 9, Ho, Wo); weight: (C_out, C, 3, 3); bias: (C_out,).
        tile_elements (int, optional): column-buffer budget per tile.
    Returns:
        (B, C_out, Ho, Wo)
    """
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    if tile_elements is None:
        tile_elements = CPU_TILE_ELEMENTS if x.device.type == "cpu" else c * 9 * ho * wo
    band = max(1, min(ho, tile_elements // (c * 9 * wo)))
    grid = _dcn_sampling_grid(offset, h, w, stride)
    w2 = weight.reshape(weight.shape[0], -1)
    bias2 = bias[:, None]
    outs = []
    for i in range(b):
        tiles = []
        for r0 in range(0, ho, band):
            r1 = min(ho, r0 + band)
            g = grid[i : i + 1, :, r0:r1].reshape(1, 9 * (r1 - r0), wo, 2)
            cols_ = F.grid_sample(
                x[i : i + 1], g, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            cols_ = cols_.view(c, 9, -1) * mask[i, :, r0:r1].reshape(1, 9, -1)
            tiles.append(torch.addmm(bias2, w2, cols_.view(c * 9, -1)).view(-1, r1 - r0, wo))
        outs.append(tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=1))
    return torch.stack(outs)


class ModulatedDeformConv3x3(nn.Module):
    """Modulated deformable 3x3 conv (padding 1) followed by GroupNorm.

    Args:
        channels (int): input and output channels.
        stride (int): 1 or 2.
        gn_groups (int): GroupNorm groups (0 disables the norm).
        impl (str): "torchvision", "grid_sample", or "auto" (grid_sample on CPU).
    """

    def __init__(self, channels: int, stride: int, gn_groups: int = 16, impl: str = "auto"):
        super().__init__()
        if impl not in DCN_IMPLS:
            raise ValueError(f"MODEL.DYHEAD.DCN_IMPL must be one of {DCN_IMPLS}, got {impl!r}")
        self.impl = impl
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        bound = 1.0 / math.sqrt(channels * 9)  # official ModulatedDeformConv.reset_parameters
        nn.init.uniform_(self.weight, -bound, bound)
        self.norm = nn.GroupNorm(gn_groups, channels) if gn_groups else nn.Identity()

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """x (B, C, H, W); offset (B, 18, Ho, Wo) as (dy, dx) pairs; mask (B, 9, Ho, Wo)."""
        # deform_conv2d has no autocast rule: run it in the parameters' dtype (fp32 under AMP, as
        # the official custom_fwd(cast_inputs=float32) does).
        dtype = self.weight.dtype
        x, offset, mask = x.to(dtype), offset.to(dtype), mask.to(dtype)
        impl = self.impl
        if impl == "auto":
            impl = "torchvision" if x.is_cuda else "grid_sample"
        with torch.autocast(x.device.type, enabled=False):  # fp32 under AMP, as officially
            if impl == "grid_sample":
                out = deform_conv3x3_grid_sample(
                    x, offset, mask, self.weight, self.bias, self.stride
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
    ):
        super().__init__()
        self.convs = nn.ModuleList(
            ModulatedDeformConv3x3(channels, s, gn_groups, dcn_impl) for s in (1, 1, 2)
        )
        self.use_deform = use_deform
        self.emulate_offset_quirk = emulate_offset_quirk
        if use_deform:
            self.offset = nn.Conv2d(channels, 27, 3, padding=1)
        self.scale_attn = None
        if use_dyfuse:
            self.scale_attn = nn.Conv2d(channels, 1, 1)
            nn.init.normal_(self.scale_attn.weight, std=0.01)
            nn.init.zeros_(self.scale_attn.bias)
        self.dyrelu = DyReLU(channels) if use_dyrelu else None

    def _offsets(self, feature: Tensor):
        if self.use_deform:
            om = self.offset(feature)
            return om[:, :18], om[:, 18:].sigmoid()
        b, _, h, w = feature.shape
        return feature.new_zeros(b, 18, h, w), feature.new_ones(b, 9, h, w)

    def _next_level_offsets(self, offset: Tensor, mask: Tensor, size: torch.Size):
        if self.emulate_offset_quirk:
            return _reinterpret(offset, size), _reinterpret(mask, size)
        # Offsets are in input pixels of the conv's level: half as many on the coarser level.
        off = F.interpolate(offset, size=size, mode="bilinear", align_corners=False) * 0.5
        return off, F.interpolate(mask, size=size, mode="bilinear", align_corners=False)

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        """[(B, C, H_l, W_l)] for levels P3..P7 -> same shapes."""
        outs = []
        for level, feature in enumerate(feats):
            offset, mask = self._offsets(feature)
            parts = [self.convs[1](feature, offset, mask)]
            if level > 0:
                parts.append(self.convs[2](feats[level - 1], offset, mask))
            if level < len(feats) - 1:
                coarse = feats[level + 1]
                off_n, mask_n = self._next_level_offsets(offset, mask, coarse.shape[-2:])
                y = self.convs[0](coarse, off_n, mask_n)
                parts.append(
                    F.interpolate(y, size=feature.shape[-2:], mode="bilinear", align_corners=True)
                )
            stacked = torch.stack(parts)
            if self.scale_attn is not None:
                attn = torch.stack(
                    [F.relu(self.scale_attn(p.mean(dim=(2, 3), keepdim=True))) for p in parts]
                )
                stacked = stacked * h_sigmoid(attn)
            out = stacked.mean(dim=0)
            outs.append(self.dyrelu(out) if self.dyrelu is not None else F.relu(out))
        return outs
