"""Training of FIBER: the detectron2 ``Trainer`` and its parts (hooks, EMA, data, freezes)."""

from .checkpoint import FIBERTrainingCheckpointer
from .custom_data import CUSTOM_TRAIN, CUSTOM_VAL, register_custom_datasets
from .data import (
    MixedTrainingSampler,
    NegativeBatchFilter,
    SeededMapDataset,
    TrainingSet,
    build_mixed_train_loader,
    few_shot_subset,
    load_training_set,
)
from .ema import ModelEMA, load_ema_weights
from .freeze import LINEAR_PROBE_PARAMS, apply_training_freezes, freeze_module, trainable_summary
from .hooks import EMAHook, FIBERLRScheduler, FIBERMetricPrinter, MetricMonitor, ReseedHook
from .trainer import Trainer, resolve_training_schedule

__all__ = [
    "CUSTOM_TRAIN",
    "CUSTOM_VAL",
    "EMAHook",
    "FIBERLRScheduler",
    "FIBERMetricPrinter",
    "FIBERTrainingCheckpointer",
    "LINEAR_PROBE_PARAMS",
    "MetricMonitor",
    "MixedTrainingSampler",
    "ModelEMA",
    "NegativeBatchFilter",
    "ReseedHook",
    "SeededMapDataset",
    "Trainer",
    "TrainingSet",
    "apply_training_freezes",
    "build_mixed_train_loader",
    "few_shot_subset",
    "freeze_module",
    "load_ema_weights",
    "load_training_set",
    "register_custom_datasets",
    "resolve_training_schedule",
    "trainable_summary",
]
