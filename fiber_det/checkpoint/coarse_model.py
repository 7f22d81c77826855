"""Checkpoints of the coarse-grained model (:class:`~fiber_det.modeling.FIBERCoarse`).

Official coarse-grained FIBER files (PyTorch Lightning, ``{"state_dict": {...}}``:
``fiber_pretrain.ckpt``, ``fiber_{coco,f30k}_irtr_{itc,itm}.ckpt``; keys of
``shared/parity/official_coarse_keys.json``) load into FIBERCoarse through
:class:`~fiber_det.checkpoint.FIBERCheckpointer` (``MODEL.WEIGHTS``). Every key is renamed by a
rule or dropped for a stated reason, as the fine-grained converter (:mod:`.official`) does:

* ``vit_model.*`` -> ``backbone.body.*``, ``text_transformer.*`` -> ``backbone.language.*``; the
  heads (``cross_modal_*``, ``itm_score``, ``mlm_score``, ``temp``) keep their names;
* ``rank_output`` (the official retrieval scorer) is written over row 1 of ``itm_score.fc``: in the
  official model its weight is a view of that row, so loading a checkpoint on CPU writes it there
  (it comes later in the state_dict), and ITM uses those values;
* dropped: the ITC queues (the official loader drops them), buffers the model rebuilds, the
  ImageNet classifier ``vit_model.head``, the unused text pooler, gates and LayerNorms the official
  model defines but never uses (``alpha_t2i`` of unfused layers,
  ``crossattention_t2i.output.LayerNorm``), and heads of other tasks (VQA, NLVR2, captioning);
* relative position bias tables of another window (another image size) are resized bicubically,
  as the official ``swin_adapt_position_encoding``.

:func:`convert_checkpoint_for_model` is the dispatch the checkpointer calls: a coarse file
initialises a FIBERCoarse (above) or a FIBERDetector (:mod:`.coarse`, stage 1 -> 2), a coarse
model's own checkpoint may initialise a detector as well, and files of other models are refused.
"""

import logging
import re
from typing import Dict, Mapping, Tuple

from torch import Tensor, nn

from .coarse import (
    PREFIXES,
    convert_coarse_state_dict,
    is_coarse_state_dict,
    is_fiber_det_coarse_state_dict,
    refuse_meter_state_dict,
    to_official_coarse_state_dict,
)
from .official import CheckpointError, ConversionReport, is_official_state_dict, unwrap_state_dict
from .pretrained import _resize_bias_table

__all__ = [
    "CoarseConversionReport",
    "convert_checkpoint_for_model",
    "convert_official_coarse_state_dict",
]

logger = logging.getLogger(__name__)

_QUEUES = (
    "image_queue",
    "text_queue",
    "image_input_queue",
    "text_input_queue",
    "text_input_mask_queue",
    "queue_ptr",
    "queue_total",
)
_DROPS = [
    (r"^(" + "|".join(_QUEUES) + r")$", "ITC queue (the official loader drops it too)"),
    (
        r"(relative_position_index|attn_mask|position_ids|token_type_ids)$",
        "buffer, rebuilt by the model",
    ),
    (r"^vit_model\.head\.", "ImageNet classifier of the Swin"),
    (r"^text_transformer\.pooler\.", "text pooler (unused by the coarse model)"),
    (
        r"crossattention_t2i\.output\.LayerNorm\.",
        "defined but unused by the official model (cross-attention output LayerNorm)",
    ),
    (
        r"^(vqa_classifier|nlvr2_classifier|snli_classifier|cross_modal_att_layers)\.",
        "head of another task (VQA, NLVR2, captioning)",
    ),
]
_RANK_OUTPUT = ("rank_output.weight", "rank_output.bias")


class CoarseConversionReport(ConversionReport):
    """:class:`ConversionReport` of a coarse-grained file, with notes and resized tables."""

    def __init__(self, source: str, had_module_prefix: bool = False):
        super().__init__(variant="coarse", had_module_prefix=had_module_prefix)
        self.source = source
        self.resized: list = []
        self.notes: list = []

    def format(self) -> str:
        lines = super().format().splitlines()
        lines[0] = f"official coarse-grained FIBER checkpoint {self.source}" + (
            " (DDP 'module.' prefix stripped)" if self.had_module_prefix else ""
        )
        if self.resized:
            lines.append(f"resized to this image size: {len(self.resized)} position bias tables")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _component(key: str) -> str:
    if key.startswith("backbone.body."):
        return "swin (i2t fusion)" if "_i2t" in key else "swin"
    if key.startswith("backbone.language."):
        return "roberta (t2i fusion)" if "_t2i" in key else "roberta"
    if key.endswith("_itc.weight") or key.endswith("_itc.bias") or "_itc." in key or key == "temp":
        return "itc transforms, poolers, temperature"
    if key.startswith(("itm_score.", "mlm_score.")):
        return key.split(".")[0]
    if key.startswith("queue."):
        return "itc queue"
    return "cross-modal transforms, poolers"


def _drop_reason(key: str, own: Mapping[str, Tensor]) -> str | None:
    for pattern, reason in _DROPS:
        if re.search(pattern, key):
            return reason
    if re.match(r"^text_transformer\.encoder\.layer\.\d+\.alpha_t2i$", key):
        if "backbone.language." + key[len("text_transformer.") :] not in own:
            return "defined but unused by the official model (gate of an unfused text layer)"
    for head, switch in (("itm_score.", "ITM"), ("mlm_score.", "MLM"), ("temp", "ITC")):
        if key.startswith(head) and key not in own:
            return f"head not built (MODEL.COARSE.{switch}_LOSS_WEIGHT is 0)"
    return None


def _rename(key: str) -> str:
    for old, new in PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _model_state(model: nn.Module) -> Dict[str, Tensor]:
    inner = model.module if hasattr(model, "module") else model
    return inner.state_dict()


def convert_official_coarse_state_dict(
    obj, model: nn.Module, source: str = "coarse-grained FIBER"
) -> Tuple[Dict[str, Tensor], CoarseConversionReport]:
    """Map an official coarse-grained state_dict (or ``{"state_dict": ...}``) onto a FIBERCoarse.

    Returns:
        (state_dict with the model's keys, report).
    Raises:
        CheckpointError: keys without a rule, tensors of the wrong shape, or nothing matching.
    """
    sd, had_prefix = unwrap_state_dict(obj)
    if not is_coarse_state_dict(sd):
        raise CheckpointError(
            f"{source}: not a coarse-grained FIBER checkpoint (no vit_model.* / "
            f"text_transformer.* keys); first keys: {list(sd)[:3]}"
        )
    refuse_meter_state_dict(sd, source)
    own = _model_state(model)
    report = CoarseConversionReport(source, had_prefix)
    out: Dict[str, Tensor] = {}
    unknown, wrong = [], []
    for key, value in sd.items():
        if key in _RANK_OUTPUT:
            continue
        reason = _drop_reason(key, own)
        if reason is not None:
            report.dropped.setdefault(reason, []).append(key)
            continue
        new = _rename(key)
        if new not in own:
            unknown.append(key)
            continue
        if new.endswith("relative_position_bias_table") and value.shape != own[new].shape:
            value = _resize_bias_table(value, own[new].shape[0])
            report.resized.append(new)
        if value.shape != own[new].shape:
            wrong.append(f"{key} {tuple(value.shape)} vs {new} {tuple(own[new].shape)}")
            continue
        out[new] = value
        report.converted[_component(new)] += 1
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} keys have no place in this model (another architecture, "
            f"e.g. NUM_FUSION_LAYERS or Swin/RoBERTa size?): {unknown[:6]}"
        )
    if wrong:
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors do not fit the model (is the config the FIBER-B "
            f"coarse layout the checkpoint was trained with?): {wrong[:6]}"
        )
    if not out:
        raise CheckpointError(f"{source}: no tensor of the checkpoint matches the model")
    _apply_rank_output(sd, out, own, report)
    for k, v in own.items():
        if k not in out and v.is_floating_point() and not k.startswith("queue."):
            report.missing.setdefault(_component(k), []).append(k)
    return out, report


def _apply_rank_output(sd, out, own, report: CoarseConversionReport) -> None:
    """Row 1 of ``itm_score.fc`` <- ``rank_output`` (shared memory in the official model)."""
    present = [k for k in _RANK_OUTPUT if k in sd]
    if not present:
        return
    if "itm_score.fc.weight" not in own:
        report.dropped.setdefault("rank_output (no ITM head)", []).extend(present)
        return
    for key, target in zip(_RANK_OUTPUT, ("itm_score.fc.weight", "itm_score.fc.bias")):
        if key not in sd:
            continue
        value = sd[key].reshape(own[target][1:].shape)
        merged = out.get(target, own[target]).clone()
        diff = float((merged[1:] - value).abs().max())
        merged[1:] = value
        out[target] = merged
        report.dropped.setdefault(
            "rank_output: written over itm_score.fc row 1 (the official model shares them)", []
        ).append(key)
        if diff > 0:
            report.notes.append(
                f"{key} differs from {target}[1] (max {diff:.3g}); the official model uses "
                f"rank_output's values for both, and so does this one"
            )


def _is_coarse_model(model: nn.Module) -> bool:
    from ..modeling.meta_arch.coarse import FIBERCoarse  # noqa: PLC0415  modeling imports us

    inner = model.module if hasattr(model, "module") else model
    return isinstance(inner, FIBERCoarse)


def convert_checkpoint_for_model(loaded: Dict, model: nn.Module, filename: str):
    """What :class:`FIBERCheckpointer` loads for ``model`` from the file ``filename``.

    Args:
        loaded: the file as detectron2 read it (``{"model": ..., ...}``).
    Returns:
        ``(checkpoint dict, report)`` when the file needs converting, else None (detectron2's
        loading applies).
    Raises:
        CheckpointError: a Lightning file of another model, a fine-grained file for the coarse
            model, a file with nothing matching the coarse model.
    """
    state = loaded.get("model")
    if not isinstance(state, Mapping):
        return None
    lightning = isinstance(state.get("state_dict"), Mapping)
    if lightning:
        state = state["state_dict"]
    coarse_model = _is_coarse_model(model)
    if is_coarse_state_dict(state):
        if coarse_model:
            converted, report = convert_official_coarse_state_dict(state, model, filename)
        else:
            converted, report = convert_coarse_state_dict(state, model, source=filename)
        logger.info("Loading a coarse-grained FIBER checkpoint\n%s", report.format())
        return _converted(converted, "FIBER coarse-grained (official)"), report
    if not coarse_model and is_fiber_det_coarse_state_dict(state):
        official = to_official_coarse_state_dict(state)
        converted, report = convert_coarse_state_dict(official, model, source=filename)
        logger.info("Initialising from a FIBERCoarse checkpoint\n%s", report.format())
        return _converted(converted, "fiber_det FIBERCoarse"), report
    if coarse_model and is_official_state_dict(state):
        raise CheckpointError(
            f"{filename} is an official fine-grained (detector) FIBER checkpoint: it cannot "
            "initialise the coarse-grained model; use a coarse file (fiber_pretrain.ckpt) or "
            "a detector config (configs/fiber_b/*.yaml)"
        )
    own = _model_state(model)
    if not any(k.replace("module.", "", 1) in own for k in state):
        if lightning or coarse_model:
            kind = "a Lightning checkpoint" if lightning else "a checkpoint"
            raise CheckpointError(
                f"{filename} is {kind} of another model: none of its keys (e.g. "
                f"{list(state)[:3]}) is a coarse-grained FIBER key (vit_model.*, "
                "text_transformer.*) or a key of this model"
            )
        return None
    if coarse_model:
        _adapt_own_state(state, model, filename)
    return None


def _converted(state: Dict[str, Tensor], author: str) -> Dict:
    return {"model": state, "__author__": author, "matching_heuristics": False}


def _adapt_own_state(state: Dict[str, Tensor], model: nn.Module, filename: str) -> None:
    """In place: a FIBERCoarse checkpoint of another image size or queue for this model."""
    inner = model.module if hasattr(model, "module") else model
    if inner.queue is not None and "queue.image_input_queue" in state:
        inner.queue.adopt_image_queue_shape(state["queue.image_input_queue"])
    own = inner.state_dict()
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    for key in wrong:
        if key.endswith("relative_position_bias_table"):
            state[key] = _resize_bias_table(state[key], own[key].shape[0])
            logger.info("%s: %s resized to this window", filename, key)
    if any(k.startswith("queue.") for k in wrong):
        # Another queue or image size: the whole queue is left out, the model starts empty.
        for key in [k for k in state if k.startswith("queue.")]:
            del state[key]
        logger.warning("%s: its ITC queue does not fit this model's; not loaded", filename)
