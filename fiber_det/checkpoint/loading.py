"""A model ready for inference from a config: build it, load ``MODEL.WEIGHTS`` (any format
:class:`FIBERCheckpointer` reads), optionally its EMA weights."""

import logging
import os
from typing import Mapping

from detectron2.modeling import build_model
from torch import nn

from .checkpointer import FIBERCheckpointer
from .official import convert_official_state_dict, is_official_state_dict

__all__ = ["build_and_load_model", "load_ema_weights"]

logger = logging.getLogger(__name__)


def load_ema_weights(model: nn.Module, checkpoint: Mapping) -> bool:
    """Load ``checkpoint["model_ema"]`` into ``model`` (official EMA weights are converted).

    Args:
        model: a FIBERDetector (DDP-wrapped or not).
        checkpoint: a loaded checkpoint dict (what ``FIBERCheckpointer.load`` returns).
    Returns:
        bool: False when the checkpoint has no ``model_ema`` (the model is left unchanged).
    """
    state = checkpoint.get("model_ema") if isinstance(checkpoint, Mapping) else None
    if not state:
        return False
    inner = model.module if hasattr(model, "module") else model
    state = dict(state)
    if is_official_state_dict(state):
        shapes = {k: tuple(v.shape) for k, v in inner.state_dict().items()}
        state, report = convert_official_state_dict(state, model_shapes=shapes)
        logger.info("Converted the official model_ema:\n%s", report.format())
    elif state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    result = inner.load_state_dict(state, strict=False)
    if result.missing_keys:
        logger.warning(
            "model_ema lacks %d model tensors, e.g. %s",
            len(result.missing_keys),
            result.missing_keys[:5],
        )
    logger.info("Loaded the EMA weights (model_ema) for evaluation")
    return True


def build_and_load_model(cfg, *, resume: bool = False) -> nn.Module:
    """``build_model(cfg)`` with its weights, in eval mode.

    Args:
        cfg: a config; ``MODEL.WEIGHTS`` is loaded (official, coarse-grained, Swin, RoBERTa or
            fiber-det files), then ``model_ema`` when ``SOLVER.FIBER.USE_EMA_FOR_EVAL``.
        resume: load the last checkpoint of ``OUTPUT_DIR`` instead, when there is one
            (``tools/train_net.py --eval-only --resume``).
    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` names a local file that does not exist.
    """
    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    checkpointer = FIBERCheckpointer(
        model, save_dir=cfg.OUTPUT_DIR, allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE
    )
    if not weights and not (resume and checkpointer.has_checkpoint()):
        logger.warning("MODEL.WEIGHTS is empty: the model keeps its random initialisation")
        return model.eval()
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights {weights} not found: set --weights / MODEL.WEIGHTS")
    checkpoint = checkpointer.resume_or_load(weights, resume=resume)
    if cfg.SOLVER.FIBER.USE_EMA_FOR_EVAL and not load_ema_weights(model, checkpoint):
        logger.warning("SOLVER.FIBER.USE_EMA_FOR_EVAL: %s has no model_ema", weights)
    return model.eval()
