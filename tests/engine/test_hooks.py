"""FIBER's training hooks: plateau + early termination, epochs -> iterations."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fiber_det.engine import MetricMonitor, TrainingStopped, resolve_training_schedule
from fiber_det.solver import WarmupReduceLROnPlateau


def test_metric_monitor_saves_best_and_terminates():
    saved = []
    ckpt = SimpleNamespace(save=lambda name, **kw: saved.append((name, kw.get("best_metric"))))
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-4)
    sched = WarmupReduceLROnPlateau(opt, warmup_iters=0, warmup_factor=1.0, patience=1)
    monitor = MetricMonitor("bbox/AP", sched, ckpt, patience=3)
    monitor.trainer = SimpleNamespace(iter=7)
    for ap in (10.0, 12.0, 11.0, 11.5):
        monitor.report({"my_val": {"bbox": {"AP": ap}}})
    assert not monitor.should_stop
    with pytest.raises(TrainingStopped, match="Auto-termination at iteration 7"):
        monitor.report({"my_val": {"bbox": {"AP": 11.9}}})  # third evaluation below the best
    assert saved == [("model_best", 10.0), ("model_best", 12.0), ("model_final", None)]
    assert monitor.should_stop and monitor.best == 12.0
    assert opt.param_groups[0]["lr"] < sched.base_lrs[0]  # the plateau stepped too
    monitor.should_stop = False
    with pytest.raises(KeyError, match="MONITOR_METRIC"):
        monitor.report({"my_val": {"bbox": {"AR": 1.0}}})


def test_epochs_to_iterations(tiny_cfg):
    tiny_cfg.merge_from_list(
        [
            "SOLVER.FIBER.MAX_EPOCH",
            24,
            "SOLVER.IMS_PER_BATCH",
            32,
            "SOLVER.FIBER.CHECKPOINT_PER_EPOCH",
            1.0,
            "SOLVER.FIBER.EVAL_PER_EPOCH",
            2.0,
        ]
    )
    tiny_cfg.freeze()
    out = resolve_training_schedule(tiny_cfg, 1000)
    assert out.SOLVER.MAX_ITER == 24 * 1000 // 32 == 750
    assert out.SOLVER.CHECKPOINT_PERIOD == 31 and out.TEST.EVAL_PERIOD == 62
    assert out.is_frozen() and tiny_cfg.SOLVER.MAX_ITER != 750  # a new config
