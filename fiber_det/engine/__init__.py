"""Training of FIBER: the ``Trainer`` (detectron2's trainer base and hooks) and its parts (hooks,
EMA, freezes). The data side (datasets, samplers, the training loader) is in ``fiber_det.data``,
checkpoints in ``fiber_det.checkpoint``."""

from .ema import ModelEMA
from .freeze import LINEAR_PROBE_PARAMS, apply_training_freezes, freeze_module, trainable_summary
from .hooks import (
    EMAHook,
    FIBERLRScheduler,
    FIBERMetricPrinter,
    MetricMonitor,
    ReseedHook,
    TrainingStopped,
)
from .trainer import Trainer, prepare_training_config, resolve_training_schedule, scale_to_world

__all__ = [
    "EMAHook",
    "FIBERLRScheduler",
    "FIBERMetricPrinter",
    "LINEAR_PROBE_PARAMS",
    "MetricMonitor",
    "ModelEMA",
    "ReseedHook",
    "Trainer",
    "TrainingStopped",
    "apply_training_freezes",
    "freeze_module",
    "prepare_training_config",
    "resolve_training_schedule",
    "scale_to_world",
    "trainable_summary",
]
