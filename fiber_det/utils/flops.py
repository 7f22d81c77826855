"""FLOP counts of FIBER by component, with fvcore plus rules for the ops it lacks.

Convention: **one FLOP = one multiply-add (MAC)**, fvcore's convention (its matmul and conv
rules count ``M*N*K`` for an (M, K) x (K, N) product). Elementwise ops, norms, softmax and
bilinear sampling are not counted (fvcore ignores them; they are a few percent).

fvcore has no rule for two ops FIBER relies on; they are registered here:

* ``aten::scaled_dot_product_attention`` (q: (..., L, d), k: (..., S, d), v: (..., S, d_v)):
  ``prod(batch dims) * L * S * (d + d_v)`` (Q K^T and the weighted sum of V);
* ``torchvision::deform_conv2d``: ``B * C_out * H_out * W_out * C_in / groups * k_h * k_w``, the
  same as a dense conv of that shape (the bilinear sampling is not counted);
* ``aten::matmul`` is replaced by a rule that also takes 1-D operands (``E @ bias_lang``).

Components are traced separately (image pre-fusion, text pre-fusion, fused tail split into its
image and text sides, FPN, head) so that the savings of the cached multi-prompt path can be
bounded analytically: see :func:`multi_prompt_flop_bound`.
"""

from typing import Dict, Tuple

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from ..modeling.backbone.fiber_backbone import TextFeatures, TextState
from ..modeling.backbone.swin import SwinState

__all__ = ["FLOP_HANDLES", "count_flops", "component_flops", "multi_prompt_flop_bound"]


def _sdpa_flop(inputs, outputs) -> int:
    q, k, v = (get_shape(x) for x in inputs[:3])
    return int(np.prod(q[:-1]) * k[-2] * (q[-1] + v[-1]))


def _deform_conv_flop(inputs, outputs) -> int:
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
    #                            pad_w, dil_h, dil_w, n_weight_grps, n_offset_grps, use_mask)
    weight = get_shape(inputs[1])
    out = get_shape(outputs[0])
    return int(np.prod(out) * np.prod(weight[1:]))


def _matmul_flop(inputs, outputs) -> int:
    """``torch.matmul`` with 1-D operands too (fvcore's rule only takes >= 2-D)."""
    a, b = get_shape(inputs[0]), get_shape(inputs[1])
    if len(b) == 1:  # (..., k) @ (k,)
        return int(np.prod(a))
    if len(a) == 1:  # (k,) @ (..., k, m)
        return int(np.prod(b))
    return int(np.prod(get_shape(outputs[0])) * a[-1])


FLOP_HANDLES = {
    "aten::matmul": _matmul_flop,
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "torchvision::deform_conv2d": _deform_conv_flop,
}


def count_flops(module: nn.Module, inputs: Tuple) -> FlopCountAnalysis:
    """fvcore analysis of ``module(*inputs)`` with FIBER's extra rules, warnings silenced."""
    analysis = FlopCountAnalysis(module, inputs)
    for name, handle in FLOP_HANDLES.items():
        analysis.set_op_handle(name, handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


class _ImagePre(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.bb = backbone

    def forward(self, images):
        state = self.bb.encode_image(images)
        return (state.tokens,) + tuple(state.outputs.values())


class _TextPre(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.bb = backbone

    def forward(self, ids, mask):
        return self.bb.encode_text(ids, mask).hidden


class _Tail(nn.Module):
    def __init__(self, backbone, template: SwinState):
        super().__init__()
        self.bb = backbone
        self.hw, self.stage, self.block = template.hw, template.stage, template.block
        self.done = list(template.outputs)

    def forward(self, tokens, hidden, mask, *stage_outputs):
        state = SwinState(
            tokens, self.hw, self.stage, self.block, dict(zip(self.done, stage_outputs))
        )
        image, text = self.bb.fused_tail(state, TextState(hidden, mask))
        return tuple(image.outputs[s] for s in self.bb.in_stages) + (text.hidden,)


class _FPN(nn.Module):
    def __init__(self, fpn):
        super().__init__()
        self.fpn = fpn

    def forward(self, *feats):
        return tuple(self.fpn(list(feats)))


class _Head(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, hidden, mask, *feats):
        out = self.head(list(feats), TextFeatures(hidden, mask))
        return tuple(out.box_regression) + tuple(out.centerness) + tuple(out.logits)


def _gmac(x) -> float:
    return float(x) / 1e9


@torch.no_grad()
def component_flops(model, image_size: Tuple[int, int], num_tokens: int = 256) -> Dict[str, float]:
    """GMAC of each part of one FIBER forward (batch 1, one prompt of ``num_tokens``).

    Returns:
        dict with ``image_prefusion``, ``text_prefusion``, ``fused_image``, ``fused_text``, ``fpn``,
        ``head`` and ``total``.
    """
    bb = model.backbone
    device = next(model.parameters()).device
    impls = {}
    for m in model.modules():  # count deformable convs through the torchvision op's rule
        if hasattr(m, "impl") and m.__class__.__name__ == "ModulatedDeformConv3x3":
            impls[m] = m.impl
            m.impl = "torchvision"
    was_training = model.training
    model.eval()
    try:
        images = torch.zeros(1, 3, *image_size, device=device)
        ids = torch.full((1, num_tokens), 5, dtype=torch.long, device=device)
        ids[0, 0] = 0
        mask = torch.ones(1, num_tokens, dtype=torch.bool, device=device)
        state = bb.encode_image(images)
        text = bb.encode_text(ids, mask.long())
        out = {
            "image_prefusion": _gmac(count_flops(_ImagePre(bb), (images,)).total()),
            "text_prefusion": _gmac(count_flops(_TextPre(bb), (ids, mask.long())).total()),
        }
        tail = count_flops(
            _Tail(bb, state), (state.tokens, text.hidden, text.mask) + tuple(state.outputs.values())
        )
        by_module = tail.by_module()
        out["fused_image"] = _gmac(by_module.get("bb.body", 0))
        out["fused_text"] = _gmac(by_module.get("bb.language", 0))
        final, fused = bb.fused_tail(state, text)
        stages = [final.outputs[s] for s in bb.in_stages]
        out["fpn"] = _gmac(count_flops(_FPN(bb.fpn), tuple(stages)).total())
        feats = bb.fpn(stages)
        out["head"] = _gmac(
            count_flops(_Head(model.head), (fused.hidden, fused.mask) + tuple(feats)).total()
        )
    finally:
        for m, impl in impls.items():
            m.impl = impl
        model.train(was_training)
    out["total"] = sum(out.values())
    return out


def multi_prompt_flop_bound(
    flops: Dict[str, float], num_prompts: int, text_cached: bool = True
) -> float:
    """FLOP ratio naive / cached for one image queried with ``num_prompts`` prompts.

    naive: every prompt runs the whole model; cached: the image pre-fusion part once, the text
    pre-fusion part once per prompt (zero when cached from earlier images), the rest per prompt.
    """
    per_prompt = flops["fused_image"] + flops["fused_text"] + flops["fpn"] + flops["head"]
    naive = num_prompts * flops["total"]
    cached = flops["image_prefusion"] + num_prompts * per_prompt
    if not text_cached:
        cached += num_prompts * flops["text_prefusion"]
    return naive / cached
