"""The training checkpointer: atomic saves, official and coarse-grained files on load.

detectron2 / fvcore write checkpoints (and ``last_checkpoint``) in place, so a crash or a full disk
during a save can leave a truncated ``model_final.pth`` that ``--resume`` then fails on. Here every
local file is written to a temporary file next to it and renamed over it
(:mod:`fiber_det.utils.io`), and ``last_checkpoint`` is only updated after the checkpoint is
complete. Remote paths (PathManager URIs) keep fvcore's behaviour.

``MODEL.WEIGHTS`` may name an official fine-grained FIBER file (converted by
:class:`~fiber_det.checkpoint.FIBERCheckpointer`) or a coarse-grained FIBER checkpoint (stage 1 of
the two-stage procedure; converted by :mod:`fiber_det.checkpoint.coarse`, FPN and head from
scratch).
"""

import logging
import os
from typing import Any, Dict, Mapping

import torch

from ..checkpoint import FIBERCheckpointer
from ..checkpoint.coarse import convert_coarse_state_dict, is_coarse_state_dict
from ..utils.io import atomic_open

__all__ = ["FIBERTrainingCheckpointer"]

logger = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _write_atomically(path: str, mode: str, write) -> None:
    """Write through a temporary file renamed over ``path`` (:func:`atomic_open`)."""
    path = path.replace("file://", "", 1)
    with atomic_open(path, mode) as f:
        write(f)


class FIBERTrainingCheckpointer(FIBERCheckpointer):
    """``FIBERCheckpointer`` with atomic saves and coarse-grained initialisation.

    Same arguments as detectron2's ``DetectionCheckpointer`` (``model``, ``save_dir``,
    ``save_to_disk``, checkpointables such as ``trainer`` and ``model_ema``).
    """

    def __init__(self, model, save_dir: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        if _is_local(save_file):
            _write_atomically(save_file, "wb", lambda f: torch.save(data, f))
        else:
            with self.path_manager.open(save_file, "wb") as f:
                torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        if not _is_local(path):
            super().tag_last_checkpoint(last_filename_basename)
            return
        _write_atomically(path, "w", lambda f: f.write(last_filename_basename))

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        state = loaded.get("model")
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]  # a Lightning checkpoint wrapped by detectron2
        if not isinstance(state, Mapping) or not is_coarse_state_dict(state):
            return loaded
        converted, report = convert_coarse_state_dict(state, self.model, source=filename)
        self.last_conversion_report = report
        logger.info("Initialising from a coarse-grained FIBER checkpoint\n%s", report.format())
        return {
            "model": converted,
            "__author__": "FIBER coarse-grained",
            "matching_heuristics": False,
        }
