"""The compiled DCN sampler (fiber_det._C): bitwise grid_sample, chosen by a check, optional."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fiber_det.modeling.head import dcn_sampler
from fiber_det.modeling.head.deform_conv import deform_conv3x3_grid_sample

#: .ci/run sets it: there the extension must have been built (a user without a compiler may
#: run the tests without it, everything then runs on grid_sample)
REQUIRED = os.environ.get("FIBER_DET_REQUIRE_EXT") == "1"


def _ext():
    try:
        from fiber_det import _C
    except ImportError:
        return None
    return _C


needs_ext = pytest.mark.skipif(_ext() is None, reason="fiber_det._C not built")


@pytest.fixture
def fresh_state(monkeypatch):
    """The sampler decided anew for the test's environment, and again afterwards."""
    monkeypatch.delenv(dcn_sampler.ENV_VAR, raising=False)
    dcn_sampler._reset()
    yield
    dcn_sampler._reset()


def test_make_install_builds_the_extension(fresh_state):
    # dev/install_env.sh (make install, hence CI) builds it: without it every test below would
    # be skipped and the fast path would go untested
    if not REQUIRED:
        pytest.skip("FIBER_DET_REQUIRE_EXT=1 (set by .ci/run) makes the extension required")
    assert _ext() is not None, "fiber_det._C is missing: run `make install`"
    assert dcn_sampler.compiled_sampler() is not None, dcn_sampler.compiled_sampler_status()


def _reference(x, grid, mask):
    s = F.grid_sample(
        x, grid.view(1, -1, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    ).view(x.shape[1], -1)
    return s * mask if mask is not None else s


def _bits(t):
    return t.contiguous().view(torch.int32)


@needs_ext
@pytest.mark.parametrize(
    "c,h,w,points,spread",
    [
        (256, 25, 38, 3000, 1.1),  # a DyHead level, points around the borders
        (64, 7, 5, 500, 3.0),  # mostly outside
        (3, 1, 9, 200, 1.5),  # one row: the y scale is 0
        (1, 6, 1, 200, 1.5),  # one column, one channel
        (33, 40, 40, 20, 1e6),  # far away
    ],
)
def test_samples_are_bitwise_grid_sample(fresh_state, c, h, w, points, spread):
    sample = dcn_sampler.compiled_sampler()
    assert sample is not None, dcn_sampler.compiled_sampler_status()
    gen = torch.Generator().manual_seed(c * 1000 + h)
    x = torch.randn(1, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    grid = (torch.rand(points, 2, generator=gen) * 2 - 1) * spread
    grid[:5] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]])
    mask = torch.rand(points, generator=gen)
    image = x[0].permute(1, 2, 0)
    for m in (mask, None):
        got = sample(image, grid, m)
        want = _reference(x, grid, m)
        assert got.shape == (c, points)
        assert torch.equal(_bits(got), _bits(want)), (got - want).abs().max()


@needs_ext
@pytest.mark.parametrize("stride", [1, 2])
def test_dcn_forward_and_backward_identical_with_and_without_sampler(fresh_state, stride):
    def run():
        torch.manual_seed(1)
        x = torch.randn(2, 24, 23, 31, requires_grad=True)
        ho, wo = (23 - 1) // stride + 1, (31 - 1) // stride + 1
        off = (torch.randn(2, 18, ho, wo) * 3).requires_grad_()
        m = torch.rand(2, 9, ho, wo, requires_grad=True)
        w = torch.randn(16, 24, 3, 3, requires_grad=True)
        b = torch.randn(16, requires_grad=True)
        # several row bands per image, and a last band of other height
        y = deform_conv3x3_grid_sample(x, off, m, w, b, stride, tile_elements=24 * 9 * wo * 5)
        y.pow(2).sum().backward()
        with torch.no_grad():
            y2 = deform_conv3x3_grid_sample(x, off, m, w, b, stride)
        return [y, y2, x.grad, off.grad, m.grad, w.grad, b.grad]

    probe = torch.zeros(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert dcn_sampler.sampler_applies(probe)  # else this test would compare grid_sample twice
    fast = run()
    with dcn_sampler.grid_sample_only():
        assert not dcn_sampler.sampler_applies(probe)
        slow = run()
    for a, b in zip(fast, slow):
        assert torch.equal(_bits(a), _bits(b))


@needs_ext
def test_sampler_serves_the_dcn(fresh_state, monkeypatch):
    calls = []
    real = dcn_sampler.compiled_sampler()

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dcn_sampler, "_STATE", (counting, "counting"))
    x = torch.randn(1, 8, 9, 9)
    w = torch.randn(4, 8, 3, 3, requires_grad=True)
    args = (x, torch.zeros(1, 18, 9, 9), torch.ones(1, 9, 9, 9), w, torch.zeros(4), 1)
    with torch.no_grad():
        deform_conv3x3_grid_sample(*args)
    assert calls  # inference
    calls.clear()
    deform_conv3x3_grid_sample(*args).sum().backward()
    assert not calls  # training keeps grid_sample, forward and backward


def _cl(*shape, **kw):
    return torch.zeros(*shape, **kw).contiguous(memory_format=torch.channels_last)


def test_switched_off_by_environment(fresh_state, monkeypatch):
    monkeypatch.setenv(dcn_sampler.ENV_VAR, "0")
    dcn_sampler._reset()
    assert dcn_sampler.compiled_sampler() is None
    assert "FIBER_DET_DCN_KERNEL=0" in dcn_sampler.compiled_sampler_status()
    assert not dcn_sampler.sampler_applies(_cl(1, 2, 3, 3))


@needs_ext
def test_not_used_where_grid_sample_must_serve(fresh_state):
    x, grid = _cl(1, 2, 3, 3), torch.zeros(1, 9, 3, 3, 2)
    assert dcn_sampler.sampler_applies(x, grid)
    assert not dcn_sampler.sampler_applies(torch.zeros(1, 2, 3, 3))  # not channels last
    assert not dcn_sampler.sampler_applies(_cl(1, 2, 3, 3, dtype=torch.float64))
    assert not dcn_sampler.sampler_applies(x, grid.double())
    assert not dcn_sampler.sampler_applies(x, grid.requires_grad_())  # a graph is wanted
    with torch.no_grad():
        assert dcn_sampler.sampler_applies(x, grid)
    # past int32 gather offsets ATen's grid_sample switches to other arithmetic
    assert dcn_sampler._within_gather_range(256, 200, 304)
    assert not dcn_sampler._within_gather_range(64, 6000, 6000)

    seen = []

    def f(x):
        seen.append(dcn_sampler.sampler_applies(x))
        return x + 1

    torch.jit.trace(f, torch.zeros(1, 2, 3, 3), check_trace=False)
    assert seen == [False]


class _OffByOne:
    """An extension whose samples are one ulp off somewhere: the check must refuse it."""

    def __init__(self, ext, fused_ok):
        self.ext, self.fused_ok = ext, fused_ok

    def sample_columns(self, image, grid, mask, fused):
        out = self.ext.sample_columns(image, grid, mask, fused)
        if fused != self.fused_ok:
            return out
        bits = out.view(torch.int32).clone()
        bits[3, 7] += 1
        return bits.view(torch.float32)


@needs_ext
def test_a_sampler_that_differs_from_grid_sample_is_refused():
    ext = _ext()
    right = dcn_sampler._choose_variant(ext)
    assert right is not None
    # the variant that matched now differs by one ulp in one value: neither is accepted
    assert dcn_sampler._choose_variant(_OffByOne(ext, fused_ok=right)) is None


@needs_ext
def test_double_backward_keeps_the_graph(fresh_state):
    # create_graph=True runs the backward with gradients on: the recomputed columns must stay on
    # grid_sample there, so that second-order gradients match those without the sampler
    def run():
        torch.manual_seed(3)
        x = torch.randn(1, 6, 7, 8, requires_grad=True)
        off = (torch.randn(1, 18, 7, 8) * 2).requires_grad_()
        m = torch.rand(1, 9, 7, 8, requires_grad=True)
        w = torch.randn(5, 6, 3, 3, requires_grad=True)
        y = deform_conv3x3_grid_sample(x, off, m, w, torch.zeros(5), 1)
        (gw,) = torch.autograd.grad(y.pow(2).sum(), w, create_graph=True)
        return torch.autograd.grad(gw.pow(2).sum(), (x, off, m))

    fast = run()
    with dcn_sampler.grid_sample_only():
        slow = run()
    for a, b in zip(fast, slow):
        assert a.abs().sum() > 0
        assert torch.equal(_bits(a), _bits(b))


def test_a_failing_or_foreign_build_falls_back(fresh_state, monkeypatch):
    class Broken:
        torch_version = torch.__version__.split("+")[0]

        def sample_columns(self, *args):
            raise RuntimeError("undefined symbol")

    class Foreign(Broken):
        torch_version = "1.0.0"

    import fiber_det

    for fake, words in ((Broken(), "failed its check"), (Foreign(), "built for torch 1.0.0")):
        monkeypatch.setitem(sys.modules, "fiber_det._C", fake)
        monkeypatch.setattr(fiber_det, "_C", fake, raising=False)
        dcn_sampler._reset()
        assert dcn_sampler.compiled_sampler() is None
        assert words in dcn_sampler.compiled_sampler_status()


def test_both_variants_match_their_grid_sample(tmp_path):
    # ATen's default (non-FMA) kernels and its AVX2 ones round differently; the check picks the
    # matching variant for each, in a fresh process per CPU capability
    if _ext() is None:
        pytest.skip("fiber_det._C not built")
    code = (
        "import torch; from fiber_det.modeling.head import dcn_sampler as d; "
        "print(torch.backends.cpu.get_cpu_capability(), '|', d.compiled_sampler_status())"
    )
    seen = {}
    for cap in ("default", "avx2", "avx512"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        env.pop(dcn_sampler.ENV_VAR, None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        got_cap, status = out.split(" | ")
        seen[got_cap] = status
    assert "separate multiply and add" in seen["DEFAULT"]
    for vector in ("AVX2", "AVX512"):  # a CPU without them stays on lower kernels
        if vector in seen:
            assert "fused multiply-adds" in seen[vector]
    assert all("bitwise equal" in s for s in seen.values())


@needs_ext
def test_bad_arguments_are_refused():
    ext = _ext()
    x = torch.zeros(4, 5, 3)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ext.sample_columns(x.double(), torch.zeros(2, 2), torch.empty(0), True)
    with pytest.raises(RuntimeError, match="grid"):
        ext.sample_columns(x, torch.zeros(2, 3), torch.empty(0), True)
    with pytest.raises(RuntimeError, match="mask"):
        ext.sample_columns(x, torch.zeros(2, 2), torch.zeros(3), True)
    with pytest.raises(RuntimeError, match="mask"):
        ext.sample_columns(x, torch.zeros(2, 2), torch.zeros(1, 2), True)
