"""MODEL.SWIN.RECOMPUTE_ACTIVATIONS: the GELU output and (CPU) the window attention are
recomputed in the backward pass; outputs and gradients are the same numbers, less is kept."""

import pytest
import torch
from detectron2.modeling import build_backbone

from fiber_det.modeling.backbone.swin import Mlp, SwinBlock, SwinStage, window_gather_index
from fiber_det.utils.testing import get_tiny_config

from .test_backbone import _open_gates, _text


def _grads(module, *inputs):
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone() for x in inputs]


def _run_block(block, x, hw, mask, grad):
    xi = x.clone().requires_grad_()
    index = window_gather_index(*hw, block.window_size, block.effective_shift(hw), x.device)
    out = block(xi, hw, mask, window_index=index)
    out.backward(grad)
    return out.detach(), _grads(block, xi)


def _pair(shift):
    torch.manual_seed(0)
    plain = SwinBlock(32, 2, 7, shift).train()
    fast = SwinBlock(32, 2, 7, shift, recompute=True).train()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _shift_mask(block, h, w):
    """The stage's additive mask of shifted windows (SwinStage.shift_mask)."""
    return SwinStage([block], None).shift_mask((h, w), torch.device("cpu"))


@pytest.mark.parametrize("shift", [0, 3])
def test_recomputed_block_gives_the_same_output_and_gradients(shift):
    """Bit for bit: the recomputation runs the same ops on the same inputs (odd map size, so
    windows are padded)."""
    h, w = 17, 22
    plain, fast = _pair(shift)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, h * w, 32, generator=g)
    grad = torch.randn(2, h * w, 32, generator=g)
    mask = _shift_mask(plain, h, w) if shift else None
    out_a, grads_a = _run_block(plain, x, (h, w), mask, grad)
    out_b, grads_b = _run_block(fast, x, (h, w), mask, grad)
    assert torch.equal(out_a, out_b)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


def _saved_storage_numels(fn):
    """Element counts of the storages autograd keeps for the backward pass during ``fn()``
    (each storage once, however many views of it are saved), parameters left out."""
    storages = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return list(storages.values())


def test_recompute_keeps_no_attention_matrix_gelu_output_or_normalised_tokens():
    h, w, ws, heads, dim = 14, 14, 7, 2, 32  # whole windows: the windows have the tokens' size
    attention = (h // ws) * (w // ws) * heads * (ws * ws) ** 2  # one image's nW nH N N
    tokens = 2 * h * w * dim  # a (B, H*W, C) activation
    hidden = 4 * tokens  # the MLP's (B, H*W, 4C) activations
    blocks = _pair(3)
    mask = _shift_mask(blocks[0], h, w)
    x = torch.randn(2, h * w, dim)
    counts = {}
    index = window_gather_index(h, w, ws, 3, x.device)
    for block, name in zip(blocks, ("plain", "recompute")):

        def forward(block=block):
            return block(x.clone().requires_grad_(), (h, w), mask, window_index=index)

        saved = _saved_storage_numels(forward)
        counts[name] = tuple(sum(n == size for n in saved) for size in (attention, hidden, tokens))
    plain_attention, plain_hidden, plain_tokens = counts["plain"]
    assert plain_attention >= 1
    assert plain_hidden == 2  # GELU input and output
    # norm1 input, normalised windows, attention output, norm2 input, norm2 output
    assert plain_tokens == 5
    # only the GELU input; norm1 input, attention output, norm2 input
    assert counts["recompute"] == (0, 1, 3)


def test_mlp_falls_back_to_plain_ops_with_dropout_or_autocast():
    """With dropout in training (or autocast) the MLP runs its modules: same RNG use, same
    output as the plain MLP."""
    torch.manual_seed(0)
    plain, fast = Mlp(16, 64, drop=0.3).train(), Mlp(16, 64, drop=0.3, recompute=True).train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 10, 16, requires_grad=True)
    torch.manual_seed(5)
    a = plain(x)
    torch.manual_seed(5)
    b = fast(x)
    assert torch.equal(a, b) and (a == 0).any()  # dropout applied in both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.eval()(x).dtype == torch.bfloat16


def test_backbone_gradients_do_not_depend_on_the_option(tokenizer_dir):
    """The tiny FIBER backbone (fused blocks, padded windows), one training step: every gradient
    is the same with and without MODEL.SWIN.RECOMPUTE_ACTIVATIONS."""
    results = []
    for recompute in (False, True):
        cfg = get_tiny_config(tokenizer_dir, ["MODEL.SWIN.RECOMPUTE_ACTIVATIONS", recompute])
        torch.manual_seed(0)
        bb = build_backbone(cfg).train()
        _open_gates(bb)
        ids, mask = _text()
        images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(2))
        feats, text = bb(images, ids, mask)
        loss = sum((f * f).mean() for f in feats.values()) + (text.hidden**2).mean()
        loss.backward()
        results.append({n: p.grad for n, p in bb.named_parameters() if p.grad is not None})
    assert results[0].keys() == results[1].keys() and len(results[0]) > 50
    different = [n for n in results[0] if not torch.equal(results[0][n], results[1][n])]
    assert not different


def _peak_live_hidden_buffers(fn, numel):
    """Most (tokens, 4C)-sized tensors created inside ``fn()`` alive at one time."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen, self.live, self.peak = set(), 0, 0

        def _gone(self):
            self.live -= 1

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.numel() == numel:
                    st = t.untyped_storage()
                    if st.data_ptr() not in self.seen:
                        self.seen.add(st.data_ptr())
                        self.live += 1
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(st, self._gone)
            return out

    with Live() as mode:
        fn()
    return mode.peak


def test_mlp_backward_holds_one_hidden_sized_temporary_at_a_time():
    """The recomputing MLP's backward pass computes the weight's gradient before the input's and
    writes the GELU's gradient over the incoming one: one (tokens, 4C) temporary alive at a time
    (the peak of a CPU training step is in stage 1's MLP backward)."""
    torch.manual_seed(0)
    mlp = Mlp(16, 64, recompute=True).train()
    x = torch.randn(2, 50, 16, requires_grad=True)
    out = mlp(x)
    grad = torch.randn_like(out)
    assert _peak_live_hidden_buffers(lambda: out.backward(grad), 2 * 50 * 64) == 1
