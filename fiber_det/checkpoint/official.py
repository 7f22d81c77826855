"""Convert official FIBER fine-grained checkpoints (maskrcnn_benchmark layout) to fiber_det.

Released files (``fiber_coarse_then_fine.pth``, ``fiber_coco.pth``, ``fiber_lvis.pth``,
``fiber_refcoco*.pth`` ...) hold ``{"model": state_dict, ...}`` (or a bare state_dict), usually
with DDP's ``module.`` prefix. Every key is either renamed by an explicit rule or dropped for a
stated reason (buffers that the model rebuilds, and the unused ``cls_logits``); any other key is
an error, never silently ignored.

Key layout of the official model: ``microsoft/FIBER`` ``fine_grained`` (see also
``shared/parity/official_keys_v{2,3}.json``).
"""

import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Tuple

from torch import Tensor

__all__ = [
    "ConversionReport",
    "CheckpointError",
    "convert_official_state_dict",
    "detect_fusion_version",
    "is_official_state_dict",
    "unwrap_state_dict",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted or does not fit the model."""


_SWIN = "fusion_backbone.backbone.body."
_FPN = "fusion_backbone.backbone.fpn."
_TEXT = "fusion_backbone.language_backbone.body.model."
_HEAD = "rpn.head."

# (pattern, replacement) applied to the key without its ``module.`` prefix; first match wins.
_RENAMES: List[Tuple[str, str]] = [
    (r"^fusion_backbone\.backbone\.body\.(.+)$", r"backbone.body.\1"),
    (
        r"^fusion_backbone\.backbone\.fpn\.fpn_inner(\d)\.(.+)$",
        "backbone.fpn.lateral_convs.{0}.{1}",
    ),
    (r"^fusion_backbone\.backbone\.fpn\.fpn_layer(\d)\.(.+)$", "backbone.fpn.output_convs.{0}.{1}"),
    (r"^fusion_backbone\.backbone\.fpn\.top_blocks\.(p6|p7)\.(.+)$", r"backbone.fpn.\1.\2"),
    (r"^fusion_backbone\.language_backbone\.body\.model\.(.+)$", r"backbone.language.\1"),
    (r"^fusion_backbone\.tunable_linear\.weight$", "backbone.tunable_linear.weight"),
    (
        r"^rpn\.head\.dyhead_tower\.(\d+)\.DyConv\.(\d)\.conv\.(weight|bias)$",
        r"head.tower.\1.convs.\2.\3",
    ),
    (
        r"^rpn\.head\.dyhead_tower\.(\d+)\.DyConv\.(\d)\.bn\.(weight|bias)$",
        r"head.tower.\1.convs.\2.norm.\3",
    ),
    (
        r"^rpn\.head\.dyhead_tower\.(\d+)\.AttnConv\.1\.(weight|bias)$",
        r"head.tower.\1.scale_attn.\2",
    ),
    (
        r"^rpn\.head\.dyhead_tower\.(\d+)\.relu\.fc\.0\.(weight|bias)$",
        r"head.tower.\1.dyrelu.fc1.\2",
    ),
    (
        r"^rpn\.head\.dyhead_tower\.(\d+)\.relu\.fc\.2\.(weight|bias)$",
        r"head.tower.\1.dyrelu.fc2.\2",
    ),
    (r"^rpn\.head\.dyhead_tower\.(\d+)\.offset\.(weight|bias)$", r"head.tower.\1.offset.\2"),
    (r"^rpn\.head\.(bbox_pred|centerness)\.(weight|bias)$", r"head.\1.\2"),
    (r"^rpn\.head\.scales\.(\d+)\.scale$", r"head.scales.\1.scale"),
    (r"^rpn\.head\.dot_product_projection_text\.(weight|bias)$", r"head.text_proj.\1"),
    (r"^rpn\.head\.(log_scale|bias_lang|bias0)$", r"head.\1"),
]

# Keys deliberately not converted, with the reason shown in the report.
_DROPS: List[Tuple[str, str]] = [
    (r"relative_position_index$", "buffer, rebuilt by the model"),
    (r"embeddings\.position_ids$", "buffer, rebuilt by the model"),
    (r"^rpn\.anchor_generator\.cell_anchors\.\d+$", "buffer, anchors are rebuilt from the config"),
    (
        r"^rpn\.head\.cls_logits\.(weight|bias)$",
        "unused by FIBER (its output only gives a shape; its loss is multiplied by 0)",
    ),
]


def _component(new_key: str) -> str:
    """Report bucket of a converted key."""
    if new_key.startswith("backbone.body."):
        return "swin (i2t fusion)" if re.search(r"_i2t", new_key) else "swin"
    if new_key.startswith("backbone.language."):
        return "roberta (t2i fusion)" if re.search(r"_t2i", new_key) else "roberta"
    if new_key.startswith("backbone.fpn."):
        return "fpn"
    if new_key.startswith("backbone.tunable_linear"):
        return "prompt tuning"
    if new_key.startswith("head."):
        return "head"
    return "other"


@dataclass
class ConversionReport:
    """What a conversion did, by component."""

    variant: str
    converted: Counter = field(default_factory=Counter)
    dropped: Dict[str, List[str]] = field(default_factory=dict)
    missing: Dict[str, List[str]] = field(default_factory=dict)
    had_module_prefix: bool = False

    def format(self) -> str:
        lines = [
            f"official FIBER checkpoint, fusion {self.variant}"
            + (" (DDP 'module.' prefix stripped)" if self.had_module_prefix else "")
        ]
        lines.append(f"converted {sum(self.converted.values())} tensors:")
        for comp, n in sorted(self.converted.items()):
            lines.append(f"  {comp:<22s} {n}")
        lines.append(f"dropped {sum(len(v) for v in self.dropped.values())} entries:")
        for reason, keys in self.dropped.items():
            lines.append(f"  {len(keys):4d}  {reason}")
        if self.missing:
            lines.append("missing in the checkpoint (keep their initial values):")
            for comp, keys in sorted(self.missing.items()):
                lines.append(
                    f"  {comp:<22s} {len(keys)}: {', '.join(keys[:4])}"
                    + (" ..." if len(keys) > 4 else "")
                )
        else:
            lines.append("missing: none")
        lines.append("unexpected: none")
        return "\n".join(lines)


def unwrap_state_dict(obj) -> Tuple[Dict[str, Tensor], bool]:
    """Return (state_dict, had_module_prefix) from a raw state_dict, ``{"model": sd}`` or
    ``{"state_dict": sd}``; strips DDP's ``module.`` prefix when every key has it."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif (
        isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping)
    ):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            "checkpoint holds no state_dict (expected tensors, or {'model': ...})"
        )
    keys = list(obj)
    prefixed = [k.startswith("module.") for k in keys]
    if all(prefixed):
        return OrderedDict((k[len("module.") :], v) for k, v in obj.items()), True
    if any(prefixed):
        raise CheckpointError(
            f"{sum(prefixed)} of {len(keys)} keys start with 'module.' and the rest do not: "
            "a checkpoint mixing DDP and non-DDP keys cannot be mapped unambiguously"
        )
    return OrderedDict(obj), False


def is_official_state_dict(keys: Iterable[str]) -> bool:
    """True for the maskrcnn_benchmark layout of FIBER (with or without ``module.``)."""
    return any(k.replace("module.", "", 1).startswith("fusion_backbone.") for k in keys)


def detect_fusion_version(keys: Iterable[str]) -> str:
    """ "v3" when the i2t query LayerNorm (``attn.norm_i2t_i``) is present, else "v2"."""
    return "v3" if any(".attn.norm_i2t_i." in k for k in keys) else "v2"


def _rename(key: str) -> str | None:
    for pattern, repl in _RENAMES:
        m = re.match(pattern, key)
        if m is None:
            continue
        if "{0}" in repl:  # FPN: official fpn_inner2..4 are our lateral/output convs 0..2
            return repl.format(int(m.group(1)) - 2, m.group(2))
        return m.expand(repl)
    return None


def _drop_reason(key: str) -> str | None:
    for pattern, reason in _DROPS:
        if re.search(pattern, key):
            return reason
    return None


def convert_official_state_dict(
    obj,
    expected_variant: str | None = None,
    model_shapes: Mapping[str, Tuple[int, ...]] | None = None,
) -> Tuple["OrderedDict[str, Tensor]", ConversionReport]:
    """Convert an official FIBER checkpoint to fiber_det parameter names.

    Args:
        obj: the loaded checkpoint (raw state_dict or ``{"model": ...}``).
        expected_variant (str, optional): "v2" or "v3" of the target model; a mismatch is an
            error that says which config to use.
        model_shapes (mapping, optional): state_dict key -> shape of the target model; keys the
            checkpoint does not provide are listed in the report; keys the model does not have,
            or of another shape, are an error (they would be dropped on load).
    Returns:
        (state_dict, report)
    Raises:
        CheckpointError: unknown keys, a wrong fusion variant, or keys the model lacks.
    """
    sd, had_prefix = unwrap_state_dict(obj)
    if not is_official_state_dict(sd):
        raise CheckpointError(
            "not an official FIBER fine-grained checkpoint (no 'fusion_backbone.*' keys); "
            f"first keys: {list(sd)[:3]}"
        )
    variant = detect_fusion_version(sd)
    if expected_variant is not None and variant != expected_variant:
        hint = (
            "official_parity_v3.yaml / refcoco configs"
            if variant == "v3"
            else "official_parity_v2.yaml / coco, lvis configs"
        )
        raise CheckpointError(
            f"checkpoint is fusion {variant} ({'has' if variant == 'v3' else 'lacks'} "
            f"'attn.norm_i2t_i') but the model is built with MODEL.FIBER.FUSION_VERSION "
            f"{expected_variant}: set MODEL.FIBER.FUSION_VERSION {variant} (configs/fiber_b/{hint})"
        )
    report = ConversionReport(variant=variant, had_module_prefix=had_prefix)
    out: OrderedDict[str, Tensor] = OrderedDict()
    unknown = []
    for key, value in sd.items():
        reason = _drop_reason(key)
        if reason is not None:
            report.dropped.setdefault(reason, []).append(key)
            continue
        new_key = _rename(key)
        if new_key is None:
            unknown.append(key)
            continue
        out[new_key] = value
        report.converted[_component(new_key)] += 1
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys have no mapping and would be lost: "
            f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    if model_shapes is not None:
        extra = [k for k in out if k not in model_shapes]
        if extra:
            raise CheckpointError(
                f"{len(extra)} converted keys do not exist in the model (architecture mismatch, "
                f"e.g. NUM_FUSION_LAYERS or Swin/RoBERTa size): {extra[:8]}"
            )
        wrong = [
            f"{k} {tuple(out[k].shape)} vs model {tuple(model_shapes[k])}"
            for k in out
            if tuple(out[k].shape) != tuple(model_shapes[k])
        ]
        if wrong:
            raise CheckpointError(
                f"{len(wrong)} tensors have another shape than the model (architecture mismatch; "
                f"official checkpoints need the FIBER-B configs): {wrong[:6]}"
            )
        for k in sorted(set(model_shapes) - set(out)):
            report.missing.setdefault(_component(k), []).append(k)
    return out, report
