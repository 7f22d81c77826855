"""Swin blocks on maps padded to whole windows: qkv is projected before or after the window
gather (``swin._project_before_gather``), the output projection after the windows are undone.
Both orders give the same values as projecting every padded slot, bit for bit; the FLOP count
follows the order that runs."""

import pytest
import torch
from torch import nn

from fiber_det.modeling.backbone import swin
from fiber_det.modeling.backbone.swin import SwinBlock, window_gather_index
from fiber_det.utils.flops import count_flops

from .test_backbone import _reference_windows
from .test_swin_recompute import _shift_mask

NEVER, ALWAYS = 10**9, 0  # PROJECT_FIRST_MIN: gather first / project first wherever padded


def _block(shift, recompute=False, dim=32, qkv_bias=True):
    torch.manual_seed(0)
    block = SwinBlock(dim, dim // 16, 7, shift, recompute=recompute, qkv_bias=qkv_bias)
    with torch.no_grad():  # biases far from zero, so that a padding slot without one shows
        if qkv_bias:
            block.attn.qkv.bias.normal_(0, 1)
        block.attn.proj.bias.normal_(0, 1)
    return block


def _reference_attention(block, x, hw, mask):
    """Attention output of Swin's own ops: norm1, zero padding, roll, partition, qkv of every
    slot, attention, output projection of every slot, then the windows undone and cropped."""
    h, w = hw
    b, _, c = x.shape
    ws, shift = block.window_size, block.effective_shift(hw)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    windows = _reference_windows(block.norm1(x), h, w, ws, shift).view(b, -1, ws * ws, c)
    out = block.attn.proj(block.attn(block.attn.qkv(windows), mask if shift else None))
    out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, hp, wp, c)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :h, :w].reshape(b, h * w, c)


class _OneBlock(nn.Module):
    def __init__(self, block, hw):
        super().__init__()
        self.block, self.hw = block, hw
        self.mask = _shift_mask(block, *hw)

    def forward(self, x):
        return self.block(x, self.hw, self.mask)


@pytest.mark.parametrize("order", [NEVER, ALWAYS])
@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize(
    "hw,dim,batch,qkv_bias",
    [
        ((17, 22), 32, 2, True),  # padded right and bottom
        ((7, 9), 32, 2, True),
        ((3, 3), 32, 2, True),  # smaller than one window
        ((14, 14), 32, 2, True),  # no padding
        ((9, 7), 256, 2, True),  # bottom only, wide enough for the bias order to show
        ((10, 14), 256, 3, True),
        ((17, 22), 256, 1, True),
        ((17, 22), 32, 2, False),  # no qkv bias: zeros at the padding slots
    ],
)
def test_both_orders_give_swins_padded_attention_bit_for_bit(
    monkeypatch, order, shift, hw, dim, batch, qkv_bias
):
    monkeypatch.setattr(swin, "PROJECT_FIRST_MIN", order)
    block = _block(shift, dim=dim, qkv_bias=qkv_bias).eval()
    x = torch.randn(batch, hw[0] * hw[1], dim, generator=torch.Generator().manual_seed(1))
    mask = _shift_mask(block, *hw)
    with torch.no_grad():
        expected = x + _reference_attention(block, x, hw, mask)
        expected = expected + block.mlp(expected, block.norm2)
        eager = block(x, hw, mask)
        traced = torch.jit.trace(_OneBlock(block, hw), (x,), check_trace=False)(x)
    assert torch.equal(eager, expected)
    assert torch.equal(traced, expected)  # the ONNX export's pad / roll / partition ops


@pytest.mark.parametrize("shift", [0, 3])
def test_both_orders_train_alike_and_recompute_changes_no_bit(monkeypatch, shift):
    """Outputs and input gradients are the same numbers in both orders; qkv's bias gradient is
    summed over the padding slots apart when projecting first (same value up to rounding).
    Within each order the recomputing block matches the plain one bit for bit."""
    hw = (17, 22)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, hw[0] * hw[1], 32, generator=g)
    grad = torch.randn(2, hw[0] * hw[1], 32, generator=g)
    results = {}
    for order in (NEVER, ALWAYS):
        monkeypatch.setattr(swin, "PROJECT_FIRST_MIN", order)
        for recompute in (False, True):
            block = _block(shift, recompute).train()
            xi = x.clone().requires_grad_()
            index = window_gather_index(*hw, 7, block.effective_shift(hw), x.device)
            out = block(xi, hw, _shift_mask(block, *hw), window_index=index)
            out.backward(grad)
            grads = {n: p.grad for n, p in block.named_parameters()}
            results[order, recompute] = (out.detach(), xi.grad, grads)
    for order in (NEVER, ALWAYS):
        plain, fast = results[order, False], results[order, True]
        assert torch.equal(plain[0], fast[0]) and torch.equal(plain[1], fast[1])
        assert all(torch.equal(plain[2][n], fast[2][n]) for n in plain[2])
    first, last = results[NEVER, False], results[ALWAYS, False]
    assert torch.equal(first[0], last[0])
    assert torch.equal(first[1], last[1])
    for name in first[2]:  # float32 sums over ~750 rows in another order
        a, b = first[2][name], last[2][name]
        scale = a.abs().max().item()
        torch.testing.assert_close(
            a, b, rtol=0, atol=1e-6 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert first[2]["attn.qkv.bias"].abs().sum() > 0


@pytest.mark.parametrize("order", [NEVER, ALWAYS])
def test_flop_count_follows_the_order_that_runs(monkeypatch, order):
    monkeypatch.setattr(swin, "PROJECT_FIRST_MIN", order)
    h, w, c = 17, 22, 32
    block = _block(3).eval()
    counts = count_flops(_OneBlock(block, (h, w)), (torch.randn(1, h * w, c),)).by_module()
    slots = 21 * 28  # padded to whole 7 x 7 windows
    assert counts["block.attn.qkv"] == (h * w if order == ALWAYS else slots) * 3 * c * c
    assert counts["block.attn.proj"] == h * w * c * c


def test_the_default_projects_first_where_the_padding_costs():
    """FIBER-B at 512x512 (window 12): stage 1 (128^2 tokens, 6% padding, C=128) gathers first,
    stages 2-4 project first; unpadded maps always gather first."""
    assert not swin._project_before_gather(128, 132 * 132, 132 * 132 - 128 * 128)
    for side, c in ((64, 256), (32, 512), (16, 1024)):
        slots = (-(-side // 12) * 12) ** 2
        assert swin._project_before_gather(c, slots, slots - side * side)
    assert not swin._project_before_gather(1024, 144, 0)
