"""Initialise the fine-grained FIBER model from a coarse-grained FIBER checkpoint (stage 1 -> 2).

FIBER trains in two stages (Dou et al. 2022, Sec. 3): the coarse-grained model (microsoft/FIBER
``coarse_grained/fiber/modules/fiber_module.py``, METER-style, ITC/ITM/MLM on 384x384 images)
initialises the fused backbone of the fine-grained detector (``fiber_coarse_init.pt`` for the v2
run, ``fiber_coarse_init_for_refexp.pt`` for v3). The official loader strips the prefixes
``vit_model.`` and ``text_transformer.`` and suffix-matches the rest onto the fine-grained model;
this module does the same mapping explicitly:

* ``vit_model.*`` -> ``backbone.body.*``: Swin blocks (Microsoft layout: patch merging at the end
  of each stage), patch embedding, the image-to-text fusion (``attn.qkv_text_i2t``, ``qkv_i2t``,
  ``proj_i2t``, ``alpha_i2t``). The coarse Swin has the i2t query LayerNorm ``attn.norm_i2t_i``
  (``swin_transformer.py``), which only a v3 model uses; a v2 model skips it (the official v2
  pre-training did too).
* ``text_transformer.*`` -> ``backbone.language.*``: RoBERTa, its text-to-image fusion
  (``crossattention_t2i``, ``alpha_t2i``) included.
* Not loaded, listed in the report: the ImageNet classifier and final norm of the coarse Swin
  (``vit_model.head``, ``vit_model.norm``), buffers the model rebuilds, the text pooler, the gates
  ``alpha_t2i`` of text layers without fusion and the cross-attention output LayerNorms (the
  coarse model defines both but never uses them; the fine-grained one has neither), and every
  coarse-only module (``cross_modal_*`` transforms and poolers, ``itm_score``, ``mlm_score``,
  ``rank_output``, ITC temperature and queues, task classifiers).
* From scratch: the FPN, the head, and the Swin output norms ``norm1..3`` that feed the FPN.

The coarse model skips the output LayerNorm of its last text layer in its fused path
(``last_norm=(blk_cnt == 0)`` in ``fiber_module.py``, i.e. only for layer 10 of 12); the
fine-grained model applies it. The coarse model does apply it in its uni-modal ITC path (all 12
layers without cross-attention), so its tensors are trained by ITC alone and are loaded; the
fine-grained model uses them after the fused layer, where the coarse model never did. This is what
the official fine-grained pre-training started from too. (Inferred from the code; the released
files could not be inspected here.)
"""

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import torch
from torch import Tensor, nn

from ..utils.io import load_torch_file
from .official import CheckpointError
from .pretrained import LoadReport, _resize_bias_table

__all__ = [
    "convert_coarse_state_dict",
    "is_coarse_state_dict",
    "is_fiber_det_coarse_state_dict",
    "load_coarse_pretrained",
    "read_coarse_checkpoint",
    "to_official_coarse_state_dict",
]

logger = logging.getLogger(__name__)

_SWIN, _TEXT = "vit_model.", "text_transformer."
# Official coarse prefixes and those of fiber_det's models (FIBERCoarse, FIBERDetector).
PREFIXES = ((_SWIN, "backbone.body."), (_TEXT, "backbone.language."))
_SKIP_COARSE_ONLY = (
    "coarse-only modules (ITC/ITM/MLM heads, cross-modal transforms, poolers, queues)"
)
_SKIP_SWIN_HEAD = "coarse Swin classifier and final norm (vit_model.head, vit_model.norm)"
_SKIP_BUFFERS = "buffers rebuilt by the model"
_SKIP_V3_NORM = "i2t query LayerNorm norm_i2t_i (v3 only; this model is v2)"
_SKIP_POOLER = "text pooler (text_transformer.pooler)"
_SKIP_UNUSED = (
    "defined but unused in the coarse model (alpha_t2i of unfused text layers, "
    "crossattention_t2i.output.LayerNorm)"
)
_SKIP_OTHER = "not in this model (other architecture or fusion layout)"


def is_coarse_state_dict(keys) -> bool:
    """True for a coarse-grained FIBER state_dict (``vit_model.*`` / ``text_transformer.*``)."""
    return any(k.replace("module.", "", 1).startswith((_SWIN, _TEXT)) for k in keys)


# Keys of METER (Dou et al., CVPR 2022; FIBER's stage 1 grew from it), which shares the coarse
# model's prefixes (vit_model., text_transformer., cross_modal_*) but not its architecture.
_METER_KEYS = ("vit_model.visual.", "cross_modal_image_layers.", "cross_modal_text_layers.")


def refuse_meter_state_dict(sd: Mapping[str, Tensor], source: str) -> None:
    """Raise a ``CheckpointError`` naming METER for a METER state_dict (shared key prefixes)."""
    found = [k for k in sd if k.startswith(_METER_KEYS)]
    if found:
        raise CheckpointError(
            f"{source}: a METER-style checkpoint ({len(found)} keys such as {found[:2]}: a CLIP "
            "ViT vit_model.visual.* and co-attention layers cross_modal_image_layers.*), not a "
            "coarse-grained FIBER one (Swin vit_model.layers.* with fusion in the backbone): use "
            "a FIBER coarse file (fiber_pretrain.ckpt) or train stage 1 (README, Stage 1)"
        )


def to_official_coarse_state_dict(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A FIBERCoarse state_dict in the official coarse layout (``vit_model.*``,
    ``text_transformer.*``, ``rank_output`` = row 1 of the ITM classifier, top-level queues), as
    read by the official code and by :mod:`.coarse` (stage 1 -> 2)."""
    out: Dict[str, Tensor] = {}
    for key, value in state.items():
        for old, new in PREFIXES:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out[key[len("queue.") :] if key.startswith("queue.") else key] = value
    if "itm_score.fc.weight" in out:
        out["rank_output.weight"] = out["itm_score.fc.weight"][1:].clone()
        out["rank_output.bias"] = out["itm_score.fc.bias"][1:].clone()
    return out


def is_fiber_det_coarse_state_dict(state: Mapping[str, Tensor]) -> bool:
    """True for a state_dict of fiber_det's coarse-grained model (FIBERCoarse, stage 1)."""
    return any(k.startswith("backbone.body.") for k in state) and any(
        k.startswith(("cross_modal_", "itm_score.", "mlm_score.")) for k in state
    )


def read_coarse_checkpoint(
    path: Union[str, Path], *, allow_pickle: bool = False
) -> Dict[str, Tensor]:
    """The state_dict of a coarse-grained checkpoint (``.pt``, a Lightning ``.ckpt``, or a
    FIBERCoarse checkpoint of fiber_det, returned in the official layout).

    Args:
        path: the file.
        allow_pickle: load with ``torch.load(weights_only=False)``. Lightning checkpoints may hold
            Python objects besides tensors; only enable this for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coarse-grained checkpoint not found: {path}")
    obj = load_torch_file(
        path,
        allow_pickle=allow_pickle,
        hint="convert it once with `tools/convert_coarse_checkpoint.py --allow-pickle` (or pass "
        "allow_pickle=True); Lightning checkpoints hold such objects",
    )
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if isinstance(obj, Mapping) and is_fiber_det_coarse_state_dict(obj):
        return to_official_coarse_state_dict(obj)
    if not isinstance(obj, Mapping) or not is_coarse_state_dict(obj):
        raise ValueError(
            f"{path} is not a coarse-grained FIBER checkpoint (no vit_model.* / "
            "text_transformer.* keys, nor a FIBERCoarse checkpoint)"
        )
    return dict(obj)


def _strip_module(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _swin_reason(key: str, own: Mapping[str, Tensor]) -> str | None:
    """Why a ``vit_model.`` key (prefix removed) is not loaded, or None to load it."""
    if re.search(r"(relative_position_index|attn_mask)$", key):
        return _SKIP_BUFFERS
    if key.startswith(("head.", "norm.")):
        return _SKIP_SWIN_HEAD
    if ".norm_i2t_i." in key and key not in own:
        return _SKIP_V3_NORM
    return None if key in own else _SKIP_OTHER


def _text_reason(key: str, own: Mapping[str, Tensor]) -> str | None:
    """Why a ``text_transformer.`` key (prefix removed) is not loaded, or None to load it."""
    if key.endswith(("position_ids", "token_type_ids")):
        return _SKIP_BUFFERS
    if key.startswith("pooler."):
        return _SKIP_POOLER
    if "crossattention_t2i.output.LayerNorm" in key:
        return _SKIP_UNUSED
    if key.endswith("alpha_t2i") and key not in own:
        return _SKIP_UNUSED
    return None if key in own else _SKIP_OTHER


def _component(key: str) -> str:
    if key.startswith("backbone.body."):
        if "_i2t" in key:
            return "swin i2t fusion"
        if re.match(r"backbone\.body\.norm\d+\.", key):
            return "swin output norms (detection)"
        return "swin"
    if key.startswith("backbone.language."):
        return "roberta t2i fusion" if "_t2i" in key else "roberta"
    if key.startswith("backbone.fpn."):
        return "fpn"
    if key.startswith("head."):
        return "head"
    return key.split(".")[0]


def _map_key(key: str, swin_own, text_own) -> Tuple[str | None, str | None]:
    """(model key, None) for a key to load, or (None, skip reason)."""
    if key.startswith(_SWIN):
        k = key[len(_SWIN) :]
        reason = _swin_reason(k, swin_own)
        return (None, reason) if reason else ("backbone.body." + k, None)
    if key.startswith(_TEXT):
        k = key[len(_TEXT) :]
        reason = _text_reason(k, text_own)
        return (None, reason) if reason else ("backbone.language." + k, None)
    return None, _SKIP_COARSE_ONLY


def convert_coarse_state_dict(
    state: Mapping[str, Tensor], model: nn.Module, source: str = "coarse-grained FIBER"
) -> Tuple[Dict[str, Tensor], LoadReport]:
    """Map a coarse-grained state_dict onto a FIBERDetector's keys (see module docstring).

    Returns:
        (state_dict with model keys, report). Relative position bias tables of another window
        size are resized; any other shape mismatch is an error.
    """
    state = _strip_module(state)
    refuse_meter_state_dict(state, source)
    inner = model.module if hasattr(model, "module") else model
    swin_own = inner.backbone.body.state_dict()
    text_own = inner.backbone.language.state_dict()
    own = inner.state_dict()
    report = LoadReport(source=source)
    mapped: Dict[str, Tensor] = {}
    wrong = []
    for key, value in state.items():
        new, reason = _map_key(key, swin_own, text_own)
        if new is None:
            report.skipped.setdefault(reason, []).append(key)
            continue
        if new.endswith("relative_position_bias_table") and value.shape != own[new].shape:
            value = _resize_bias_table(value, own[new].shape[0])
            report.resized.append(new)
        if value.shape != own[new].shape:
            wrong.append(f"{key}: {tuple(value.shape)} vs {new} {tuple(own[new].shape)}")
            continue
        mapped[new] = value
        report.loaded[_component(new)] += 1
    if wrong:
        raise ValueError(
            f"{source}: {len(wrong)} tensors do not fit the model (is the config the FIBER-B "
            f"layout the checkpoint was trained with?): {wrong[:5]}"
        )
    if not mapped:
        raise ValueError(f"{source}: no tensor matched the model (not a coarse FIBER checkpoint?)")
    for k, v in own.items():
        if k not in mapped and v.is_floating_point():
            report.missing.setdefault(_component(k), []).append(k)
    _add_notes(report, state, mapped, inner)
    return mapped, report


def _add_notes(report: LoadReport, state, mapped, model) -> None:
    coarse_only = sorted({k.split(".")[0] for k in report.skipped.get(_SKIP_COARSE_ONLY, [])})
    if coarse_only:
        report.notes.append(f"coarse-only modules skipped: {', '.join(coarse_only)}")
    last = len(model.backbone.language.encoder.layer) - 1
    key = f"backbone.language.encoder.layer.{last}.output.LayerNorm.weight"
    if key in mapped:
        report.notes.append(
            f"text layer {last} output LayerNorm: loaded; the coarse model applied it only in "
            "its uni-modal ITC path (its fused path skips it), the fine-grained model applies it"
        )
    report.notes.append(
        "Swin output norms norm1..3 (FPN inputs), the FPN and the head start from scratch"
    )


def load_coarse_pretrained(
    model: nn.Module,
    source: Union[str, Path, Mapping[str, Tensor]],
    *,
    allow_pickle: bool = False,
) -> LoadReport:
    """Load a coarse-grained FIBER checkpoint (path or state_dict) into a FIBERDetector.

    Returns:
        LoadReport: what was loaded (by component), skipped (by reason) and starts from scratch.
    """
    if isinstance(source, Mapping):
        name, state = "coarse-grained FIBER state_dict", dict(source)
    else:
        name, state = str(source), read_coarse_checkpoint(source, allow_pickle=allow_pickle)
    mapped, report = convert_coarse_state_dict(state, model, source=name)
    inner = model.module if hasattr(model, "module") else model
    own = inner.state_dict()
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v.to(own[k].dtype))
    logger.info("%s", report.format())
    return report


def coarse_load_counts(report: LoadReport) -> Counter:
    """Skipped tensors per reason (for logs and tests)."""
    return Counter({reason: len(keys) for reason, keys in report.skipped.items()})
