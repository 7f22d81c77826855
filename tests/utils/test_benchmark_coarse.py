"""Coarse-model benchmark rows (fiber_det/utils/benchmark_coarse.py, tools/benchmark.py --coarse):
FLOP counts that add up, the whole-set formula, cached ITM equal to the full forward."""

import json

import pytest
import torch

from fiber_det.utils.benchmark_coarse import build_coarse_model, coarse_flops, whole_set_ratio
from tests.paths import load_tool

TINY = "tiny/coarse_tiny.yaml"


def test_flops_of_the_parts_add_up_to_the_full_pair():
    flops = coarse_flops(build_coarse_model(TINY, torch.device("cpu")))
    parts = flops["image_prefusion"] + flops["text_prefusion"] + flops["itm_tail"]
    assert flops["itm_full"] == pytest.approx(parts, rel=1e-6)  # traced separately
    assert flops["itc_image"] > flops["image_prefusion"] > 0  # ITC runs every block
    assert flops["itc_text"] > flops["text_prefusion"] > 0
    assert flops["itm_tail"] > 0


def test_whole_set_ratio_formula():
    f = {"itm_full": 10.0, "itm_tail": 2.0, "image_prefusion": 6.0, "text_prefusion": 2.0}
    # per pair over 3 images x 4 texts: 2 + 6 / 4 + 2 / 3
    assert whole_set_ratio(f, 3, 4) == pytest.approx(10.0 / (2 + 1.5 + 2 / 3))


def test_benchmark_tool_coarse_rows(tmp_path, capsys):
    out = tmp_path / "coarse.json"
    argv = ["--coarse", TINY, "--repeats", "1", "--pairs", "3", "--output", str(out)]
    assert load_tool("benchmark").main(argv) == 0
    (res,) = json.loads(out.read_text())["coarse"]
    names = [r["name"] for r in res["rows"]]
    assert names == ["ITC image encoding", "ITC text encoding", "ITM full forward", "ITM cached"]
    assert all(r["median_s"] > 0 for r in res["rows"])
    assert res["rows"][2]["items"] == 3 and res["itm_max_abs_diff"] < 1e-5
    assert res["flickr_flop_ratio"] > 1
    printed = capsys.readouterr().out
    assert "| ITM cached | 3 |" in printed and "Flickr30k test" in printed
