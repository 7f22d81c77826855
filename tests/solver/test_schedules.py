"""LR and weight-decay schedules (official formulas), the plateau schedule."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fiber_det.engine.hooks import FIBERLRScheduler
from fiber_det.solver import (
    WarmupReduceLROnPlateau,
    build_fiber_lr_scheduler,
    build_param_groups,
    resolve_milestones,
)


def _official_lr_factor(it, milestones, gamma, warmup_iters, warmup_factor):
    """maskrcnn_benchmark WarmupMultiStepLR.get_lr, written out again."""
    factor = 1.0
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** sum(1 for m in milestones if m <= it)


def _optimizer(lang=True):
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.body = nn.Linear(2, 2)
    if lang:
        model.backbone.language = nn.Linear(2, 2)
    groups = build_param_groups(model, base_lr=1e-4, lang_lr=1e-5, weight_decay=0.01)
    for g in groups:
        g.pop("param_names")
    return torch.optim.AdamW(groups, lr=1e-4)


def test_fractional_milestones():
    assert resolve_milestones((0.67, 0.89), 800000) == [536000, 712000]
    assert resolve_milestones((30000, 40000), 50000) == [30000, 40000]
    with pytest.raises(ValueError, match="must increase"):
        resolve_milestones((0.9, 0.5), 100)
    with pytest.raises(ValueError, match="after SOLVER.MAX_ITER"):
        resolve_milestones((200,), 100)


def test_multistep_schedule_matches_the_official_formula(tiny_cfg):
    tiny_cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            100,
            "SOLVER.STEPS",
            (0.67, 0.89),
            "SOLVER.WARMUP_ITERS",
            20,
            "SOLVER.WARMUP_FACTOR",
            0.001,
            "SOLVER.GAMMA",
            0.1,
        ]
    )
    opt = _optimizer()
    sched = build_fiber_lr_scheduler(tiny_cfg, opt)
    assert sched.milestones == [67, 89]
    assert sorted(g["initial_lr"] for g in opt.param_groups) == pytest.approx(
        [1e-5, 2e-5, 1e-4, 2e-4]
    )
    for it in range(100):
        f = _official_lr_factor(it, [67, 89], 0.1, 20, 0.001)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["initial_lr"] * f, rel=1e-9), it
        opt.step()
        sched.step()


def test_milestone_inside_warmup_keeps_the_official_product(tiny_cfg):
    tiny_cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            10,
            "SOLVER.STEPS",
            (3,),
            "SOLVER.WARMUP_ITERS",
            5,
            "SOLVER.WARMUP_FACTOR",
            0.1,
        ]
    )
    opt = _optimizer(lang=False)
    sched = build_fiber_lr_scheduler(tiny_cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [1e-4 * _official_lr_factor(i, [3], 0.1, 5, 0.1) for i in range(10)]
    assert lrs == pytest.approx(want)


def _official_weight_decays(max_iter, milestones, ratio, gamma, wd):
    """The official loop (engine/trainer.py): the weight decay used at each iteration."""
    target, used = 0, []
    for it in range(max_iter):
        used.append(wd)
        last_epoch = it + 1  # scheduler.step() ran
        nxt = milestones[target] if target < len(milestones) else math.inf
        if last_epoch >= nxt * ratio:
            wd *= gamma
            target += 1
    return used


def test_weight_decay_schedule_follows_the_official_loop(tiny_cfg):
    tiny_cfg.merge_from_list(["SOLVER.MAX_ITER", 100, "SOLVER.STEPS", (0.67, 0.89)])
    opt = _optimizer()
    sched = build_fiber_lr_scheduler(tiny_cfg, opt)
    hook = FIBERLRScheduler(opt, sched, weight_decay_ratio=0.667)
    storage = SimpleNamespace(put_scalar=lambda *a, **k: None)
    hook.trainer = SimpleNamespace(iter=0, storage=storage)
    used = []
    for it in range(100):
        hook.trainer.iter = it
        hook.before_step()
        used.append(opt.param_groups[0]["weight_decay"])
        opt.step()
        hook.after_step()
    want = _official_weight_decays(100, [67, 89], 0.667, 0.1, 0.01)
    assert used == pytest.approx(want)
    assert used[44] == pytest.approx(0.01) and used[45] == pytest.approx(0.001)  # 0.667 x 67
    assert used[-1] == pytest.approx(1e-4)


def test_plateau_schedule_warmup_patience_and_floor():
    opt = _optimizer()
    sched = WarmupReduceLROnPlateau(
        opt, warmup_iters=4, warmup_factor=0.5, factor=0.1, patience=2, min_lr=2e-6
    )
    first = [g["lr"] for g in opt.param_groups]
    assert first == pytest.approx([g["initial_lr"] * 0.5 for g in opt.param_groups])
    for _ in range(4):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(sched.base_lrs)
    sched.step_metric(10.0)  # best
    for _ in range(2):
        sched.step_metric(9.0)  # patience 2: not yet
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(sched.base_lrs)
    sched.step_metric(9.0)  # third evaluation without improvement: x0.1
    want = [max(lr * 0.1, 2e-6) for lr in sched.base_lrs]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(want)
    state = sched.state_dict()
    for _ in range(12):
        sched.step_metric(1.0)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(2e-6)  # MIN_LR floor
    again = WarmupReduceLROnPlateau(opt, warmup_iters=4, warmup_factor=0.5)
    again.load_state_dict(state)
    assert again.last_iter == 4 and again.plateau.best == 10.0
