"""FLOP rules (1 FLOP = 1 multiply-add), component counts, and the benchmark tool."""

import importlib.util
import json

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from fiber_det.modeling.head.dyhead import ModulatedDeformConv3x3
from fiber_det.utils.flops import component_flops, count_flops, multi_prompt_flop_bound
from fiber_det.utils.testing import REPO_ROOT


class _SDPA(nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_sdpa_rule():
    q, k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 4)
    # Q K^T: 2 heads x 10 x 12 x 8 MACs; attn @ V: 2 x 10 x 12 x 4 MACs
    assert count_flops(_SDPA(), (q, k, v)).total() == 2 * 10 * 12 * 8 + 2 * 10 * 12 * 4


def test_deform_conv_rule_counts_like_a_dense_conv():
    m = ModulatedDeformConv3x3(4, stride=2, gn_groups=0, impl="torchvision")
    x, off, mask = torch.randn(1, 4, 6, 6), torch.zeros(1, 18, 3, 3), torch.ones(1, 9, 3, 3)
    # output 4 channels x 3 x 3, each 4 input channels x 9 taps
    assert count_flops(m, (x, off, mask)).total() == 4 * 3 * 3 * 4 * 9


def test_vector_matmul_rule():
    class M(nn.Module):
        def forward(self, a, b):
            return a @ b

    assert count_flops(M(), (torch.randn(2, 5, 7), torch.randn(7))).total() == 2 * 5 * 7


def test_component_counts_scale_as_expected(tiny_cfg):
    model = build_model(tiny_cfg)
    small = component_flops(model, (64, 64), 32)
    big = component_flops(model, (128, 128), 32)
    assert small["total"] == pytest.approx(sum(v for k, v in small.items() if k != "total"))
    # window attention and convolutions are linear in the number of pixels
    for part in ("image_prefusion", "fpn", "head"):
        assert big[part] / small[part] == pytest.approx(4.0, rel=0.1), part
    assert big["text_prefusion"] == pytest.approx(small["text_prefusion"])  # no image inside
    assert small["fused_image"] > 0 and small["fused_text"] > 0
    longer = component_flops(model, (64, 64), 64)
    assert longer["text_prefusion"] > 1.9 * small["text_prefusion"]


def test_flop_bound_formula():
    f = {
        "image_prefusion": 6.0,
        "text_prefusion": 2.0,
        "fused_image": 1.0,
        "fused_text": 0.5,
        "fpn": 0.25,
        "head": 0.25,
        "total": 10.0,
    }
    # naive 10 P; cached 6 + 2 P (text cached) or 6 + 4 P
    assert multi_prompt_flop_bound(f, 3) == pytest.approx(30 / 12)
    assert multi_prompt_flop_bound(f, 3, text_cached=False) == pytest.approx(30 / 18)


def test_benchmark_tool_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "tools/benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "b.json"
    assert tool.main(["--quick", "--skip-options", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert all(v["identical"] for v in res["inference"]["identity"].values())
    cached = [r for r in res["inference"]["rows"] if r["path"] == "cached" and r["prompts"] == 3]
    assert cached and cached[0]["flop_bound"] > 1.0
    assert "| path | prompts |" in capsys.readouterr().out


def test_atomic_writes_get_the_usual_permissions_and_leave_nothing_behind(tmp_path):
    import os
    import stat

    from fiber_det.utils.io import atomic_torch_save, atomic_write_json

    mask = os.umask(0o022)
    try:
        atomic_write_json({"a": 1}, tmp_path / "r.json")
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "m.pth")
    finally:
        os.umask(mask)
    for name in ("r.json", "m.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    with pytest.raises(RuntimeError):
        with __import__("fiber_det.utils.io", fromlist=["atomic_open"]).atomic_open(
            tmp_path / "r.json", "w"
        ) as f:
            f.write("partial")
            raise RuntimeError("crash while writing")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "r.json"]
