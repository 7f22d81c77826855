"""WindowAttention keeps its relative position bias between inference calls, never stale."""

import copy
import io
import pickle

import torch

from fiber_det.modeling.backbone.swin import WindowAttention


def _fresh(attn):
    """The bias gathered from the table now (Swin's own gather and layout)."""
    n = attn.window_size**2
    table = attn.relative_position_bias_table.detach()
    bias = table[attn.relative_position_index.view(-1)].view(n, n, -1)
    return bias.permute(2, 0, 1)


def _attn():
    torch.manual_seed(0)
    return WindowAttention(32, 4, 2)


def test_inference_reuses_the_bias_and_it_equals_a_fresh_gather():
    attn = _attn()
    with torch.no_grad():
        a, b = attn.relative_bias(), attn.relative_bias()
    assert a is b
    assert torch.equal(a, _fresh(attn))
    with torch.inference_mode():
        c = attn.relative_bias()
        assert attn.relative_bias() is c and torch.equal(c, _fresh(attn))


def test_a_changed_table_is_seen_at_once():
    attn = _attn()
    with torch.no_grad():
        before = attn.relative_bias().clone()
        attn.relative_position_bias_table.mul_(2.0)  # in place, as an optimizer step does
        assert torch.equal(attn.relative_bias(), _fresh(attn))
        assert not torch.equal(attn.relative_bias(), before)
    state = {k: v * 3 for k, v in attn.state_dict().items()}
    attn.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(attn.relative_bias(), _fresh(attn))
    attn.relative_position_bias_table = torch.nn.Parameter(torch.randn(49, 2))  # a new tensor
    with torch.no_grad():
        assert torch.equal(attn.relative_bias(), _fresh(attn))
    attn.relative_position_bias_table.data = torch.randn(49, 2)  # new storage, same tensor
    with torch.no_grad():
        assert torch.equal(attn.relative_bias(), _fresh(attn))
    attn.relative_position_bias_table.data.copy_(torch.randn(49, 2))  # bumps no version
    with torch.no_grad():
        assert torch.equal(attn.relative_bias(), _fresh(attn))
    attn.double()
    with torch.no_grad():
        got = attn.relative_bias()
    assert got.dtype == torch.float64 and torch.equal(got, _fresh(attn))


def test_a_round_trip_through_another_dtype_is_seen():
    """half() then float() gives the table new storage (rounded values) with the same version
    counter, possibly at the address of the first: the bias follows the rounded table."""
    attn = _attn()
    with torch.no_grad():
        attn.relative_position_bias_table.add_(1 / 3)  # values that half precision rounds
        attn.relative_bias()
        attn.half().float()
        assert torch.equal(attn.relative_bias(), _fresh(attn))


def test_compilation_and_tracing_gather_anew(monkeypatch):
    attn = _attn()
    with torch.no_grad():
        held = attn.relative_bias()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert attn.relative_bias() is not held
        monkeypatch.undo()
        assert attn.relative_bias() is held


def test_training_gets_a_bias_with_its_gradient():
    attn = _attn()
    with torch.no_grad():
        held = attn.relative_bias()
    bias = attn.relative_bias()
    assert bias is not held and bias.requires_grad
    bias.sum().backward()
    assert attn.relative_position_bias_table.grad is not None


def test_a_model_with_a_kept_bias_still_copies_and_pickles():
    attn = _attn()
    with torch.no_grad():
        attn.relative_bias()
    twin = copy.deepcopy(attn)
    twin.relative_position_bias_table.data.copy_(torch.randn(49, 2))
    with torch.no_grad():
        assert torch.equal(twin.relative_bias(), _fresh(twin))
        assert torch.equal(attn.relative_bias(), _fresh(attn))
        assert not torch.equal(twin.relative_bias(), attn.relative_bias())
    back = pickle.loads(pickle.dumps(attn))
    buf = io.BytesIO()
    torch.save(attn, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # our own object, just written
    with torch.no_grad():
        assert torch.equal(back.relative_bias(), _fresh(attn))
        assert torch.equal(loaded.relative_bias(), _fresh(attn))
