"""The optional compiled DCN sampler (``fiber_det._C``), used only where it equals ``grid_sample``.

The deformable convolution of the DyHead (:mod:`.deform_conv`) spends most of its non-matmul time
in ATen's CPU ``grid_sample``, which works one channel at a time and gathers 4 scattered values
per sampling point. ``fiber_det/csrc/dcn_sample.cpp`` reads a point's 4 corners as 4 contiguous
channels-last rows and writes the (9 C, points) matmul columns directly, the modulation mask
applied on the way: 6x faster than grid_sample on a FIBER-B DyHead tile here, 0.92-0.96x the
whole 512x512 forward across runs (``tools/benchmark.py``, README *Performance*).

Exactness is checked, not assumed. ATen's vectorised kernel computes
``nw v_nw + ne v_ne + sw v_sw + se v_se``, and whether the compiler that built it contracted the
additions into multiply-adds depends on the build and on the CPU capability picked at run time.
The compiled sampler does either, on request. At first use, :func:`compiled_sampler` runs both
variants and ``grid_sample`` on probe inputs (random points, image borders, integral
coordinates, NaN and far-away points) and keeps the variant whose every bit agrees; if neither
does, the sampler is not used and the DCN stays on ``grid_sample``. The result of a forward pass
is therefore the same, bit for bit, with or without the extension.

``FIBER_DET_DCN_KERNEL=0`` turns the sampler off; ``pip install`` without torch at build time,
or ``FIBER_DET_BUILD_EXT=0``, does not build it (see setup.py).
"""

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ENV_VAR",
    "compiled_sampler",
    "compiled_sampler_status",
    "grid_sample_only",
    "sampler_applies",
]

logger = logging.getLogger(__name__)

#: Environment switch: "0" keeps the DCN on grid_sample even where the extension is built.
ENV_VAR = "FIBER_DET_DCN_KERNEL"

#: (sampler or None, status line), decided once per process.
_STATE: Optional[Tuple[Optional[Callable[..., Tensor]], str]] = None
#: Depth of :func:`grid_sample_only` blocks in force.
_SUSPENDED = 0

Sampler = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def _probe_inputs() -> Tuple[Tensor, Tensor, Tensor]:
    """A small channels-last image and sampling points that cover what the DCN can produce."""
    gen = torch.Generator().manual_seed(0)
    c, h, w = 37, 9, 13
    x = torch.randn(1, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    inside = torch.rand(600, 2, generator=gen) * 2.4 - 1.2  # around and past the borders
    ix = torch.arange(-1, w + 1, dtype=torch.float32) * (2.0 / (w - 1)) - 1.0  # integral x
    iy = torch.arange(-1, h + 1, dtype=torch.float32) * (2.0 / (h - 1)) - 1.0  # integral y
    lattice = torch.stack(torch.meshgrid(ix, iy, indexing="ij"), dim=-1).reshape(-1, 2)
    odd = torch.tensor(
        [[float("nan"), 0.0], [0.0, float("nan")], [1e30, 0.0], [-1e30, 0.5], [0.2, 3e9]]
    )
    grid = torch.cat([inside, lattice, odd]).contiguous()
    mask = torch.rand(grid.shape[0], generator=gen)
    return x, grid, mask


def _reference(x: Tensor, grid: Tensor, mask: Optional[Tensor]) -> Tensor:
    """grid_sample's (C, P) samples, times the mask: what the DCN computes without the sampler."""
    s = F.grid_sample(
        x, grid.view(1, -1, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    ).view(x.shape[1], -1)
    return s * mask if mask is not None else s


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _choose_variant(ext) -> Optional[bool]:
    """The variant (fused multiply-adds or not) bitwise equal to grid_sample here, else None."""
    x, grid, mask = _probe_inputs()
    image = x[0].permute(1, 2, 0)
    empty = torch.empty(0)
    with torch.no_grad():
        want = (_reference(x, grid, mask), _reference(x, grid, None))
        for fused in (True, False):
            got = (
                ext.sample_columns(image, grid, mask, fused),
                ext.sample_columns(image, grid, empty, fused),
            )
            if all(_same_bits(g, w) for g, w in zip(got, want)):
                return fused
    return None


def _load() -> Tuple[Optional[Sampler], str]:
    if os.environ.get(ENV_VAR, "1") == "0":
        return None, f"off ({ENV_VAR}=0): grid_sample"
    try:
        from fiber_det import _C
    except ImportError as e:
        return None, f"not built ({e}): grid_sample; `make install` builds it"
    built_for = getattr(_C, "torch_version", "?")
    if built_for != torch.__version__.split("+")[0]:
        logger.warning(
            "fiber_det._C was built for torch %s, this is torch %s: the DCN uses grid_sample. "
            "Rebuild it with `make install`.",
            built_for,
            torch.__version__,
        )
        return None, f"built for torch {built_for}, not {torch.__version__}: grid_sample"
    try:
        fused = _choose_variant(_C)
    except Exception as e:  # a broken build must not break the model: grid_sample remains
        logger.warning("The compiled DCN sampler failed its check (%s); using grid_sample.", e)
        return None, f"failed its check ({e}): grid_sample"
    if fused is None:
        logger.warning(
            "The compiled DCN sampler (fiber_det._C) does not match grid_sample bit for bit on "
            "this machine; the DCN uses grid_sample. Rebuild it with `make install`."
        )
        return None, "built, but differs from grid_sample here: grid_sample"
    empty = torch.empty(0)

    def sample(image: Tensor, grid: Tensor, mask: Optional[Tensor]) -> Tensor:
        return _C.sample_columns(image, grid, mask if mask is not None else empty, fused)

    kind = "fused multiply-adds" if fused else "separate multiply and add"
    return sample, f"compiled ({kind}, bitwise equal to grid_sample)"


def compiled_sampler() -> Optional[Sampler]:
    """The compiled sampler, or None where it is off, not built, or not exact.

    ``sample(image, grid, mask)``: image (H, W, C) contiguous float32 (one channels-last image,
    permuted); grid (P, 2) contiguous float32, normalised (x, y) as grid_sample takes them,
    align_corners=True; mask (P,) contiguous float32 or None. Returns (C, P): the bilinear
    samples (zero outside the image), times the mask.
    """
    global _STATE
    if _STATE is None:
        _STATE = _load()
        logger.debug("DCN sampler: %s", _STATE[1])
    return _STATE[0]


def compiled_sampler_status() -> str:
    """One line saying which sampler the CPU DCN uses in this process, and why."""
    compiled_sampler()
    assert _STATE is not None
    return _STATE[1]


#: ATen's vectorised grid_sample gathers with int32 offsets; past this, it switches to a scalar
#: fallback with other arithmetic, which the compiled sampler does not reproduce.
_MAX_GATHER_OFFSET = 2**31 - 1


def _within_gather_range(c: int, h: int, w: int) -> bool:
    """Whether ATen's vectorised grid_sample serves a channels-last (C, H, W) image."""
    return (h - 1) * w * c + (w - 1) * c <= _MAX_GATHER_OFFSET


def sampler_applies(x: Tensor, *others: Tensor) -> bool:
    """Whether the compiled sampler may serve a DCN on ``x`` (B, C, H, W) with ``others`` (its
    grid, mask): plain eager CPU float32 tensors, ``x`` channels last, no gradient wanted
    through the sampling (the compiled op has none; :mod:`.deform_conv` calls it in inference
    only), and offsets within ATen's vectorised kernel's range.

    Tracing, ONNX export and ``torch.compile`` keep grid_sample, a standard op they understand.
    """
    tensors = (x, *others)
    if any(type(t) is not Tensor or t.device.type != "cpu" for t in tensors):
        return False  # tensor subclasses (FakeTensor, ...) and other devices
    if any(t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # e.g. backward(create_graph=True): grid_sample keeps the graph
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if not _within_gather_range(*x.shape[1:]):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return _SUSPENDED == 0 and compiled_sampler() is not None


@contextmanager
def grid_sample_only() -> Iterator[None]:
    """Keep the DCN on grid_sample inside the block (the baseline of tools/benchmark.py)."""
    global _SUSPENDED
    _SUSPENDED += 1
    try:
        yield
    finally:
        _SUSPENDED -= 1


def _reset() -> None:
    """Forget the decision (tests that change the environment switch)."""
    global _STATE
    _STATE = None
