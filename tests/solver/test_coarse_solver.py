"""The coarse-grained optimizer and schedule: the official ``set_schedule`` groups on the official
key names, AdamW's betas, warm-up + polynomial decay as transformers computes it."""

import json

import pytest
import torch
from torch import nn
from transformers import get_polynomial_decay_schedule_with_warmup

from fiber_det.checkpoint.coarse import to_official_coarse_state_dict
from fiber_det.engine import Trainer
from fiber_det.solver import (
    build_fiber_lr_scheduler,
    build_fiber_optimizer,
    build_param_groups,
    classify_parameter,
)
from fiber_det.utils.testing import get_config
from tests.paths import parity_dir

LR, WD, HEAD, CROSS = 1e-5, 0.01, 5.0, 7.0  # distinct multipliers, so that each shows


def _set_schedule_rule(name: str):
    """(lr, weight decay) of ``name`` in the six groups of the official ``set_schedule``
    (microsoft/FIBER coarse_grained/fiber/modules/fiber_utils.py), written out again."""
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight"]
    no_decay += ["norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight"]
    heads = ["vqa_classifier", "nlvr2_classifier", "mlm_score", "itm_score", "snli_classifier"]
    cross = ["cross_modal", "i2t", "t2i"]
    nd = any(x in name for x in no_decay)
    hd = any(x in name for x in heads)
    cm = any(x in name for x in cross)
    wd = 0.0 if nd else WD
    if not hd and not cm:
        return LR, wd
    if hd and not cm:
        return LR * HEAD, wd
    if cm and not hd:
        return LR * CROSS, wd
    return None  # in no group


def _rule(name):
    r = classify_parameter(
        name,
        base_lr=LR,
        lang_lr=123.0,  # unused by the coarse rule
        weight_decay=WD,
        policy="official_coarse",
        lr_mult_head=HEAD,
        lr_mult_cross_modal=CROSS,
    )
    return r.lr, r.weight_decay


BUFFERS = ("queue", "queue_ptr", "queue_total", "relative_position_index", "attn_mask")


def test_official_coarse_keys_get_the_set_schedule_groups():
    path = parity_dir() / "official_coarse_keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (set FIBER_PARITY_DIR)")
    keys = [
        k
        for k in json.loads(path.read_text())
        if not k.endswith(BUFFERS) and not k.endswith("position_ids")
    ]
    assert len(keys) > 600
    seen = {"head": 0, "cross": 0, "no_decay": 0}
    for key in keys:
        want = _set_schedule_rule(key)
        assert want is not None, key  # no official parameter falls in no group
        assert _rule(key) == pytest.approx(want), key
        seen["head"] += want[0] == pytest.approx(LR * HEAD)
        seen["cross"] += want[0] == pytest.approx(LR * CROSS)
        seen["no_decay"] += want[1] == 0.0
    # every class is populated: heads (itm, mlm), cross-modal (transforms, poolers, i2t, t2i)
    assert seen["head"] == 8 and min(seen.values()) >= 8, seen  # itm_score.fc, mlm_score (6)
    # spot checks, by hand from set_schedule
    assert _rule("vit_model.layers.2.blocks.0.attn.relative_position_bias_table") == (LR, 0.0)
    assert _rule("vit_model.norm.weight") == (LR, 0.0)
    assert _rule("vit_model.layers.3.blocks.0.attn.norm_i2t_i.weight") == (LR * CROSS, WD)
    assert _rule("text_transformer.encoder.layer.8.alpha_t2i") == (LR * CROSS, WD)
    assert _rule("mlm_score.transform.LayerNorm.weight") == (LR * HEAD, 0.0)
    assert _rule("text_transformer.embeddings.word_embeddings.weight") == (LR, WD)
    assert _rule("temp") == (LR, WD)


@pytest.fixture
def coarse_cfg(tokenizer_dir):
    return get_config(
        "tiny/coarse_tiny.yaml",
        [
            "MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir),
            "SOLVER.BASE_LR", LR, "SOLVER.WEIGHT_DECAY", WD,
            "SOLVER.FIBER.PARAM_GROUPS", "official_coarse",
            "SOLVER.FIBER.LR_MULT_HEAD", HEAD, "SOLVER.FIBER.LR_MULT_CROSS_MODAL", CROSS,
            "SOLVER.FIBER.ADAMW_BETAS", (0.9, 0.98),
        ],
    )  # fmt: skip


def test_coarse_model_parameters_get_the_rule_of_their_official_names(coarse_cfg):
    model = Trainer.build_model(coarse_cfg)
    official = to_official_coarse_state_dict(dict(model.named_parameters()))
    theirs = {id(v): k for k, v in official.items()}
    opt = build_fiber_optimizer(coarse_cfg, model)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    groups = build_param_groups(
        model,
        base_lr=LR,
        lang_lr=1.0,
        weight_decay=WD,
        policy="official_coarse",
        lr_mult_head=HEAD,
        lr_mult_cross_modal=CROSS,
    )
    n = 0
    for g in groups:
        for p, name in zip(g["params"], g["param_names"]):
            assert (g["lr"], g["weight_decay"]) == pytest.approx(
                _set_schedule_rule(theirs[id(p)])
            ), name
            n += 1
    assert n == sum(1 for p in model.parameters() if p.requires_grad)
    assert {g["family"] for g in opt.param_groups} == {"base", "head", "cross_modal"}
    assert len(opt.param_groups) == 6  # the six official groups, none empty


def _transformers_lrs(base_lrs, warmup, total, power, end, steps):
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    opt = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    opt.defaults["lr"] = base_lrs[0]  # transformers reads lr_init from the defaults
    sched = get_polynomial_decay_schedule_with_warmup(opt, warmup, total, lr_end=end, power=power)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("power,end", [(1.0, 0.0), (2.0, 1e-6)])
def test_warmup_poly_schedule_equals_transformers(coarse_cfg, power, end):
    total = 50
    coarse_cfg.merge_from_list(
        [
            "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", total,
            "SOLVER.FIBER.WARMUP_FRACTION", 0.1, "SOLVER.WARMUP_FACTOR", 0.0,
            "SOLVER.FIBER.POLY_POWER", power, "SOLVER.FIBER.POLY_END_LR", end,
        ]
    )  # fmt: skip
    model = Trainer.build_model(coarse_cfg)
    opt = build_fiber_optimizer(coarse_cfg, model)
    sched = build_fiber_lr_scheduler(coarse_cfg, opt)
    base = [g["initial_lr"] for g in opt.param_groups]
    want = _transformers_lrs(base, int(total * 0.1), total, power, end, total)
    for it in range(total):
        # the formula, written out: 0 at the first step, linear to LR over 5 steps, then decay
        t = it
        if t < 5:
            factor = t / 5
        else:
            factor = (1 - end / LR) * (1 - (t - 5) / (total - 5)) ** power + end / LR
        got = [g["lr"] for g in opt.param_groups]
        assert got == pytest.approx([b * factor for b in base], rel=1e-9, abs=1e-15), it
        if end == 0.0:  # transformers scales lr_end by lr_init of the first group only
            assert got == pytest.approx(want[it], rel=1e-9, abs=1e-15), it
        else:
            assert got[0] == pytest.approx(want[it][0], rel=1e-9, abs=1e-15), it
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(base[0] * (end / LR), abs=1e-15)


def test_poly_schedule_refuses_an_end_lr_above_the_base_lr(coarse_cfg):
    coarse_cfg.merge_from_list(
        ["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.FIBER.POLY_END_LR", 1.0]
    )
    model = Trainer.build_model(coarse_cfg)
    with pytest.raises(ValueError, match="POLY_END_LR"):
        build_fiber_lr_scheduler(coarse_cfg, build_fiber_optimizer(coarse_cfg, model))
