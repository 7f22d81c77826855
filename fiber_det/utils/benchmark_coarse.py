"""Inference cost of the coarse-grained model (stage 1): FLOPs and latency of ITC encoding and of
ITM per image-caption pair, full forward vs cached (``tools/benchmark.py --coarse``).

Retrieval with ITM scores every pair of a test set (I images x T captions; Flickr30k test: 1k x
5k). *full* is the official way (``compute_itm_recall``): every pair runs the whole model, one
image against a chunk of captions at a time. *cached* (``FIBERCoarse.itm_retrieval_scores``)
runs the pre-fusion image part once per image, the pre-fusion text part once per caption, and only
the fused tail and the ITM head per pair. Over a whole test set the cached cost per pair is
``tail + image_prefusion / T + text_prefusion / I`` (the *FLOP ratio* of the table); the latency
rows time one image against a chunk of ``pairs`` captions whose pre-fusion states are already
computed (as they are once the first image has been scored), so they include one image
pre-fusion pass per chunk and understate the whole-set gain.

FLOPs: one FLOP = one multiply-add (fvcore convention, :mod:`fiber_det.utils.flops`); batch 1,
captions of ``INPUT.COARSE.MAX_TEXT_LEN`` tokens. Latency: median of interleaved timed runs in
one process (:func:`fiber_det.utils.benchmark.measure_interleaved`), random weights with the
fusion gates opened (speed does not depend on the weights).
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.modeling import build_model
from torch import Tensor, nn

from ..modeling.backbone.fiber_backbone import TextState
from ..modeling.backbone.swin import SwinState
from .benchmark import measure_interleaved
from .flops import count_flops
from .testing import get_config

__all__ = ["COARSE_CONFIGS", "coarse_flops", "bench_coarse", "format_coarse_report"]

logger = logging.getLogger(__name__)

# FIBER-B coarse (official architecture) and the tiny test model.
COARSE_CONFIGS = ("fiber_b/coarse/official_parity.yaml", "tiny/coarse_tiny.yaml")
FLICKR_TEST = (1000, 5000)  # images, captions of the Flickr30k 1k test split
GATE = 0.5  # fusion gates opened (0 at initialisation) so that the fused tail does work


class _Call(nn.Module):
    """``fn(*inputs)`` of a model as a module fvcore can trace."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def _tail_logits(model, image: SwinState, text: TextState) -> Tensor:
    return model.itm_score(model.fuse_states(image, text).cls_feats)


def _inputs(model, batch: int, device) -> Tuple[Tensor, Tensor, Tensor]:
    """Random normalised images (batch, 3, S, S) and full-length captions (batch, L)."""
    g = torch.Generator().manual_seed(0)
    s, length = model.image_size, model.max_text_len
    images = torch.randn(batch, 3, s, s, generator=g).to(device)
    ids = torch.randint(5, 900, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return images, ids.to(device), torch.ones_like(ids).to(device)


def build_coarse_model(config_file: str, device: torch.device) -> nn.Module:
    """The coarse model of ``config_file`` in eval mode, random weights, fusion gates opened."""
    cfg = get_config(config_file)
    cfg.MODEL.DEVICE = str(device)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(GATE)
    return model


@torch.no_grad()
def coarse_flops(model: nn.Module) -> Dict[str, float]:
    """GMAC of one image / caption / pair: ``itc_image``, ``itc_text``, ``image_prefusion``,
    ``text_prefusion``, ``itm_tail`` (fused tail + ITM head) and ``itm_full`` (one pair through
    the whole model, traced on its own)."""
    images, ids, mask = _inputs(model, 1, model.device)
    state = model.encode_image_prefusion(images)
    text = model.encode_text_prefusion(ids, mask)
    if state.outputs:
        raise ValueError("the coarse model keeps no stage outputs before the fused tail")

    def tail(m, tokens, hidden, text_mask):
        image = SwinState(tokens, state.hw, state.stage, state.block, {})
        return _tail_logits(m, image, TextState(hidden, text_mask))

    traced = {
        "itc_image": (lambda m, x: m.encode_image_itc(x), (images,)),
        "itc_text": (lambda m, i, k: m.encode_text_itc(i, k), (ids, mask)),
        "image_prefusion": (lambda m, x: m.encode_image_prefusion(x).tokens, (images,)),
        "text_prefusion": (lambda m, i, k: m.encode_text_prefusion(i, k).hidden, (ids, mask)),
        "itm_tail": (tail, (state.tokens, text.hidden, text.mask)),
        "itm_full": (lambda m, x, i, k: m.itm_logits(x, i, k), (images, ids, mask)),
    }
    return {
        name: float(count_flops(_Call(model, fn), inputs).total()) / 1e9
        for name, (fn, inputs) in traced.items()
    }


def whole_set_ratio(flops: Dict[str, float], num_images: int, num_texts: int) -> float:
    """FLOPs per pair, full over cached, when every pair of the test set is scored."""
    cached = (
        flops["itm_tail"]
        + flops["image_prefusion"] / num_texts
        + flops["text_prefusion"] / num_images
    )
    return flops["itm_full"] / cached


@torch.no_grad()
def bench_coarse(
    config_file: str, device: torch.device, *, pairs: int = 8, repeats: int = 3
) -> Dict:
    """FLOPs and latency rows of one coarse config (module docstring).

    Args:
        pairs: captions scored against one image per timed ITM call.
        repeats: timed runs (median reported).
    Returns:
        dict with ``config``, ``image_size``, ``text_len``, ``params_m``, ``flops_gmac``,
        ``flickr_flop_ratio`` and ``rows`` (``name``, ``items``, ``median_s``, ``per_item_s``,
        ``peak_mb``), ``itm_max_abs_diff`` (cached vs full logits).
    """
    model = build_coarse_model(config_file, device)
    flops = coarse_flops(model)
    images, ids, mask = _inputs(model, pairs, device)
    one = images[:1]
    texts = model.encode_text_prefusion(ids, mask)  # cached, as over a test set

    def full():
        return model.itm_logits(one.expand(pairs, -1, -1, -1), ids, mask)

    def cached():
        return _tail_logits(model, model.encode_image_prefusion(one), texts)

    diff = float((full() - cached()).abs().max())
    calls = {
        "ITC image encoding": (lambda: model.encode_image_itc(one), 1),
        "ITC text encoding": (lambda: model.encode_text_itc(ids[:1], mask[:1]), 1),
        "ITM full forward": (full, pairs),
        "ITM cached": (cached, pairs),
    }
    timed = measure_interleaved({k: fn for k, (fn, _) in calls.items()}, device, repeats)
    rows = [
        {"name": k, "items": n, **timed[k], "per_item_s": timed[k]["median_s"] / n}
        for k, (_, n) in calls.items()
    ]
    return {
        "config": config_file,
        "image_size": model.image_size,
        "text_len": model.max_text_len,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "flops_gmac": flops,
        "flickr_flop_ratio": whole_set_ratio(flops, *FLICKR_TEST),
        "rows": rows,
        "itm_max_abs_diff": diff,
    }


def format_coarse_report(results: Sequence[Dict]) -> str:
    """Markdown tables of :func:`bench_coarse` results."""
    out: List[str] = []
    for r in results:
        f = r["flops_gmac"]
        rows = {x["name"]: x for x in r["rows"]}
        full, cached = rows["ITM full forward"], rows["ITM cached"]
        out += [
            f"Coarse model `{r['config']}`: {r['image_size']}x{r['image_size']} images, "
            f"captions of {r['text_len']} tokens, {r['params_m']:.1f} M parameters",
            "",
            "| GMAC (1 = one multiply-add) | itc image | itc text | image pre-fusion | "
            "text pre-fusion | ITM tail + head | ITM full, one pair |",
            "|---|---|---|---|---|---|---|",
            "| per item | " + " | ".join(f"{f[k]:.3f}" for k in f) + " |",
            "",
            "| path | items per call | latency s/call | s per item | peak MB |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {x['name']} | {x['items']} | {x['median_s']:.3f} | {x['per_item_s']:.4f} | "
            f"{x['peak_mb']:.0f} |"
            for x in r["rows"]
        ]
        images, texts = FLICKR_TEST
        out += [
            "",
            f"ITM per pair, full / cached: latency {full['median_s'] / cached['median_s']:.2f}x "
            f"(one image, {full['items']} cached captions per call); FLOPs "
            f"{f['itm_full'] / (f['itm_tail'] + f['image_prefusion'] / full['items']):.2f}x for "
            f"that call, {r['flickr_flop_ratio']:.1f}x over Flickr30k test ({images} x {texts} "
            f"pairs). Cached vs full ITM logits: max abs diff {r['itm_max_abs_diff']:.1e}.",
            "",
        ]
    return "\n".join(out)
