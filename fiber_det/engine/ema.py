"""Model EMA of FIBER training (official ``SOLVER.MODEL_EMA``, ``utils/ema.py`` there).

After every optimizer step, each entry of the model's ``state_dict`` is averaged:
``ema = decay * ema + (1 - decay) * value`` (decay 0.999 in the FIBER recipes). Like the official
``ModelEma``, the whole ``state_dict`` is averaged (parameters, frozen ones included, and
floating-point buffers); integer buffers (e.g. Swin's ``relative_position_index``) are copied,
since averaging them would only round them. The average is saved in checkpoints under
``model_ema`` (the official container key) without a ``module.`` prefix, and can replace the
weights for evaluation (:meth:`ModelEMA.apply_to`).
"""

import logging
from contextlib import contextmanager
from typing import Dict, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["ModelEMA"]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class ModelEMA:
    """Exponential moving average of a model's ``state_dict``.

    Args:
        model (nn.Module): the trained model (DDP-wrapped or not).
        decay (float): EMA decay in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"SOLVER.FIBER.MODEL_EMA must be in (0, 1) to enable EMA, got {decay}")
        self.decay = decay
        self.shadow: Dict[str, Tensor] = {}
        self.loaded_from_checkpoint = False
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average from the model's current weights."""
        self.shadow = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step from the model's current weights."""
        current = _unwrap(model).state_dict()
        for key, ema in self.shadow.items():
            value = current[key].detach()
            if ema.is_floating_point():
                ema.mul_(self.decay).add_(value.to(ema.dtype), alpha=1.0 - self.decay)
            else:
                ema.copy_(value)

    def state_dict(self) -> Dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a saved average (a ``module.`` prefix on every key is removed)."""
        state = dict(state)
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(
                f"model_ema in the checkpoint does not fit the model: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                "resume with the config the checkpoint was trained with"
            )
        for k, v in state.items():
            self.shadow[k].copy_(v.to(self.shadow[k].device))
        self.loaded_from_checkpoint = True

    @contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the averaged weights into ``model`` (restored on exit)."""
        inner = _unwrap(model)
        backup = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        inner.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            inner.load_state_dict(backup)
