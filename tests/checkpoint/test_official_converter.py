"""Official checkpoint conversion: every key mapped or dropped for a reason, errors otherwise."""

import json
import re

import pytest
import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import (
    CheckpointError,
    FIBERCheckpointer,
    convert_official_state_dict,
    detect_fusion_version,
)
from fiber_det.utils.testing import get_config
from tests.paths import load_tool, parity_dir

KEYS = {v: parity_dir() / f"official_keys_{v}.json" for v in ("v2", "v3")}
pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in KEYS.values()), reason="official key lists not found"
)


def _spec(variant):
    with open(KEYS[variant]) as f:
        return json.load(f)


def _fake_official(variant, prefix=""):
    """Official keys with tiny placeholder tensors (conversion does not look at values)."""
    return {prefix + k: torch.zeros(1) for k in _spec(variant)}


@pytest.fixture(scope="module")
def fiber_b_shapes():
    model = build_model(get_config("fiber_b/official_parity_v2.yaml"))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_every_official_key_is_converted_or_dropped_for_a_reason(variant):
    spec = _spec(variant)
    out, report = convert_official_state_dict(_fake_official(variant))
    assert report.variant == variant
    dropped = sum(len(v) for v in report.dropped.values())
    assert len(out) + dropped == len(spec)
    # counts by component, recomputed here from the official key names
    body = [k for k in spec if k.startswith("fusion_backbone.backbone.body.")]
    body_params = [k for k in body if not k.endswith("relative_position_index")]
    text = [
        k
        for k in spec
        if k.startswith("fusion_backbone.language_backbone.") and not k.endswith("position_ids")
    ]
    head = [k for k in spec if k.startswith("rpn.head.") and ".cls_logits." not in k]
    assert sum(v for c, v in report.converted.items() if c.startswith("swin")) == len(body_params)
    assert report.converted["swin (i2t fusion)"] == len([k for k in body if "_i2t" in k])
    assert sum(v for c, v in report.converted.items() if c.startswith("roberta")) == len(text)
    assert report.converted["roberta (t2i fusion)"] == len([k for k in text if "_t2i" in k])
    assert report.converted["head"] == len(head)
    assert report.converted["fpn"] == len([k for k in spec if ".backbone.fpn." in k])


def test_converted_names_and_shapes_are_exactly_the_models(fiber_b_shapes):
    spec = _spec("v2")
    sd = {k: torch.empty(s) for k, s in spec.items()}
    out, report = convert_official_state_dict(sd, "v2", fiber_b_shapes)
    assert report.missing == {}
    assert set(out) == set(fiber_b_shapes)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "optimizer": {}, "iteration": 3},
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["raw", "model", "state_dict", "ddp"],
)
def test_containers_and_ddp_prefix(wrap):
    out, report = convert_official_state_dict(wrap(_fake_official("v3")))
    assert report.variant == "v3"
    assert "backbone.body.layers.3.blocks.1.attn.norm_i2t_i.weight" in out
    assert "head.tower.5.convs.2.norm.bias" in out  # dyhead_tower.5.DyConv.2.bn.bias


def test_fpn_and_head_renames():
    out, _ = convert_official_state_dict(_fake_official("v2"))
    assert "backbone.fpn.lateral_convs.0.weight" in out  # fpn_inner2 (stride 8)
    assert "backbone.fpn.output_convs.2.bias" in out  # fpn_layer4 (stride 32)
    assert {"backbone.fpn.p6.weight", "backbone.fpn.p7.bias"} <= set(out)
    assert {"head.text_proj.weight", "head.log_scale", "head.bias0", "head.bias_lang"} <= set(out)
    assert not any("cls_logits" in k for k in out)


def test_mixed_ddp_prefix_is_an_error():
    sd = _fake_official("v2")
    first = next(iter(sd))
    sd[f"module.{first}"] = sd.pop(first)
    with pytest.raises(CheckpointError, match="mixing DDP and non-DDP"):
        convert_official_state_dict(sd)


def test_unknown_keys_are_an_error_not_a_warning():
    sd = _fake_official("v2")
    sd["rpn.head.some_new_branch.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"1 checkpoint keys have no mapping.*some_new_branch"
    ):
        convert_official_state_dict(sd)


@pytest.mark.parametrize("ckpt,model", [("v3", "v2"), ("v2", "v3")])
def test_wrong_fusion_variant_is_a_clear_error(ckpt, model):
    with pytest.raises(
        CheckpointError, match=f"checkpoint is fusion {ckpt}.*FUSION_VERSION {ckpt}"
    ):
        convert_official_state_dict(_fake_official(ckpt), expected_variant=model)


def test_shape_mismatch_is_an_error(fiber_b_shapes):
    sd = {k: torch.empty(s) for k, s in _spec("v2").items()}
    sd["rpn.head.bbox_pred.weight"] = torch.empty(8, 256, 1, 1)
    with pytest.raises(
        CheckpointError, match=r"1 tensors have another shape.*head.bbox_pred.weight"
    ):
        convert_official_state_dict(sd, "v2", fiber_b_shapes)


def test_not_an_official_checkpoint():
    with pytest.raises(CheckpointError, match="no 'fusion_backbone"):
        convert_official_state_dict({"backbone.body.x": torch.zeros(1)})
    assert detect_fusion_version(["a.attn.norm_i2t_i.weight"]) == "v3"


def test_checkpointer_refuses_an_official_file_for_another_architecture(tiny_cfg, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {k: torch.empty(s) for k, s in _spec("v2").items()}}, path)
    model = build_model(tiny_cfg)
    with pytest.raises(CheckpointError, match="do not exist in the model|another shape"):
        FIBERCheckpointer(model).load(str(path))


def test_convert_tool_writes_a_loadable_file(tmp_path, capsys):

    tool = load_tool("convert_fiber_checkpoint")
    src, dst = tmp_path / "fiber_refcoco.pth", tmp_path / "out" / "converted.pth"
    torch.save({"model": _fake_official("v3", prefix="module.")}, src)
    assert tool.main([str(src), str(dst), "--no-model-check"]) == 0
    printed = capsys.readouterr().out
    assert "fusion v3" in printed and "swin (i2t fusion)" in printed and "dropped" in printed
    saved = torch.load(dst, weights_only=True)
    assert saved["fusion_version"] == "v3"
    assert "backbone.language.encoder.layer.11.alpha_t2i" in saved["model"]
    assert not list(dst.parent.glob(".*tmp"))  # no temporary file left behind
    assert tool.main([str(tmp_path / "missing.pth"), str(dst)]) == 2
    bad = tmp_path / "bad.pth"
    torch.save({"model": {**_fake_official("v2"), "rpn.head.mystery": torch.zeros(1)}}, bad)
    assert tool.main([str(bad), str(tmp_path / "bad_out.pth"), "--no-model-check"]) == 1
    assert not (tmp_path / "bad_out.pth").exists()
    assert re.search(r"no mapping", capsys.readouterr().err)
