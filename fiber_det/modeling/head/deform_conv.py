"""Modulated deformable 3x3 convolution (DCNv2) as ``grid_sample`` + matmul, cache-blocked.

Bilinear sampling of the 9 kernel points with zero padding is exactly
``grid_sample(align_corners=True, padding_mode="zeros")`` (Zhu et al., "Deformable ConvNets v2",
CVPR 2019; the maths of ``torchvision.ops.deform_conv2d``). The sampled columns of one image and a
band of output rows (``(9 C, rows x W_out)`` values) are scaled by the modulation mask and
contracted with the weights in one ``addmm``, a tile at a time, so that they stay in cache; on CPU
this avoids torchvision's per-call zero-filled column buffer of the whole batch.

In training, :class:`DeformConv3x3Function` keeps only the inputs for the backward pass and
recomputes each tile's columns there (activation checkpointing of the columns, as the CUDA DCN
kernels do), instead of letting autograd keep every ``(9 C, H W)`` tile of the forward.

In inference on CPU, the sampling of a tile goes to the compiled sampler of :mod:`.dcn_sampler`
where it is built and bitwise equal to ``grid_sample`` (checked at first use), and to
``grid_sample`` otherwise: the same columns either way. Training keeps ``grid_sample``.
"""

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dcn_sampler import compiled_sampler, sampler_applies

__all__ = [
    "CPU_TILE_ELEMENTS",
    "DeformConv3x3Function",
    "KERNEL_POINTS",
    "MASK_CHANNELS",
    "OFFSET_CHANNELS",
    "deform_conv3x3_grid_sample",
]

#: Sampling points of a 3x3 kernel.
KERNEL_POINTS = 9
#: Offset channels of a 3x3 DCN with one offset group: (dy, dx) per kernel point.
OFFSET_CHANNELS = 2 * KERNEL_POINTS
#: Modulation-mask channels: one scalar per kernel point.
MASK_CHANNELS = KERNEL_POINTS

#: Column-buffer budget (elements) of one tile on CPU: 4 MB of fp32, so that the sampled columns
#: of a tile stay in cache between the sampling and the matmul (see tools/benchmark.py for the
#: effect on whole-model latency).
CPU_TILE_ELEMENTS = 1 << 20

# grid_sample's integer codes for ("bilinear", "zeros"), as passed to its backward op.
_BILINEAR, _ZEROS = 0, 0


def dcn_sampling_grid(offset: Tensor, h: int, w: int, stride: int) -> Tensor:
    """Normalised sampling points (B, 9, Ho, Wo, 2) as (x, y) of a 3x3 DCN with padding 1.

    Args:
        offset (Tensor): (B, 18, Ho, Wo), (dy, dx) per kernel point.
        h, w (int): input size; stride (int): conv stride.
    """
    b, _, ho, wo = offset.shape
    k = torch.arange(3, device=offset.device, dtype=offset.dtype)
    rows = torch.arange(ho, device=offset.device, dtype=offset.dtype) * stride - 1
    cols = torch.arange(wo, device=offset.device, dtype=offset.dtype) * stride - 1
    base_y = rows[None, :, None] + k.repeat_interleave(3)[:, None, None]  # (9, Ho, 1)
    base_x = cols[None, None, :] + k.repeat(3)[:, None, None]  # (9, 1, Wo)
    off = offset.reshape(b, KERNEL_POINTS, 2, ho, wo)
    gy = (base_y + off[:, :, 0]) * (2.0 / max(h - 1, 1)) - 1.0
    gx = (base_x + off[:, :, 1]) * (2.0 / max(w - 1, 1)) - 1.0
    return torch.stack((gx, gy), dim=-1)


def _band_rows(channels: int, ho: int, wo: int, device: torch.device, budget: Optional[int]) -> int:
    """Output rows per tile: whole images on GPU, ``CPU_TILE_ELEMENTS`` of columns on CPU."""
    if budget is None:
        budget = CPU_TILE_ELEMENTS if device.type == "cpu" else channels * KERNEL_POINTS * ho * wo
    return max(1, min(ho, budget // (channels * KERNEL_POINTS * wo)))


def _tiles(batch: int, ho: int, band: int) -> Iterator[Tuple[int, int, int]]:
    """(image, first row, end row) of every tile, images first."""
    for i in range(batch):
        for r0 in range(0, ho, band):
            yield i, r0, min(ho, r0 + band)


def _sample(x: Tensor, grid: Tensor, i: int, r0: int, r1: int) -> Tuple[Tensor, Tensor]:
    """Bilinear samples (1, C, 9 x rows, Wo) of image i's output rows r0:r1, and their grid."""
    wo = grid.shape[3]
    g = grid[i : i + 1, :, r0:r1].reshape(1, KERNEL_POINTS * (r1 - r0), wo, 2)
    s = F.grid_sample(x[i : i + 1], g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return s, g


def _columns(x: Tensor, grid: Tensor, mask: Tensor, i: int, r0: int, r1: int, fast: bool) -> Tensor:
    """Image i's (C, 9 x rows x Wo) samples of output rows r0:r1, times the mask.

    ``fast``: through the compiled sampler (x channels last), else grid_sample.
    """
    m = mask[i, :, r0:r1].reshape(-1)
    if fast:
        image = x[i].permute(1, 2, 0)  # (H, W, C), contiguous: x is channels last
        points = grid[i, :, r0:r1].reshape(-1, 2).contiguous()
        return compiled_sampler()(image, points, m.contiguous())
    s, _ = _sample(x, grid, i, r0, r1)
    return s.view(x.shape[1], -1).mul_(m)


def _forward_tiles(
    x: Tensor,
    grid: Tensor,
    mask: Tensor,
    w2: Tensor,
    bias: Tensor,
    band: int,
    compiled: bool = True,
) -> Tensor:
    """All tiles, no autograd; ``compiled``: the compiled sampler where it applies."""
    b, c = x.shape[:2]
    ho, wo = grid.shape[2:4]
    bias2 = bias[:, None]
    fast = compiled and sampler_applies(x, grid, mask)
    out = x.new_empty(b, w2.shape[0], ho, wo)
    for i, r0, r1 in _tiles(b, ho, band):
        cols = _columns(x, grid, mask, i, r0, r1, fast)
        # into its place in the output (no concatenation); computed contiguous, then copied, so
        # that the values do not depend on the output's strides
        out[i, :, r0:r1] = torch.addmm(bias2, w2, cols.view(c * KERNEL_POINTS, -1)).view(
            -1, r1 - r0, wo
        )
    return out


class DeformConv3x3Function(torch.autograd.Function):
    """The tiled DCN with its columns recomputed in the backward pass.

    ``forward(x, grid, mask, w2, bias, band)``: x (B, C, H, W); grid (B, 9, Ho, Wo, 2) from
    :func:`dcn_sampling_grid`; mask (B, 9, Ho, Wo); w2 (C_out, C x 9), the weight flattened
    channel-major; bias (C_out,); band (int) output rows per tile. Gradients flow to x, grid (hence
    the offsets), mask, w2 and bias; the same tile products as autograd through
    :func:`deform_conv3x3_grid_sample`, summed in another order.
    """

    @staticmethod
    def forward(ctx, x, grid, mask, w2, bias, band):
        ctx.save_for_backward(x, grid, mask, w2)
        ctx.band = band
        # training keeps grid_sample: the compiled sampler serves inference only (its gain in a
        # training step is within the noise, and the step's peak memory is a target)
        return _forward_tiles(x, grid, mask, w2, bias, band, compiled=False)

    @staticmethod
    def backward(ctx, grad_out):
        x, grid, mask, w2 = ctx.saved_tensors
        need_x, need_grid, need_mask, need_w, need_bias = ctx.needs_input_grad[:5]
        need_cols = need_x or need_grid or need_mask  # gradient of the sampled columns
        b, c = x.shape[:2]
        ho, wo = grid.shape[2:4]
        k = KERNEL_POINTS
        grad_x = torch.zeros_like(x) if need_x else None
        grad_grid = torch.zeros_like(grid) if need_grid else None
        grad_mask = torch.zeros_like(mask) if need_mask else None
        grad_w = torch.zeros_like(w2) if need_w else None
        grad_bias = grad_out.sum(dim=(0, 2, 3)) if need_bias else None
        for i, r0, r1 in _tiles(b, ho, ctx.band):
            s, g = _sample(x, grid, i, r0, r1)
            s = s.view(c, k, -1)
            m = mask[i, :, r0:r1].reshape(1, k, -1)
            go = grad_out[i, :, r0:r1].reshape(grad_out.shape[1], -1)
            g_cols = torch.mm(w2.t(), go).view(c, k, -1) if need_cols else None
            if need_mask:
                grad_mask[i, :, r0:r1] = (g_cols * s).sum(dim=0).view(k, r1 - r0, wo)
            if need_w:
                grad_w.addmm_(go, s.mul_(m).view(c * k, -1).t())
            if need_x or need_grid:
                g_s = g_cols.mul_(m).view(1, c, k * (r1 - r0), wo)
                gx, gg = torch.ops.aten.grid_sampler_2d_backward(
                    g_s, x[i : i + 1], g, _BILINEAR, _ZEROS, True, [need_x, need_grid]
                )
                if need_x:
                    grad_x[i : i + 1] += gx
                if need_grid:
                    grad_grid[i, :, r0:r1] = gg.view(k, r1 - r0, wo, 2)
        return grad_x, grad_grid, grad_mask, grad_w, grad_bias, None


def deform_conv3x3_grid_sample(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor,
    stride: int,
    tile_elements: Optional[int] = None,
    recompute: bool = True,
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
        recompute (bool): with autograd, keep only the inputs and recompute the columns in the
            backward pass (:class:`DeformConv3x3Function`); False lets autograd keep every tile.
    Returns:
        (B, C_out, Ho, Wo)
    """
    c, h, w = x.shape[1:]
    ho, wo = offset.shape[-2:]
    if x.device.type == "cpu":
        # grid_sample's CPU kernel reads the 4 corners of all channels of a sample point: with
        # channels last they are 4 contiguous rows instead of 4 x C scattered values (same
        # result, half the time).
        x = x.contiguous(memory_format=torch.channels_last)
    band = _band_rows(c, ho, wo, x.device, tile_elements)
    grid = dcn_sampling_grid(offset, h, w, stride)
    w2 = weight.reshape(weight.shape[0], -1)
    tensors = (x, grid, mask, w2, bias)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return _forward_tiles(*tensors, band)
    if recompute:
        return DeformConv3x3Function.apply(*tensors, band)
    return _forward_tiles_autograd(*tensors, band)


def _forward_tiles_autograd(
    x: Tensor, grid: Tensor, mask: Tensor, w2: Tensor, bias: Tensor, band: int
) -> Tensor:
    """The tiles as plain autograd ops: autograd keeps every tile's columns for the backward."""
    c = x.shape[1]
    ho, wo = grid.shape[2:4]
    bias2 = bias[:, None]
    outs = []
    for i in range(x.shape[0]):
        tiles = []
        for _, r0, r1 in _tiles(1, ho, band):
            s, _ = _sample(x, grid, i, r0, r1)
            cols = s.view(c, KERNEL_POINTS, -1) * mask[i, :, r0:r1].reshape(1, KERNEL_POINTS, -1)
            out = torch.addmm(bias2, w2, cols.view(c * KERNEL_POINTS, -1))
            tiles.append(out.view(-1, r1 - r0, wo))
        outs.append(torch.cat(tiles, dim=1))
    return torch.stack(outs)
