"""``FIBERCheckpointer``: the one checkpointer of fiber-det, for every weights format it reads.

``FIBERCheckpointer(model).load(path)`` (and so ``MODEL.WEIGHTS``, ``--weights``,
``FIBERPredictor.from_files``) takes, recognised by their keys:

* fiber-det's own checkpoints (detectron2 format ``{"model": ..., "trainer": ..., ...}``);
* official fine-grained FIBER files (maskrcnn_benchmark keys ``fusion_backbone.*``, ``rpn.*``):
  converted and checked by :mod:`.official`;
* coarse-grained FIBER files (stage 1: the official ``vit_model.*``, ``text_transformer.*`` keys
  as a ``.pt`` or a Lightning ``{"state_dict": ...}`` file, or a ``FIBERCoarse`` checkpoint):
  converted for the model they load into, the coarse model itself (:mod:`.coarse_model`) or the
  detector's backbone (:mod:`.coarse`);
* ImageNet Swin (Microsoft or timm layout) and ``roberta-base`` files: loaded into the model's
  Swin or RoBERTa by :mod:`.pretrained`, everything else left as it is.

Every file is read by :func:`fiber_det.utils.io.load_torch_file`: tensors only, unless the caller
opts in with ``allow_pickle`` (``MODEL.WEIGHTS_ALLOW_PICKLE``) for a file it trusts. A file of which
no tensor fits the model is an error, never a warning followed by a randomly initialised model.

Saves are atomic: a checkpoint is written to a temporary file renamed over the target, and
``last_checkpoint`` only points at it once it is complete (detectron2/fvcore write in place, so a
crash during a save could leave a truncated file that ``--resume`` then fails on).
"""

import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import Tensor, nn

from ..modeling.backbone.roberta import FusionRobertaModel
from ..modeling.backbone.swin import FusionSwinTransformer
from ..utils.io import atomic_open, load_torch_file
from .coarse_model import convert_checkpoint_for_model
from .official import CheckpointError, convert_official_state_dict, is_official_state_dict
from .pretrained import (
    PICKLE_HINT,
    find_submodule,
    is_roberta_state_dict,
    is_swin_state_dict,
    map_roberta_state_dict,
    map_swin_state_dict,
)

__all__ = ["FIBERCheckpointer"]

logger = logging.getLogger(__name__)

_LIGHTNING_KEYS = ("pytorch-lightning_version", "epoch", "global_step", "hyper_parameters")
# A file of which fewer tensors than this share fit the model (name and shape) is of another model
# or architecture: an error. A model that gets fewer of its own tensors than this share from the
# file is warned about (fine-tuning may replace a head, but not most of the model).
_MIN_FITTING_SHARE = 0.5


def _unwrap_model_state(obj: Any) -> Tuple[Any, Dict[str, Any], bool]:
    """(model state, other entries, is Lightning) of a loaded file: ``{"model": ...}``
    (detectron2, official), ``{"state_dict": ...}`` (Lightning), or a bare state_dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict of tensors, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            extra = {k: v for k, v in obj.items() if k != key}
            lightning = key == "state_dict" or any(k in extra for k in _LIGHTNING_KEYS)
            # Lightning's optimizer / loop states are not ours to resume
            return obj[key], ({} if lightning else extra), lightning
    return obj, {}, False


class FIBERCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` for every FIBER weights format (module docstring).

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``
            (``trainer``, ``model_ema``, ...).
        allow_pickle (bool): read files holding Python objects besides tensors (runs code from
            the file: only for files you trust).
    Attributes:
        last_conversion_report: what the last load converted (None for fiber-det's own files).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_pickle: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = allow_pickle
        self.last_conversion_report = None
        self._loading: Optional[str] = None

    # -- reading -----------------------------------------------------------------------------
    def _load_file(self, filename: str) -> Dict[str, Any]:
        obj = load_torch_file(filename, allow_pickle=self.allow_pickle, hint=PICKLE_HINT)
        self._loading = filename
        self.last_conversion_report = None
        state, extra, lightning = _unwrap_model_state(obj)
        model = self.model.module if hasattr(self.model, "module") else self.model
        # Coarse-grained files (official Lightning files, FIBERCoarse checkpoints) for either
        # model, and the coarse model's own refusals (.coarse_model).
        coarse = convert_checkpoint_for_model(
            {"model": {"state_dict": state} if lightning else state}, model, filename
        )
        if coarse is not None:
            checkpoint, self.last_conversion_report = coarse
            return checkpoint
        converted = self._convert(state, filename)
        if converted is None:
            return {"model": dict(state), **extra}
        out = {"model": converted, "__author__": "converted by FIBERCheckpointer"}
        if "model_ema" in extra:  # official files may hold EMA weights (load_ema_weights)
            out["model_ema"] = extra["model_ema"]
        return out

    def _convert(self, state: Mapping[str, Tensor], source: str) -> Optional[Dict[str, Tensor]]:
        """The model's keys for a file of another format, or None for fiber-det's own keys."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        keys = list(state)
        if is_official_state_dict(keys):
            converted, report = convert_official_state_dict(
                state,
                expected_variant=_fusion_version(model),
                model_shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
            )
            what = "official FIBER fine-grained checkpoint"
        elif is_swin_state_dict(keys) or is_roberta_state_dict(keys):
            cls, mapper = (
                (FusionSwinTransformer, map_swin_state_dict)
                if is_swin_state_dict(keys)
                else (FusionRobertaModel, map_roberta_state_dict)
            )
            prefix, module = find_submodule(model, cls)
            mapped, report = mapper(state, module.state_dict(), source)
            converted = {prefix + k: v for k, v in mapped.items()}
            what = f"{cls.__name__} weights into {prefix.rstrip('.')}"
        else:
            return None
        self.last_conversion_report = report
        logger.info("Loading a %s from %s\n%s", what, source, report.format())
        return dict(converted)

    def _load_model(self, checkpoint: Dict[str, Any]):
        num_tensors = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        model = self.model.module if hasattr(self.model, "module") else self.model
        unused = len(incompatible.unexpected_keys) + len(incompatible.incorrect_shapes)
        fitting = num_tensors - unused
        if fitting <= 0 or fitting < _MIN_FITTING_SHARE * num_tensors:
            raise CheckpointError(
                f"{self._loading}: only {max(fitting, 0)} of its {num_tensors} tensors fit the "
                f"model ({type(model).__name__}): it is a checkpoint of another model or "
                "architecture. Check MODEL.WEIGHTS and the config (MODEL.META_ARCHITECTURE, "
                "fusion version, Swin / RoBERTa sizes); to reuse part of it on purpose, keep the "
                "wanted tensors in a file of their own"
            )
        own = model.state_dict()
        loaded = len(own) - len(incompatible.missing_keys) - len(incompatible.incorrect_shapes)
        if self.last_conversion_report is None and loaded < _MIN_FITTING_SHARE * len(own):
            logger.warning(
                "%s: only %d of the model's %d tensors were loaded; the rest keep their initial "
                "values. Is this checkpoint from another config?",
                self._loading,
                loaded,
                len(own),
            )
        return incompatible

    # -- writing -----------------------------------------------------------------------------
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
            with atomic_open(save_file.replace("file://", "", 1), "wb") as f:
                torch.save(data, f)
        else:
            with self.path_manager.open(save_file, "wb") as f:
                torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        if not _is_local(path):
            super().tag_last_checkpoint(last_filename_basename)
            return
        with atomic_open(path.replace("file://", "", 1), "w") as f:
            f.write(last_filename_basename)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _fusion_version(model: nn.Module) -> str:
    """ "v3" if the model's fused Swin blocks have the i2t query LayerNorm, else "v2"."""
    names = (n for n, _ in model.named_parameters())
    return "v3" if any(".attn.norm_i2t_i." in n for n in names) else "v2"
