"""Training-time freezes of a FIBERDetector (official microsoft/FIBER / GLIP options).

* ``MODEL.SWIN.FROZEN_STAGES`` (official ``FREEZE_CONV_BODY_AT``) is applied by the Swin itself.
* ``MODEL.LANGUAGE.FREEZE``: the whole text encoder, its text-to-image fusion included
  (``backbone.language``), official ``LANGUAGE_BACKBONE.FREEZE``.
* ``MODEL.SWIN.FREEZE``: the whole Swin, its image-to-text fusion included (``backbone.body``),
  official ``BACKBONE.FREEZE``; ``MODEL.FPN.FREEZE`` and ``MODEL.DYHEAD.FREEZE`` (official
  ``FPN.FREEZE`` / ``RPN.FREEZE``).
* ``MODEL.FIBER.LINEAR_PROBE``: official ``LINEAR_PROB`` as set by GLIP/FIBER
  ``tools/finetune.py`` ("linear_prob"): only :data:`LINEAR_PROBE_PARAMS` train (the per-level
  ``head.scales`` stay frozen, as officially).
* ``MODEL.FIBER.USE_PROMPT_TUNING``: only the prompt offsets ``backbone.tunable_linear`` train
  (GLIP's "language_prompt_v2"); with ``LINEAR_PROBE`` also the linear-probe layers
  ("language_prompt_v4").

A frozen module has ``requires_grad`` False on its parameters and stays in eval mode even when
the model is put back in training mode (dropout / drop-path off), as the official code does.
"""

import logging
import types
from typing import Dict, List

from torch import nn

__all__ = ["LINEAR_PROBE_PARAMS", "apply_training_freezes", "freeze_module", "trainable_summary"]

logger = logging.getLogger(__name__)

# The final prediction layers (official names bbox_pred, centerness,
# dot_product_projection_text, log_scale, bias_lang, bias0).
LINEAR_PROBE_PARAMS = (
    "head.bbox_pred.",
    "head.centerness.",
    "head.text_proj.",
    "head.log_scale",
    "head.bias_lang",
    "head.bias0",
)


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen module: always eval mode."""
    return nn.Module.train(self, False)


def freeze_module(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: no gradients, eval mode that survives ``model.train()``."""
    for p in module.parameters():
        p.requires_grad_(False)
    for m in module.modules():
        m.train = types.MethodType(_eval_only_train, m)
    module.eval()
    return module


def _freeze_params_except(model: nn.Module, keep_prefixes) -> None:
    for name, p in model.named_parameters():
        if not name.startswith(tuple(keep_prefixes)):
            p.requires_grad_(False)


def apply_training_freezes(model: nn.Module, cfg) -> Dict[str, int]:
    """Apply the freezes of ``cfg`` to a FIBERDetector (see module docstring).

    Returns:
        dict: ``trainable`` / ``frozen`` parameter counts (elements).
    """
    backbone = model.backbone
    linear_probe = cfg.MODEL.FIBER.LINEAR_PROBE
    prompt = cfg.MODEL.FIBER.USE_PROMPT_TUNING
    if prompt and getattr(backbone, "tunable_linear", None) is None:
        raise ValueError("MODEL.FIBER.USE_PROMPT_TUNING is set but the model has no prompt offsets")
    frozen: List[str] = []
    if cfg.MODEL.LANGUAGE.FREEZE or linear_probe or prompt:
        freeze_module(backbone.language)
        frozen.append("text encoder (backbone.language)")
    if cfg.MODEL.SWIN.FREEZE or linear_probe or prompt:
        freeze_module(backbone.body)
        frozen.append("Swin (backbone.body)")
    if cfg.MODEL.FPN.FREEZE or linear_probe or prompt:
        freeze_module(backbone.fpn)
        frozen.append("FPN (backbone.fpn)")
    if cfg.MODEL.DYHEAD.FREEZE or (prompt and not linear_probe):
        freeze_module(model.head)
        frozen.append("head")
    if linear_probe or prompt:
        keep = list(LINEAR_PROBE_PARAMS) if linear_probe else []
        if prompt:
            keep.append("backbone.tunable_linear.")
        _freeze_params_except(model, keep)
        frozen.append(f"everything but {keep}")
    summary = trainable_summary(model)
    if frozen:
        logger.info(
            "Frozen for training: %s. Trainable parameters: %d of %d",
            "; ".join(frozen),
            summary["trainable"],
            summary["trainable"] + summary["frozen"],
        )
    return summary


def trainable_summary(model: nn.Module) -> Dict[str, int]:
    """Numbers of trainable and frozen parameter elements."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}
