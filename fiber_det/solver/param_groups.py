"""Optimizer parameter groups of FIBER training.

The official rule (``make_optimizer`` in microsoft/FIBER ``maskrcnn_benchmark/solver/build.py``),
rewritten for this package's parameter names:

* LR: ``SOLVER.BASE_LR`` for the image side (Swin, its image-to-text fusion), the FPN and the
  head; ``SOLVER.FIBER.LANG_LR`` for every parameter under ``backbone.language.`` (officially
  ``language_backbone``, which includes the text-to-image fusion ``crossattention_t2i`` and its
  gate ``alpha_t2i``); the Swin body additionally x ``BACKBONE_BODY_LR_FACTOR``.
* a name containing ``"bias"`` gets ``BIAS_LR_FACTOR`` x LR and ``WEIGHT_DECAY_BIAS``. This is a
  substring test, so Swin's ``relative_position_bias_table`` and the head's ``bias_lang`` and
  ``bias0`` are "biases" too (2x LR, no decay in every FIBER recipe).
* a name containing ``"norm"`` / ``"Norm"`` gets its weight decay x ``WEIGHT_DECAY_NORM_FACTOR``
  (1.0 officially, so norms keep the decay). The rule is applied to the *official* names: our head
  GroupNorms (``head.tower.*.convs.*.norm.*``) are ``dyhead_tower.*.DyConv.*.bn.*`` there and are
  not norms for it.
* frozen parameters (``requires_grad`` False) are left out.

The coarse-grained model (stage 1) has its own official rule, the policy ``"official_coarse"``
(``set_schedule`` in microsoft/FIBER ``coarse_grained/fiber/modules/fiber_utils.py``): one LR for
every parameter, x ``lr_mult_head`` for the task heads (``mlm_score``, ``itm_score``, ...) and x
``lr_mult_cross_modal`` for the cross-modal names (``cross_modal``, ``i2t``, ``t2i``); no weight
decay for names containing an entry of its no-decay list (``bias``, ``LayerNorm.weight``,
``norm.weight``, ``norm1.weight``, ...), ``weight_decay`` for the rest. The official names differ
from ours only by the prefixes ``vit_model.`` / ``text_transformer.`` (ours ``backbone.body.`` /
``backbone.language.``), which match none of these substrings, so the rule applies to our names
as it is. Families: "base", "head", "cross_modal".

Each group carries ``family`` ("base" or "lang", for logging), ``kind`` and
``initial_weight_decay`` (for the weight-decay schedule). Groups with equal hyper-parameters are
merged, so the optimizer has a handful of groups instead of one per tensor (the update is the
same: AdamW and SGD are element-wise).
"""

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from torch import nn

__all__ = [
    "PARAM_GROUP_POLICIES",
    "ParamRule",
    "build_param_groups",
    "classify_parameter",
    "coarse_rule",
    "is_official_norm",
    "summarize_param_groups",
]

logger = logging.getLogger(__name__)

PARAM_GROUP_POLICIES = ("official", "no_decay_norm_embed", "official_coarse")

LANG_PREFIX = "backbone.language."
BODY_PREFIXES = ("backbone.body.", "backbone.tunable_linear")  # officially both under body

# Not official ("no_decay_norm_embed"): parameters that are not weights of a linear map.
_NO_DECAY_MARKERS = (
    "embeddings.",
    "relative_position_bias_table",
    "absolute_pos_embed",
    "alpha_i2t",
    "alpha_t2i",
    "log_scale",
    "bias_lang",
    "bias0",
    "head.scales.",
    "tunable_linear",
)


# Official coarse rule (set_schedule): substrings of the parameter name.
COARSE_NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "norm.bias",
    "norm.weight",
    "norm1.bias",
    "norm1.weight",
    "norm2.bias",
    "norm2.weight",
)
COARSE_HEAD_NAMES = (
    "vqa_classifier",
    "nlvr2_classifier",
    "mlm_score",
    "itm_score",
    "snli_classifier",
)
COARSE_CROSS_MODAL_NAMES = ("cross_modal", "i2t", "t2i")


@dataclass(frozen=True)
class ParamRule:
    """Hyper-parameters of one parameter.

    Attributes:
        family (str): "base" (image side, FPN, head) or "lang" (text encoder).
        kind (str): "weight", "bias" (the substring rule) or "norm".
        lr (float): its learning rate.
        weight_decay (float): its weight decay.
    """

    family: str
    kind: str
    lr: float
    weight_decay: float


def is_official_norm(name: str) -> bool:
    """Whether the official name of this parameter contains "norm"/"Norm".

    Swin (``norm1``, ``norm2``, ``patch_embed.norm``, ``downsample.norm``, ``norm_i2t_i``, output
    norms) and RoBERTa (``LayerNorm``) keep their names in the official checkpoints; the head's
    GroupNorms are called ``bn`` there.
    """
    if name.startswith("head."):
        return False
    return "norm" in name or "Norm" in name


def classify_parameter(
    name: str,
    *,
    base_lr: float,
    lang_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
    weight_decay_norm_factor: float = 1.0,
    body_lr_factor: float = 1.0,
    policy: str = "official",
    lr_mult_head: float = 1.0,
    lr_mult_cross_modal: float = 1.0,
) -> ParamRule:
    """The :class:`ParamRule` of parameter ``name`` (a ``FIBERDetector`` parameter name, or a
    ``FIBERCoarse`` one for the policy ``"official_coarse"``, which uses only ``base_lr``,
    ``weight_decay``, ``lr_mult_head`` and ``lr_mult_cross_modal``)."""
    if policy not in PARAM_GROUP_POLICIES:
        raise ValueError(
            f"SOLVER.FIBER.PARAM_GROUPS must be one of {PARAM_GROUP_POLICIES}, got {policy!r}"
        )
    if policy == "official_coarse":
        return coarse_rule(
            name,
            base_lr=base_lr,
            weight_decay=weight_decay,
            lr_mult_head=lr_mult_head,
            lr_mult_cross_modal=lr_mult_cross_modal,
        )
    family = "lang" if name.startswith(LANG_PREFIX) else "base"
    lr = lang_lr if family == "lang" else base_lr
    if name.startswith(BODY_PREFIXES):
        lr *= body_lr_factor
    wd, kind = weight_decay, "weight"
    if policy == "official":
        if "bias" in name:
            lr *= bias_lr_factor
            wd, kind = weight_decay_bias, "bias"
        if is_official_norm(name):
            wd *= weight_decay_norm_factor
            kind = "norm" if kind == "weight" else kind
        return ParamRule(family, kind, lr, wd)
    # "no_decay_norm_embed": decay only the weights of linear / conv maps.
    is_norm = "norm" in name.lower()
    if name.endswith(".bias") or is_norm or any(m in name for m in _NO_DECAY_MARKERS):
        kind = "bias" if name.endswith(".bias") else ("norm" if is_norm else "other")
        wd = 0.0
    return ParamRule(family, kind, lr, wd)


def coarse_rule(
    name: str,
    *,
    base_lr: float,
    weight_decay: float,
    lr_mult_head: float,
    lr_mult_cross_modal: float,
) -> ParamRule:
    """The official coarse-grained rule (``set_schedule``) for parameter ``name``.

    Officially a name that is both a head name and a cross-modal name falls in none of the six
    groups (it would not be trained); no FIBER parameter is both, and here the head rule wins.
    """
    no_decay = any(s in name for s in COARSE_NO_DECAY)
    wd, kind = (0.0, "no_decay") if no_decay else (weight_decay, "weight")
    if any(s in name for s in COARSE_HEAD_NAMES):
        return ParamRule("head", kind, base_lr * lr_mult_head, wd)
    if any(s in name for s in COARSE_CROSS_MODAL_NAMES):
        return ParamRule("cross_modal", kind, base_lr * lr_mult_cross_modal, wd)
    return ParamRule("base", kind, base_lr, wd)


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    lang_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
    weight_decay_norm_factor: float = 1.0,
    body_lr_factor: float = 1.0,
    policy: str = "official",
    lr_mult_head: float = 1.0,
    lr_mult_cross_modal: float = 1.0,
) -> List[Dict]:
    """Optimizer parameter groups of a FIBERDetector or FIBERCoarse (see module docstring).

    Returns:
        list[dict]: groups with ``params``, ``lr``, ``weight_decay``, ``initial_weight_decay``,
        ``family``, ``kind`` and ``param_names`` (for logging and tests).
    """
    groups: Dict[Tuple, Dict] = OrderedDict()
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        rule = classify_parameter(
            name,
            base_lr=base_lr,
            lang_lr=lang_lr,
            weight_decay=weight_decay,
            bias_lr_factor=bias_lr_factor,
            weight_decay_bias=weight_decay_bias,
            weight_decay_norm_factor=weight_decay_norm_factor,
            body_lr_factor=body_lr_factor,
            policy=policy,
            lr_mult_head=lr_mult_head,
            lr_mult_cross_modal=lr_mult_cross_modal,
        )
        key = (rule.family, rule.kind, rule.lr, rule.weight_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": rule.lr,
                "weight_decay": rule.weight_decay,
                "initial_weight_decay": rule.weight_decay,
                "family": rule.family,
                "kind": rule.kind,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError(
            "no trainable parameter: every parameter is frozen (check MODEL.SWIN.FREEZE, "
            "MODEL.LANGUAGE.FREEZE, MODEL.FPN.FREEZE, MODEL.DYHEAD.FREEZE, "
            "MODEL.FIBER.LINEAR_PROBE)"
        )
    return list(groups.values())


def summarize_param_groups(groups: Sequence[Dict]) -> str:
    """One line per group: family, kind, LR, weight decay and size."""
    lines = ["Optimizer parameter groups (family / kind: lr, weight decay, tensors, elements):"]
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        lines.append(
            f"  {g.get('family', '?'):<5s} {g.get('kind', '?'):<6s} lr={g['lr']:.3g} "
            f"wd={g['weight_decay']:.3g} tensors={len(g['params'])} elements={numel}"
        )
    return "\n".join(lines)
