"""``build_fiber_optimizer(cfg, model)``: the official FIBER optimizer (AdamW by default).

The coarse-grained recipes use ``transformers.optimization.AdamW`` with betas (0.9, 0.98)
(``set_schedule``, microsoft/FIBER ``coarse_grained``): ``SOLVER.FIBER.ADAMW_BETAS``. Torch's
AdamW decays the weights before the Adam update, transformers' after it: the two differ by a term
of order lr^2 x weight decay per step.

Parameter groups: :mod:`fiber_det.solver.param_groups`. Gradient clipping follows
``SOLVER.CLIP_GRADIENTS``: ``CLIP_TYPE`` "full_model" clips the norm of all trained gradients
together before each step (official ``FullModelGradientClippingOptimizer`` in
microsoft/FIBER ``solver/build.py``, as in detectron2's DETR / Mask2Former projects); "value" and
"norm" are detectron2's per-parameter clipping.
"""

import itertools
import logging
from typing import Type

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from .param_groups import build_param_groups, summarize_param_groups

__all__ = ["build_fiber_optimizer", "with_full_model_gradient_clipping"]

logger = logging.getLogger(__name__)


def with_full_model_gradient_clipping(
    optimizer_class: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_class`` whose ``step`` first clips the total gradient norm.

    Under AMP, detectron2's ``AMPTrainer`` calls ``GradScaler.step``, which unscales the gradients
    before calling ``step``: the clipping sees true gradients.
    """

    class FullModelGradientClipping(optimizer_class):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{optimizer_class.__name__}FullModelGradientClipping"
    return FullModelGradientClipping


def build_fiber_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Optimizer of ``model`` from ``cfg.SOLVER`` (frozen parameters are left out)."""
    s = cfg.SOLVER
    # detectron2's None means "as WEIGHT_DECAY"; the FIBER recipes set 0 (official default).
    wd_bias = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
    groups = build_param_groups(
        model,
        base_lr=s.BASE_LR,
        lang_lr=s.FIBER.LANG_LR,
        weight_decay=s.WEIGHT_DECAY,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=wd_bias,
        weight_decay_norm_factor=s.FIBER.WEIGHT_DECAY_NORM_FACTOR,
        body_lr_factor=s.FIBER.BACKBONE_BODY_LR_FACTOR,
        policy=s.FIBER.PARAM_GROUPS,
        lr_mult_head=s.FIBER.LR_MULT_HEAD,
        lr_mult_cross_modal=s.FIBER.LR_MULT_CROSS_MODAL,
    )
    logger.info("%s", summarize_param_groups(groups))
    for g in groups:
        g.pop("param_names")  # torch >= 2.6 gives "param_names" its own meaning
    name = s.FIBER.OPTIMIZER.upper()
    if name == "ADAMW":
        betas = tuple(float(b) for b in s.FIBER.ADAMW_BETAS)
        if len(betas) != 2:
            raise ValueError(f"SOLVER.FIBER.ADAMW_BETAS needs two values, got {betas}")
        opt_class, kwargs = torch.optim.AdamW, {"betas": betas, "eps": s.FIBER.ADAMW_EPS}
    elif name == "SGD":
        opt_class, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        raise ValueError(f"SOLVER.FIBER.OPTIMIZER must be 'ADAMW' or 'SGD', got {name!r}")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        if clip.CLIP_VALUE > 0:
            opt_class = with_full_model_gradient_clipping(
                opt_class, clip.CLIP_VALUE, clip.NORM_TYPE
            )
        return opt_class(groups, lr=s.BASE_LR, **kwargs)
    optimizer = opt_class(groups, lr=s.BASE_LR, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer)
