"""Initialise the image and text encoders from public uni-modal checkpoints.

* Swin ImageNet checkpoints in the original Microsoft layout (``swin_base_patch4_window12_384_22k
  .pth``: ``{"model": {...}}``, patch merging at the end of each stage) or timm's layout (patch
  merging at the start of the next stage, ``head.fc``); relative position bias tables are
  resized bicubically when the window size differs (as Swin's own fine-tuning code does). The
  final norm loads into a Swin that has one (the coarse-grained model, as the official stage 1),
  and is skipped with the classifier otherwise.
* ``roberta-base`` from a folder (``model.safetensors`` or ``pytorch_model.bin``), a single file,
  or the local Hugging Face cache (never downloaded); ``roberta.`` prefixes, ``lm_head`` and
  ``pooler`` are handled.

The fusion modules (i2t / t2i cross-attention and their gates) and the detection-only output
norms have no counterpart and start from scratch; the returned :class:`LoadReport` lists them.
"""

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from huggingface_hub import snapshot_download
from torch import Tensor, nn

from ..modeling.backbone.roberta import FusionRobertaModel
from ..modeling.backbone.swin import FusionSwinTransformer
from ..utils.io import load_torch_file

__all__ = [
    "LoadReport",
    "PICKLE_HINT",
    "is_roberta_state_dict",
    "is_swin_state_dict",
    "load_roberta_pretrained",
    "load_swin_pretrained",
    "map_roberta_state_dict",
    "map_swin_state_dict",
    "find_submodule",
    "read_state_dict",
]

# How a user opts in to a trusted pickle, wherever fiber-det reads weights.
PICKLE_HINT = (
    "pass allow_pickle=True (config: MODEL.WEIGHTS_ALLOW_PICKLE True; tools: --allow-pickle)"
)

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What an initialisation loaded (by component), skipped (by reason) and left untouched."""

    source: str
    loaded: Counter = field(default_factory=Counter)
    skipped: Dict[str, List[str]] = field(default_factory=dict)
    missing: Dict[str, List[str]] = field(default_factory=dict)
    resized: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def num_loaded(self) -> int:
        return sum(self.loaded.values())

    def format(self) -> str:
        lines = [f"{self.source}: loaded {self.num_loaded} tensors"]
        for comp, n in sorted(self.loaded.items()):
            lines.append(f"  {comp:<28s} {n}")
        if self.resized:
            lines.append(f"  resized to the model: {len(self.resized)} ({self.resized[0]} ...)")
        for reason, keys in self.skipped.items():
            lines.append(f"skipped {len(keys):4d}: {reason}")
        for comp, keys in sorted(self.missing.items()):
            lines.append(f"from scratch {len(keys):4d}: {comp}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def read_state_dict(path: Union[str, Path], *, allow_pickle: bool = False) -> Dict[str, Tensor]:
    """Tensors of a checkpoint file (``.safetensors``, or a torch file; ``model`` /
    ``state_dict`` wrappers removed), read by the safe :func:`load_torch_file`."""
    obj = load_torch_file(path, allow_pickle=allow_pickle, hint=PICKLE_HINT)
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not contain a state_dict")
    return dict(obj)


def find_submodule(model: nn.Module, cls: type) -> Tuple[str, nn.Module]:
    """``(prefix, module)`` of the only instance of ``cls`` in ``model`` (e.g. its Swin)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]
    if len(found) != 1:
        raise ValueError(
            f"the model has {len(found)} {cls.__name__} modules; a {cls.__name__} checkpoint "
            "needs exactly one to load into"
        )
    name, module = found[0]
    return (name + "." if name else ""), module


def _assign(module: nn.Module, state: Mapping[str, Tensor], report: LoadReport, component) -> None:
    """Copy matching tensors into ``module``; shape mismatches are errors."""
    own = module.state_dict()
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if own[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{report.source}: {len(wrong)} tensors do not fit the model: {wrong[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    for k in own:
        if k not in state:
            report.missing.setdefault(component(k), []).append(k)


# -- Swin --------------------------------------------------------------------------------------
def _resize_bias_table(table: Tensor, new_len: int) -> Tensor:
    """Bicubic resize of a (2w-1)^2 x heads relative position bias table to another window."""
    old = int(round(table.shape[0] ** 0.5))
    new = int(round(new_len**0.5))
    grid = table.t().reshape(1, table.shape[1], old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new * new).t()


def _swin_component(key: str) -> str:
    if "_i2t" in key:
        return "swin i2t fusion"
    if re.match(r"norm\d+\.", key):
        return "swin output norms (detection)"
    return "swin"


def is_swin_state_dict(keys) -> bool:
    """True for a Swin ImageNet checkpoint (Microsoft or timm layout, no model prefix)."""
    keys = set(keys)
    return "patch_embed.proj.weight" in keys and any(k.startswith("layers.0.") for k in keys)


def map_swin_state_dict(
    state: Mapping[str, Tensor], own: Mapping[str, Tensor], source: str = "Swin state_dict"
) -> Tuple[Dict[str, Tensor], LoadReport]:
    """ImageNet Swin keys (Microsoft or timm layout) -> keys of a FusionSwinTransformer.

    Args:
        state: the checkpoint's tensors.
        own: the target Swin's ``state_dict()`` (names and shapes).
    Returns:
        (tensors by target key, report); bias tables of another window size are resized.
    """
    report = LoadReport(source=source)
    timm_layout = "layers.0.downsample.reduction.weight" not in state and any(
        re.match(r"layers\.[1-9]\d*\.downsample\.", k) for k in state
    )
    mapped: Dict[str, Tensor] = {}
    for key, value in state.items():
        if re.search(r"(relative_position_index|attn_mask)$", key):
            report.skipped.setdefault("buffers rebuilt by the model", []).append(key)
            continue
        if key.startswith("head.") or (key.startswith("norm.") and key not in own):
            report.skipped.setdefault("ImageNet classifier (head, final norm)", []).append(key)
            continue
        if timm_layout:
            key = re.sub(
                r"^layers\.(\d+)\.downsample",
                lambda m: f"layers.{int(m.group(1)) - 1}.downsample",
                key,
            )
        if key not in own:
            report.skipped.setdefault("not in this Swin (deeper/other architecture)", []).append(
                key
            )
            continue
        if key.endswith("relative_position_bias_table") and value.shape != own[key].shape:
            value = _resize_bias_table(value, own[key].shape[0])
            report.resized.append(key)
        mapped[key] = value
        report.loaded[_swin_component(key)] += 1
    if not mapped:
        raise ValueError(f"{source}: no Swin tensor matched (is this a Swin ImageNet checkpoint?)")
    return mapped, report


def load_swin_pretrained(
    swin: nn.Module, source: Union[str, Path, Mapping[str, Tensor]], *, allow_pickle: bool = False
) -> LoadReport:
    """Load ImageNet Swin weights (Microsoft or timm layout) into a FusionSwinTransformer.

    Args:
        swin: ``FIBERBackbone.body``.
        source: a checkpoint path or an already loaded state_dict.
    """
    name = str(source) if not isinstance(source, Mapping) else "Swin state_dict"
    state = (
        dict(source)
        if isinstance(source, Mapping)
        else read_state_dict(source, allow_pickle=allow_pickle)
    )
    mapped, report = map_swin_state_dict(state, swin.state_dict(), name)
    _assign(swin, mapped, report, _swin_component)
    logger.info("%s", report.format())
    return report


# -- RoBERTa -----------------------------------------------------------------------------------
def _resolve_roberta_file(source: Union[str, Path]) -> Path:
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return path
    if not path.is_dir():
        try:
            path = Path(snapshot_download(str(source), local_files_only=True))
        except Exception as e:  # noqa: BLE001  any hub failure means "not cached"
            raise FileNotFoundError(
                f"roberta weights {source!r}: not a file or folder and not in the local "
                "Hugging Face "
                f"cache ({type(e).__name__}). Download once where there is network "
                f"(`huggingface-cli download {source}`) or set MODEL.LANGUAGE.WEIGHTS to a folder"
            ) from e
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")


def _roberta_component(key: str) -> str:
    return "roberta t2i fusion" if ("_t2i" in key) else "roberta"


def is_roberta_state_dict(keys) -> bool:
    """True for a ``roberta-base``-layout checkpoint (with or without the ``roberta.`` prefix)."""
    return any(
        k in ("embeddings.word_embeddings.weight", "roberta.embeddings.word_embeddings.weight")
        for k in keys
    )


def map_roberta_state_dict(
    state: Mapping[str, Tensor], own: Mapping[str, Tensor], source: str = "RoBERTa state_dict"
) -> Tuple[Dict[str, Tensor], LoadReport]:
    """``roberta-base`` keys -> keys of a FusionRobertaModel (``roberta.`` prefix, old
    ``gamma``/``beta`` LayerNorm names, task heads and buffers handled).

    Returns:
        (tensors by target key, report).
    """
    report = LoadReport(source=source)
    mapped: Dict[str, Tensor] = {}
    for key, value in state.items():
        k = key[len("roberta.") :] if key.startswith("roberta.") else key
        k = re.sub(
            r"LayerNorm\.gamma$",
            "LayerNorm.weight",
            re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k),
        )
        if k.startswith(("lm_head.", "pooler.", "classifier.")):
            report.skipped.setdefault("task heads (lm_head, pooler)", []).append(key)
            continue
        if k.endswith(("position_ids", "token_type_ids")):
            report.skipped.setdefault("buffers rebuilt by the model", []).append(key)
            continue
        if k not in own:
            report.skipped.setdefault(
                "not in this RoBERTa (more layers than the model)", []
            ).append(key)
            continue
        mapped[k] = value
        report.loaded[_roberta_component(k)] += 1
    if not mapped:
        raise ValueError(
            f"{source}: no RoBERTa tensor matched (is this a roberta-base checkpoint?)"
        )
    return mapped, report


def load_roberta_pretrained(
    text_model: nn.Module,
    source: Union[str, Path, Mapping[str, Tensor]],
    *,
    allow_pickle: bool = False,
) -> LoadReport:
    """Load ``roberta-base``-layout weights into a FusionRobertaModel.

    Args:
        text_model: ``FIBERBackbone.language``.
        source: a folder, a file, a Hugging Face id in the local cache, or a state_dict.
    """
    if isinstance(source, Mapping):
        name, state = "RoBERTa state_dict", dict(source)
    else:
        file = _resolve_roberta_file(source)
        name, state = str(file), read_state_dict(file, allow_pickle=allow_pickle)
    mapped, report = map_roberta_state_dict(state, text_model.state_dict(), name)
    _assign(text_model, mapped, report, _roberta_component)
    logger.info("%s", report.format())
    return report


def load_pretrained_encoders(model: nn.Module, cfg) -> List[LoadReport]:
    """Apply ``MODEL.SWIN.WEIGHTS`` and ``MODEL.LANGUAGE.WEIGHTS`` (either may be empty) to the
    model's Swin and RoBERTa, wherever they are in it. Used when training starts from uni-modal
    weights instead of ``MODEL.WEIGHTS``.

    Returns:
        the reports of the files loaded.
    """
    allow = cfg.MODEL.WEIGHTS_ALLOW_PICKLE
    reports = []
    if cfg.MODEL.SWIN.WEIGHTS:
        _, swin = find_submodule(model, FusionSwinTransformer)
        reports.append(load_swin_pretrained(swin, cfg.MODEL.SWIN.WEIGHTS, allow_pickle=allow))
    if cfg.MODEL.LANGUAGE.WEIGHTS:
        _, text = find_submodule(model, FusionRobertaModel)
        reports.append(
            load_roberta_pretrained(text, cfg.MODEL.LANGUAGE.WEIGHTS, allow_pickle=allow)
        )
    return reports
