"""Training hooks of FIBER (detectron2 ``HookBase``): schedules, EMA, reseeding, monitoring,
logs."""

import logging
import sys
from typing import List, Optional

import torch
from detectron2.engine import HookBase
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, get_event_storage

from ..data.samplers import mix_seed
from ..solver.lr_scheduler import WarmupReduceLROnPlateau, weight_decay_multiplier
from .ema import ModelEMA

__all__ = [
    "EMAHook",
    "FIBERLRScheduler",
    "FIBERMetricPrinter",
    "MetricMonitor",
    "ReseedHook",
    "TrainingStopped",
    "group_of_family",
]

logger = logging.getLogger(__name__)


class TrainingStopped(BaseException):
    """Raised by :class:`MetricMonitor` to end the training early (official auto-termination).

    A ``BaseException``, like ``KeyboardInterrupt``, so that detectron2's loop does not log it
    as a crash; its ``finally`` still runs every hook's ``after_train``.
    """


def group_of_family(optimizer: torch.optim.Optimizer, family: str) -> Optional[int]:
    """Index of the main (non-bias) parameter group of ``family`` ("base" / "lang")."""
    fallback = None
    for i, g in enumerate(optimizer.param_groups):
        if g.get("family") == family:
            if g.get("kind") in ("weight", None):
                return i
            fallback = i if fallback is None else fallback
    return fallback


class ReseedHook(HookBase):
    """Seed Python, NumPy and torch from (seed, iteration, rank) before each iteration.

    Makes dropout / drop-path draws a function of the iteration, so that a resumed run draws what
    the uninterrupted run would have.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        seed_all_rng(mix_seed(self.seed, self.trainer.iter, comm.get_rank()) % (2**31))


class FIBERLRScheduler(HookBase):
    """Step the LR scheduler after each iteration, apply the weight-decay schedule, log both.

    Logs ``lr`` (image side and head), ``lr_lang`` (text encoder) and, with a weight-decay
    schedule, ``wd``.

    Args:
        optimizer: with the groups of :func:`fiber_det.solver.build_param_groups`.
        scheduler: a torch LR scheduler or :class:`WarmupReduceLROnPlateau`.
        weight_decay_ratio (float or None): enables the official weight-decay schedule
            (``gamma`` at ``ratio`` x each of ``scheduler.milestones``).
    """

    def __init__(self, optimizer, scheduler, *, weight_decay_ratio: Optional[float] = None):
        self._optimizer = optimizer
        self.scheduler = scheduler
        self._wd_ratio = weight_decay_ratio
        self._families = {
            name: group_of_family(optimizer, fam)
            for name, fam in (("lr", "base"), ("lr_lang", "lang"))
        }
        if self._wd_ratio is not None and not hasattr(scheduler, "milestones"):
            raise ValueError(
                "SOLVER.FIBER.WEIGHT_DECAY_SCHEDULE needs the multi-step LR schedule "
                "(it follows its milestones); turn it off with SOLVER.FIBER.USE_AUTOSTEP"
            )

    def before_step(self):
        if self._wd_ratio is None:
            return
        m = weight_decay_multiplier(
            self.trainer.iter, self.scheduler.milestones, self._wd_ratio, self.scheduler.gamma
        )
        for g in self._optimizer.param_groups:
            g["weight_decay"] = g.get("initial_weight_decay", g["weight_decay"]) * m

    def after_step(self):
        storage = self.trainer.storage
        for key, idx in self._families.items():
            if idx is not None:
                storage.put_scalar(
                    key, self._optimizer.param_groups[idx]["lr"], smoothing_hint=False
                )
        if self._wd_ratio is not None:
            idx = self._families["lr"] or 0
            wd = self._optimizer.param_groups[idx]["weight_decay"]
            storage.put_scalar("wd", wd, smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict):
        logger.info("Loading the LR scheduler state")
        self.scheduler.load_state_dict(state_dict)


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every optimizer step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self):
        self.ema.update(self.trainer.model)


class MetricMonitor(HookBase):
    """Act on each evaluation: plateau LR steps, ``model_best``, early termination.

    Official ``USE_AUTOSTEP`` / ``AUTO_TERMINATE_PATIENCE`` (microsoft/FIBER ``engine/trainer.py``):
    the metric (broadcast from the main process) drives :class:`WarmupReduceLROnPlateau`; with a
    patience, a better value saves ``model_best`` and ``patience`` evaluations in a row below the
    best stop the training: ``model_final`` is saved and :class:`TrainingStopped` raised.

    Args:
        metric (str): flattened results key, e.g. "bbox/AP".
        scheduler: the LR scheduler (stepped when it is a plateau scheduler).
        checkpointer: saves ``model_best``.
        patience (int): evaluations without improvement before stopping; <= 0 never stops.
    """

    def __init__(self, metric: str, scheduler, checkpointer, patience: int = -1):
        self.metric = metric
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.patience = patience
        self.best: Optional[float] = None
        self.bad_evals = 0
        self.should_stop = False

    def _value(self, results):
        """(value, error message) on the main process; (None, None) elsewhere."""
        if not comm.is_main_process() or not results:
            return None, None
        flat = flatten_results_dict(results)
        matches = [k for k in flat if k == self.metric or k.endswith("/" + self.metric)]
        if not matches:  # several test sets give "<dataset>/bbox/AP": the first one is used
            return None, (
                f"SOLVER.FIBER.MONITOR_METRIC {self.metric!r} is not among the evaluation "
                f"results {sorted(flat)[:10]}: set it to one of them"
            )
        return float(flat[matches[0]]), None

    def report(self, results) -> None:
        """Call with the results of each evaluation, on every process."""
        value, error = comm.all_gather(self._value(results))[0]
        if error:
            raise KeyError(error)
        if value is None:
            return
        if isinstance(self.scheduler, WarmupReduceLROnPlateau):
            self.scheduler.step_metric(value)
        if self.patience <= 0:
            return
        if self.best is None or value >= self.best:
            self.best, self.bad_evals = value, 0
            self.checkpointer.save("model_best", iteration=self.trainer.iter, best_metric=value)
        else:
            self.bad_evals += 1
        logger.info(
            "%s = %.4f (best %.4f, %d of %d evaluations without improvement)",
            self.metric,
            value,
            self.best,
            self.bad_evals,
            self.patience,
        )
        if self.bad_evals >= self.patience:
            self.should_stop = True
            self.checkpointer.save("model_final", iteration=self.trainer.iter)
            raise TrainingStopped(
                f"Auto-termination at iteration {self.trainer.iter}: best {self.metric} "
                f"{self.best:.4f} (model_best.pth), last weights in model_final.pth"
            )

    def state_dict(self):
        return {"best": self.best, "bad_evals": self.bad_evals, "should_stop": self.should_stop}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best")
        self.bad_evals = state_dict.get("bad_evals", 0)
        self.should_stop = state_dict.get("should_stop", False)


class FIBERMetricPrinter(CommonMetricPrinter):
    """Console line per period: ETA, iteration, every loss, iteration / data time, ``lr`` and
    ``lr_lang``, weight decay when scheduled, and memory (GPU peak, else the process's peak RSS)."""

    def write(self):
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            return
        window = self._window_size

        def median(key: str) -> Optional[float]:
            try:
                return storage.history(key).median(storage.count_samples(key, window))
            except KeyError:
                return None

        def latest(key: str) -> Optional[float]:
            try:
                return storage.history(key).latest()
            except KeyError:
                return None

        parts: List[str] = []
        eta = self._get_eta(storage)
        if eta:
            parts.append(f"eta: {eta}")
        parts.append(f"iter: {iteration}")
        parts += [f"{k}: {median(k):.4g}" for k in storage.histories() if "loss" in k]
        for key, label in (("time", "time"), ("data_time", "data_time")):
            value = median(key)
            if value is not None:
                parts.append(f"{label}: {value:.4f}")
        for key in ("lr", "lr_lang", "wd"):
            value = latest(key)
            if value is not None:
                parts.append(f"{key}: {value:.4g}")
        parts.append(_memory())
        self.logger.info("  ".join(p for p in parts if p))


def _memory() -> str:
    if torch.cuda.is_available():
        return f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M"
    try:
        import resource
    except ImportError:  # Windows
        return ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"max_rss: {peak / (2**20 if sys.platform == 'darwin' else 2**10):.0f}M"
