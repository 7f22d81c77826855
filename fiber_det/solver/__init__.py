"""Optimizer and schedules of FIBER training (official microsoft/FIBER recipes)."""

from .build import build_fiber_optimizer, with_full_model_gradient_clipping
from .lr_scheduler import (
    PolynomialDecayParamScheduler,
    WarmupReduceLROnPlateau,
    build_fiber_lr_scheduler,
    multistep_lr_multiplier,
    poly_lr_multiplier,
    resolve_milestones,
    resolve_warmup_iters,
    warmup_multiplier,
    weight_decay_multiplier,
)
from .param_groups import (
    PARAM_GROUP_POLICIES,
    ParamRule,
    build_param_groups,
    classify_parameter,
    coarse_rule,
    is_official_norm,
    summarize_param_groups,
)

__all__ = [
    "PARAM_GROUP_POLICIES",
    "ParamRule",
    "PolynomialDecayParamScheduler",
    "WarmupReduceLROnPlateau",
    "build_fiber_lr_scheduler",
    "build_fiber_optimizer",
    "build_param_groups",
    "classify_parameter",
    "coarse_rule",
    "is_official_norm",
    "multistep_lr_multiplier",
    "poly_lr_multiplier",
    "resolve_milestones",
    "resolve_warmup_iters",
    "summarize_param_groups",
    "warmup_multiplier",
    "weight_decay_multiplier",
    "with_full_model_gradient_clipping",
]
