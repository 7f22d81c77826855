"""Optimizer parameter groups: the official solver/build.py rule on our parameter names."""

import json

import pytest
import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import convert_official_state_dict
from fiber_det.engine import Trainer
from fiber_det.solver import build_fiber_optimizer, build_param_groups, classify_parameter
from fiber_det.utils.testing import get_config

# Distinct values so that every factor shows in the result.
HP = dict(
    base_lr=1e-4,
    lang_lr=1e-5,
    weight_decay=0.01,
    bias_lr_factor=2.0,
    weight_decay_bias=0.0,
    weight_decay_norm_factor=0.5,
    body_lr_factor=1.0,
)

# name -> (family, lr, weight decay) under HP.
EXPECTED_TINY = {
    "backbone.body.patch_embed.proj.weight": ("base", 1e-4, 0.01),
    "backbone.body.patch_embed.proj.bias": ("base", 2e-4, 0.0),
    "backbone.body.patch_embed.norm.weight": ("base", 1e-4, 0.005),
    "backbone.body.layers.1.blocks.0.norm1.bias": ("base", 2e-4, 0.0),
    "backbone.body.layers.1.blocks.0.attn.relative_position_bias_table": ("base", 2e-4, 0.0),
    "backbone.body.layers.1.blocks.0.attn.qkv.weight": ("base", 1e-4, 0.01),
    "backbone.body.layers.1.downsample.norm.weight": ("base", 1e-4, 0.005),
    "backbone.body.layers.1.downsample.reduction.weight": ("base", 1e-4, 0.01),
    "backbone.body.layers.3.blocks.0.attn.alpha_i2t": ("base", 1e-4, 0.01),
    "backbone.body.layers.3.blocks.0.attn.qkv_text_i2t.weight": ("base", 1e-4, 0.01),
    "backbone.body.layers.3.blocks.0.attn.proj_i2t.bias": ("base", 2e-4, 0.0),
    "backbone.body.norm3.weight": ("base", 1e-4, 0.005),
    "backbone.language.embeddings.word_embeddings.weight": ("lang", 1e-5, 0.01),
    "backbone.language.embeddings.LayerNorm.weight": ("lang", 1e-5, 0.005),
    "backbone.language.encoder.layer.0.attention.self.query.weight": ("lang", 1e-5, 0.01),
    "backbone.language.encoder.layer.0.output.LayerNorm.bias": ("lang", 2e-5, 0.0),
    "backbone.language.encoder.layer.2.alpha_t2i": ("lang", 1e-5, 0.01),
    "backbone.language.encoder.layer.2.crossattention_t2i.self.key.weight": ("lang", 1e-5, 0.01),
    "backbone.language.encoder.layer.2.crossattention_t2i.output.dense.bias": ("lang", 2e-5, 0.0),
    "backbone.fpn.lateral_convs.0.weight": ("base", 1e-4, 0.01),
    "backbone.fpn.p6.bias": ("base", 2e-4, 0.0),
    # the head's GroupNorms are "bn" officially: not norms for the weight-decay rule
    "head.tower.0.convs.0.norm.weight": ("base", 1e-4, 0.01),
    "head.tower.0.convs.0.norm.bias": ("base", 2e-4, 0.0),
    "head.tower.1.dyrelu.fc1.weight": ("base", 1e-4, 0.01),
    "head.bbox_pred.weight": ("base", 1e-4, 0.01),
    "head.text_proj.weight": ("base", 1e-4, 0.01),
    "head.log_scale": ("base", 1e-4, 0.01),
    "head.bias_lang": ("base", 2e-4, 0.0),
    "head.bias0": ("base", 2e-4, 0.0),
    "head.scales.2.scale": ("base", 1e-4, 0.01),
}


def _where(groups):
    out = {}
    for g in groups:
        for name in g["param_names"]:
            assert name not in out, f"{name} is in two groups"
            out[name] = (g["family"], g["lr"], g["weight_decay"])
    return out


def test_every_tiny_parameter_lands_in_its_official_group(tiny_cfg):
    tiny_cfg.MODEL.SWIN.FROZEN_STAGES = 2  # patch embedding and stage 0 frozen: left out
    model = build_model(tiny_cfg)
    where = _where(build_param_groups(model, **HP))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(where) == trainable
    assert not any(
        n.startswith(("backbone.body.patch_embed.", "backbone.body.layers.0.")) for n in where
    )
    for name, (family, lr, wd) in EXPECTED_TINY.items():
        if name.startswith("backbone.body.patch_embed."):
            continue
        got = where[name]
        assert got[0] == family and got[1] == pytest.approx(lr) and got[2] == pytest.approx(wd), (
            name
        )
    # the whole text encoder, its text-to-image fusion included, is on LANG_LR
    lang = {n for n, v in where.items() if v[0] == "lang"}
    assert lang == {n for n in trainable if n.startswith("backbone.language.")}


def test_patch_embedding_groups_when_trainable(tiny_cfg):
    model = build_model(tiny_cfg)  # FROZEN_STAGES -1
    where = _where(build_param_groups(model, **HP))
    for name in (
        "backbone.body.patch_embed.proj.weight",
        "backbone.body.patch_embed.proj.bias",
        "backbone.body.patch_embed.norm.weight",
    ):
        family, lr, wd = EXPECTED_TINY[name]
        assert where[name] == (family, pytest.approx(lr), pytest.approx(wd))


def _official_rule(key: str):
    """microsoft/FIBER solver/build.py, written out again for the test (official names)."""
    lr, wd = HP["base_lr"], HP["weight_decay"]
    if "language_backbone" in key:
        lr = HP["lang_lr"]
    if "backbone.body" in key and "language_backbone.body" not in key:
        lr = HP["base_lr"] * 0.7
    if "bias" in key:
        lr *= HP["bias_lr_factor"]
        wd = HP["weight_decay_bias"]
    if "norm" in key or "Norm" in key:
        wd *= HP["weight_decay_norm_factor"]
    return lr, wd


@pytest.fixture(scope="module")
def fiber_b():
    torch.manual_seed(0)
    return build_model(get_config("fiber_b/Base-FIBER-B.yaml"))


def test_fiber_b_names_follow_the_official_rule_on_official_names(fiber_b, parity):
    """Each FIBER-B parameter gets what the official rule gives its official name."""
    root, synth = parity
    shapes = json.loads((root / "official_keys_v2.json").read_text())
    official = {
        k: torch.empty(s, device="meta") for k, s in shapes.items() if not synth.is_buffer(k)
    }
    converted, _ = convert_official_state_dict(official)
    ours_of = {id(v): k for k, v in converted.items()}
    pairs = {ours_of[id(v)]: k for k, v in official.items() if id(v) in ours_of}
    trainable = {n for n, p in fiber_b.named_parameters()}
    assert set(pairs) == trainable  # cls_logits (unused officially) has no counterpart
    hp = dict(HP, body_lr_factor=0.7)
    for ours, theirs in pairs.items():
        rule = classify_parameter(ours, **hp)
        lr, wd = _official_rule(theirs)
        assert (rule.lr, rule.weight_decay) == (pytest.approx(lr), pytest.approx(wd)), (
            ours,
            theirs,
        )


def test_fiber_b_group_sizes(fiber_b):
    groups = build_param_groups(fiber_b, **HP)
    size = {(g["family"], g["kind"]): len(g["params"]) for g in groups}
    n = sum(size.values())
    assert n == 774  # every FIBER-B parameter tensor, once
    # biases: every ".bias" plus 24 relative_position_bias_table, bias_lang and bias0
    biases = [k for k, _ in fiber_b.named_parameters() if "bias" in k]
    assert size[("base", "bias")] + size[("lang", "bias")] == len(biases)
    assert len([k for k in biases if "relative_position_bias_table" in k]) == 24
    lang = [k for k, _ in fiber_b.named_parameters() if k.startswith("backbone.language.")]
    assert sum(v for (fam, _), v in size.items() if fam == "lang") == len(lang) == 251


def test_optimizer_from_config_is_adamw_with_full_model_clipping(tiny_cfg):
    tiny_cfg.merge_from_list(
        [
            "SOLVER.BIAS_LR_FACTOR",
            2.0,
            "SOLVER.WEIGHT_DECAY_BIAS",
            0.0,
            "SOLVER.CLIP_GRADIENTS.ENABLED",
            True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
            "full_model",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
            1.0,
        ]
    )
    model = Trainer.build_model(tiny_cfg)
    opt = build_fiber_optimizer(tiny_cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["family"] for g in opt.param_groups} == {"base", "lang"}
    assert all("param_names" not in g for g in opt.param_groups)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    opt.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)  # clipped to the full-model norm 1.0


def test_clean_policy_is_an_option_not_the_default(tiny_cfg):
    model = build_model(tiny_cfg)
    clean = _where(build_param_groups(model, **dict(HP, policy="no_decay_norm_embed")))
    assert clean["backbone.body.layers.1.blocks.0.norm1.weight"][2] == 0.0
    assert clean["backbone.language.embeddings.word_embeddings.weight"][2] == 0.0
    assert clean["head.bias_lang"][1] == pytest.approx(1e-4)  # no bias LR factor
    assert clean["backbone.body.layers.1.blocks.0.attn.qkv.weight"][2] == 0.01
    assert tiny_cfg.SOLVER.FIBER.PARAM_GROUPS == "official"
