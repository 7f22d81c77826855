"""Learning-rate and weight-decay schedules of the FIBER recipes.

* Multi-step with warm-up (every recipe but ODinW): linear warm-up over ``WARMUP_ITERS`` from
  ``WARMUP_FACTOR`` x LR, then x ``GAMMA`` at each milestone of ``SOLVER.STEPS``; a step < 1 is a
  fraction of ``MAX_ITER`` (official ``make_lr_scheduler``: ``round(step * MAX_ITER)``). The
  multiplier is the official ``WarmupMultiStepLR`` formula (warm-up factor x gamma^(milestones
  passed), also when a milestone falls inside the warm-up) as an fvcore ``ParamScheduler``
  driven by detectron2's ``LRMultiplier``.
* Plateau (official ``USE_AUTOSTEP``, ODinW): the same warm-up, then LR x ``GAMMA`` when the
  validation metric has not improved for ``STEP_PATIENCE`` evaluations, never below ``MIN_LR``
  (official ``WarmupReduceLROnPlateau`` in ``solver/lr_scheduler.py``).
* Polynomial decay with warm-up (``SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR"``, the coarse-grained
  recipes): transformers' ``get_polynomial_decay_schedule_with_warmup`` as the official
  ``set_schedule`` uses it: linear warm-up from ``WARMUP_FACTOR`` (0 officially) over
  ``WARMUP_ITERS`` (or ``SOLVER.FIBER.WARMUP_FRACTION`` x ``MAX_ITER``), then
  ``(BASE_LR - END) x (1 - progress) ** POLY_POWER + END`` with ``END`` =
  ``SOLVER.FIBER.POLY_END_LR``, as a multiplier of every group's LR.
* Weight-decay schedule (pre-training): the weight decay is multiplied by ``GAMMA`` when the
  iteration reaches ``RATIO`` x each LR milestone (official ``WEIGHT_DECAY_SCHEDULE`` in
  ``engine/trainer.py``); :func:`weight_decay_multiplier` is its closed form.
"""

import logging
from bisect import bisect_right
from typing import Dict, List, Sequence

import torch
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler

__all__ = [
    "OfficialMultiStepParamScheduler",
    "PolynomialDecayParamScheduler",
    "WarmupReduceLROnPlateau",
    "build_fiber_lr_scheduler",
    "multistep_lr_multiplier",
    "poly_lr_multiplier",
    "resolve_milestones",
    "resolve_warmup_iters",
    "warmup_multiplier",
    "weight_decay_multiplier",
]

logger = logging.getLogger(__name__)


def resolve_milestones(steps: Sequence[float], max_iter: int) -> List[int]:
    """LR milestones in iterations: a step < 1 is a fraction of ``max_iter`` (official rule)."""
    out = [int(round(s * max_iter)) if s < 1 else int(s) for s in steps]
    if out != sorted(out):
        raise ValueError(f"SOLVER.STEPS must increase, got {list(steps)} -> {out} iterations")
    too_late = [m for m in out if m > max_iter]
    if too_late:
        raise ValueError(
            f"SOLVER.STEPS {list(steps)} has milestones {too_late} after SOLVER.MAX_ITER "
            f"{max_iter}: give fractions (< 1) of the run or smaller iteration numbers"
        )
    return out


def warmup_multiplier(
    iteration: int, warmup_iters: int, warmup_factor: float, method: str
) -> float:
    """Official warm-up factor at ``iteration`` (1 after warm-up)."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {method!r}")


def weight_decay_multiplier(
    iteration: int, milestones: Sequence[int], ratio: float, gamma: float
) -> float:
    """Official weight-decay schedule: ``gamma`` per milestone ``m`` with
    ``iteration >= ratio * m``.

    The official loop checks ``scheduler.last_epoch >= ratio * m`` after the optimizer step of
    iteration ``t`` (when ``last_epoch == t + 1``), so the decayed value is first used at the
    smallest iteration ``t >= ratio * m``; that is what this returns for iteration ``t``.
    """
    passed = sum(1 for m in milestones if iteration >= ratio * m)
    return gamma**passed


class WarmupReduceLROnPlateau:
    """Warm-up, then ReduceLROnPlateau (mode "max") on a validation metric.

    Call :meth:`step` once per iteration (warm-up) and :meth:`step_metric` after each evaluation.
    The LR of group ``i`` is ``initial_lr_i x warm-up factor`` during warm-up; afterwards
    torch's ``ReduceLROnPlateau`` multiplies the current LRs by ``factor`` after ``patience``
    evaluations without improvement (relative threshold 1e-4), floored at ``min_lr``.

    Args:
        optimizer (Optimizer): its groups' ``lr`` are the initial LRs.
        warmup_iters (int), warmup_factor (float), warmup_method (str): warm-up.
        factor (float): LR multiplier on a plateau (official GAMMA).
        patience (int): evaluations without improvement before a reduction (official
            STEP_PATIENCE).
        min_lr (float): lower bound of every LR (official MIN_LR).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_iters: int,
        warmup_factor: float,
        warmup_method: str = "linear",
        factor: float = 0.1,
        patience: int = 5,
        min_lr: float = 1e-6,
    ):
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_iter = 0
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=factor, patience=patience, min_lr=min_lr
        )
        self._set_warmup_lrs()

    def _set_warmup_lrs(self) -> None:
        if self.last_iter > self.warmup_iters:
            return
        m = warmup_multiplier(
            self.last_iter, self.warmup_iters, self.warmup_factor, self.warmup_method
        )
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * m

    def step(self) -> None:
        """Advance one iteration (changes the LRs only during warm-up)."""
        self.last_iter += 1
        self._set_warmup_lrs()

    def step_metric(self, value: float) -> None:
        """Report a validation metric (ignored during warm-up, as officially)."""
        if self.last_iter < self.warmup_iters:
            return
        before = [g["lr"] for g in self.optimizer.param_groups]
        self.plateau.step(value)
        after = [g["lr"] for g in self.optimizer.param_groups]
        if after != before:
            logger.info("Plateau of the validation metric: LR %s -> %s", before, after)

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {
            "last_iter": self.last_iter,
            "base_lrs": list(self.base_lrs),
            "plateau": self.plateau.state_dict(),
        }

    def load_state_dict(self, state: Dict) -> None:
        self.last_iter = state["last_iter"]
        self.base_lrs = list(state["base_lrs"])
        self.plateau.load_state_dict(state["plateau"])


class OfficialMultiStepParamScheduler(ParamScheduler):
    """The official ``WarmupMultiStepLR`` multiplier as an fvcore ``ParamScheduler``.

    ``where`` in [0, 1) is ``iteration / max_iter`` (detectron2's ``LRMultiplier``).
    """

    def __init__(
        self,
        *,
        max_iter: int,
        milestones: Sequence[int],
        gamma: float,
        warmup_iters: int,
        warmup_factor: float,
        warmup_method: str = "linear",
    ):
        warmup_multiplier(0, warmup_iters, warmup_factor, warmup_method)  # validates the method
        self.max_iter = max_iter
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method

    def __call__(self, where: float) -> float:
        iteration = int(round(where * self.max_iter))
        return multistep_lr_multiplier(
            iteration,
            self.milestones,
            self.gamma,
            self.warmup_iters,
            self.warmup_factor,
            self.warmup_method,
        )


class PolynomialDecayParamScheduler(ParamScheduler):
    """:func:`poly_lr_multiplier` as an fvcore ``ParamScheduler`` (``where`` = iteration /
    max_iter, detectron2's ``LRMultiplier``)."""

    def __init__(
        self,
        *,
        max_iter: int,
        warmup_iters: int,
        warmup_factor: float = 0.0,
        power: float = 1.0,
        end_factor: float = 0.0,
    ):
        self.max_iter = max_iter
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.power = power
        self.end_factor = end_factor

    def __call__(self, where: float) -> float:
        return poly_lr_multiplier(
            int(round(where * self.max_iter)),
            self.max_iter,
            self.warmup_iters,
            warmup_factor=self.warmup_factor,
            power=self.power,
            end_factor=self.end_factor,
        )


def poly_lr_multiplier(
    iteration: int,
    max_iter: int,
    warmup_iters: int,
    *,
    warmup_factor: float = 0.0,
    power: float = 1.0,
    end_factor: float = 0.0,
) -> float:
    """LR multiplier of the warm-up + polynomial decay schedule at ``iteration``.

    ``end_factor`` is the final LR over the base LR (transformers' ``lr_end / lr_init``).
    """
    if iteration < warmup_iters:
        return warmup_multiplier(iteration, warmup_iters, warmup_factor, "linear")
    if iteration > max_iter:
        return end_factor
    remaining = 1.0 - (iteration - warmup_iters) / max(1, max_iter - warmup_iters)
    return (1.0 - end_factor) * remaining**power + end_factor


def resolve_warmup_iters(cfg) -> int:
    """``SOLVER.WARMUP_ITERS``, or ``int(SOLVER.FIBER.WARMUP_FRACTION x MAX_ITER)`` when the
    fraction is > 0 (official ``warmup_steps`` given as a float)."""
    s = cfg.SOLVER
    frac = s.FIBER.WARMUP_FRACTION
    if frac > 0:
        if frac >= 1:
            raise ValueError(f"SOLVER.FIBER.WARMUP_FRACTION must be < 1, got {frac}")
        return int(s.MAX_ITER * frac)
    return max(0, s.WARMUP_ITERS)


def _build_poly_scheduler(cfg, optimizer: torch.optim.Optimizer):
    s = cfg.SOLVER
    end = s.FIBER.POLY_END_LR
    if not 0 <= end < s.BASE_LR:
        raise ValueError(
            f"SOLVER.FIBER.POLY_END_LR ({end}) must be >= 0 and below SOLVER.BASE_LR ({s.BASE_LR})"
        )
    warmup_iters = resolve_warmup_iters(cfg)
    sched = PolynomialDecayParamScheduler(
        max_iter=s.MAX_ITER,
        warmup_iters=warmup_iters,
        warmup_factor=s.WARMUP_FACTOR,
        power=s.FIBER.POLY_POWER,
        end_factor=end / s.BASE_LR,
    )
    logger.info(
        "LR schedule: linear warm-up %d iterations (from x%g), then polynomial decay (power %g) "
        "to %g at iteration %d",
        warmup_iters,
        s.WARMUP_FACTOR,
        s.FIBER.POLY_POWER,
        end,
        s.MAX_ITER,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=s.MAX_ITER)


def build_fiber_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """The LR scheduler of ``cfg`` (see module docstring).

    Returns:
        ``LRMultiplier`` (multi-step, with ``milestones`` and ``gamma`` attributes added; or
        polynomial decay) or :class:`WarmupReduceLROnPlateau` (``SOLVER.FIBER.USE_AUTOSTEP``).
    """
    s = cfg.SOLVER
    max_iter = s.MAX_ITER
    if max_iter <= 0:
        raise ValueError(
            f"SOLVER.MAX_ITER must be > 0, got {max_iter} (or set SOLVER.FIBER.MAX_EPOCH)"
        )
    if s.FIBER.USE_AUTOSTEP:
        return WarmupReduceLROnPlateau(
            optimizer,
            warmup_iters=s.WARMUP_ITERS,
            warmup_factor=s.WARMUP_FACTOR,
            warmup_method=s.WARMUP_METHOD,
            factor=s.GAMMA,
            patience=s.FIBER.STEP_PATIENCE,
            min_lr=s.FIBER.MIN_LR,
        )
    if s.LR_SCHEDULER_NAME == "WarmupPolyLR":
        return _build_poly_scheduler(cfg, optimizer)
    if s.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ValueError(
            f"SOLVER.LR_SCHEDULER_NAME {s.LR_SCHEDULER_NAME!r} is not used by the FIBER recipes: "
            "use WarmupMultiStepLR, WarmupPolyLR (coarse-grained) or SOLVER.FIBER.USE_AUTOSTEP"
        )
    milestones = resolve_milestones(s.STEPS, max_iter)
    warmup_iters = resolve_warmup_iters(cfg)
    sched = OfficialMultiStepParamScheduler(
        max_iter=max_iter,
        milestones=milestones,
        gamma=s.GAMMA,
        warmup_iters=warmup_iters,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_method=s.WARMUP_METHOD,
    )
    scheduler = LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)
    scheduler.milestones = milestones
    scheduler.gamma = s.GAMMA
    logger.info(
        "LR schedule: warm-up %d iterations (factor %g, %s), x%g at iterations %s of %d",
        warmup_iters,
        s.WARMUP_FACTOR,
        s.WARMUP_METHOD,
        s.GAMMA,
        milestones,
        max_iter,
    )
    return scheduler


def multistep_lr_multiplier(
    iteration: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
    method: str = "linear",
) -> float:
    """Closed form of the official ``WarmupMultiStepLR`` (for tests and checks)."""
    warmup = warmup_multiplier(iteration, warmup_iters, warmup_factor, method)
    return warmup * gamma ** bisect_right(list(milestones), iteration)
