"""The official FIBER model, in numbers: every fixture in shared/parity/fixtures is reproduced.

Each fixture was computed by the official implementation from the seeded synthetic checkpoint
``make_state_dict(official_keys_<variant>.json, seed)``. Here that checkpoint is written to disk
in the official container format (``{"model": ...}`` with DDP's ``module.`` prefix), loaded
through :class:`FIBERCheckpointer` (which converts it), and the model's outputs are compared at
the tolerances of shared/parity/README.md. Fixtures added to the folder later (other seeds, image
sizes, prompts) are picked up automatically.
"""

import glob
import math
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from fiber_det.checkpoint import FIBERCheckpointer
from fiber_det.evaluation.base import ungroup
from fiber_det.utils.testing import get_config, unmatched_detections, unmatched_instances
from tests.paths import parity_dir

FIXTURES = sorted(glob.glob(str(parity_dir() / "fixtures" / "*.pt")))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FIXTURES, reason=f"no parity fixtures in {parity_dir()}"),
]

_MODELS = {}


def _model(variant: str):
    """One FIBER-B model per variant for the whole module (building takes seconds)."""
    if variant not in _MODELS:
        _MODELS.clear()  # keep at most one 1 GB model in memory
        cfg = get_config(f"fiber_b/official_parity_{variant}.yaml")
        _MODELS[variant] = build_model(cfg)
    return _MODELS[variant]


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: Path(p).stem)
def loaded(request, parity, tmp_path_factory):
    """(fixture dict, model with the fixture's synthetic checkpoint loaded)."""
    pdir, synth = parity
    fx = torch.load(request.param, weights_only=False)
    meta = fx["meta"]
    sd = synth.make_state_dict(str(pdir / f"official_keys_{meta['variant']}.json"), meta["seed"])
    assert synth.fingerprint(sd) == meta["fingerprint"], (
        "synthetic checkpoint differs from the fixture's"
    )
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "iteration": 1}, path)
    del sd
    model = _model(meta["variant"])
    checkpointer = FIBERCheckpointer(model)
    checkpointer.load(str(path))
    path.unlink()
    report = checkpointer.last_conversion_report
    assert report is not None and report.variant == meta["variant"]
    assert report.missing == {}, f"parameters not in the checkpoint: {report.missing}"
    return fx, model.eval()


def _inputs(fx):
    length = fx["input_ids"].shape[1]
    pmap = torch.zeros(len(fx["label_to_tokens"]), length)
    for label, tokens in fx["label_to_tokens"].items():
        pmap[label - 1, tokens] = 1.0
    return {
        "image": fx["image_bgr_hwc_uint8"].permute(2, 0, 1).float(),
        "input_ids": fx["input_ids"][0],
        "attention_mask": fx["attention_mask"][0],
        "positive_map": pmap,
    }


def test_inference_settings_match_fixture(loaded):
    fx, model = loaded
    inf = fx["meta"]["inference"]
    pp = model.postprocessor
    assert (pp.score_threshold, pp.pre_nms_top_n, pp.nms_threshold, pp.detections_per_image) == (
        inf["score_threshold"],
        inf["pre_nms_top_n"],
        inf["nms_threshold"],
        inf["detections_per_image"],
    )
    assert list(model.pixel_mean.flatten().tolist()) == pytest.approx(fx["meta"]["pixel_mean"])
    assert list(model.pixel_std.flatten().tolist()) == pytest.approx(fx["meta"]["pixel_std"])
    assert model.backbone.size_divisibility == fx["meta"]["size_divisibility"]


@torch.no_grad()
def test_backbone_and_head_outputs(loaded):
    fx, model = loaded
    x = _inputs(fx)
    images = model.preprocess_image([x])
    ids, mask = model.preprocess_text([x])
    feats, text = model.backbone(images.tensor, ids, mask)
    for level, (ours, ref) in enumerate(zip(feats.values(), fx["fpn"])):
        assert ours.shape == ref.shape, f"P{level + 3}"
        assert (ours - ref).abs().max() < 1e-3, f"P{level + 3}"
    assert (text.hidden - fx["text_hidden"]).abs().max() < 1e-3
    out = model.head(list(feats.values()), text)
    n = fx["n_valid_tokens"]
    for level in range(len(fx["fpn"])):
        assert (out.box_regression[level] - fx["box_regression"][level]).abs().max() < 1e-3
        assert (out.centerness[level] - fx["centerness"][level]).abs().max() < 1e-3
        logits = out.logits[level][..., :n]
        assert logits.shape == fx["dot_product_logits"][level].shape
        assert (logits - fx["dot_product_logits"][level]).abs().max() < 1e-3


@torch.no_grad()
def test_detections(loaded):
    fx, model = loaded
    inst = model([_inputs(fx)])[0]["instances"]
    ref = fx["detections"]
    assert len(inst) == len(ref["scores"])
    missing = unmatched_detections(
        ref["boxes_xyxy"],
        ref["scores"],
        ref["labels"],
        inst.pred_boxes.tensor,
        inst.scores,
        inst.pred_classes + 1,  # fixture labels start at 1
        box_tol=0.01,
        score_tol=1e-4,
    )
    assert not missing, f"official detections not reproduced: {missing[:3]}"


@torch.no_grad()
def test_cached_multi_prompt_path_gives_the_official_detections(loaded):
    """The fixture prompt twice, through the cached multi-prompt path: the official detections
    twice (labels of the second copy offset), and logits equal to the single forward."""
    fx, model = loaded
    x = _inputs(fx)
    keys = ("input_ids", "attention_mask", "positive_map")
    prompt = {k: x[k] for k in keys}
    inst = model([{"image": x["image"], "prompts": [prompt, prompt]}])[0]["instances"]
    ref = fx["detections"]
    n_labels = x["positive_map"].shape[0]
    for copy in range(2):
        part = inst[
            (inst.pred_classes >= copy * n_labels) & (inst.pred_classes < (copy + 1) * n_labels)
        ]
        missing = unmatched_detections(
            ref["boxes_xyxy"],
            ref["scores"],
            ref["labels"],
            part.pred_boxes.tensor,
            part.scores,
            part.pred_classes - copy * n_labels + 1,
        )
        assert not missing, f"copy {copy}: {missing[:3]}"


def test_training_losses(loaded):
    fx, model = loaded
    x = _inputs(fx)
    t = fx["train_targets"]
    inst = Instances(tuple(fx["image_bgr_hwc_uint8"].shape[:2]))
    inst.gt_boxes = Boxes(t["boxes_xyxy"])
    inst.positive_map = t["positive_map"]
    x["instances"] = inst
    model.train()
    try:
        with EventStorage(), torch.no_grad():
            losses = model([x])
    finally:
        model.eval()
    for name, ref in fx["train_losses"].items():
        if name == "loss_cls":  # official: 0 x an unused classification loss
            assert ref == 0.0 and name not in losses
            continue
        ours = losses[name].item()
        assert math.isclose(ours, ref, rel_tol=1e-4), f"{name}: {ours} vs {ref}"


def _exact_length(x):
    """The fixture prompt without its padding (MODEL.LANGUAGE.PAD_TO_MAX False, the default)."""
    n = int(x["attention_mask"].sum())
    return {
        **x,
        "input_ids": x["input_ids"][:n],
        "attention_mask": x["attention_mask"][:n],
        "positive_map": x["positive_map"][:, :n],
    }


@torch.no_grad()
def test_exact_length_prompt_gives_the_padded_outputs(loaded):
    """Padded tokens are masked wherever they could matter: the prompt unpadded gives the
    official 256-token outputs on its real tokens (float summation order apart: the attention
    over 12 keys instead of 256), and the same detections."""
    fx, model = loaded
    padded = _inputs(fx)
    exact = _exact_length(padded)
    n = exact["input_ids"].numel()
    assert n < padded["input_ids"].numel()
    outs = []
    for x in (padded, exact):
        images = model.preprocess_image([x])
        ids, mask = model.preprocess_text([x])
        feats, text = model.backbone(images.tensor, ids, mask)
        outs.append((feats, text, model.head(list(feats.values()), text)))
    (feats_p, text_p, head_p), (feats_e, text_e, head_e) = outs
    for a, b in zip(feats_p.values(), feats_e.values()):
        assert (a - b).abs().max() < 5e-5
    assert (text_p.hidden[:, :n] - text_e.hidden).abs().max() < 2e-5
    for level in range(len(head_p.logits)):
        assert head_e.logits[level].shape[-1] == n
        assert (head_p.logits[level][..., :n] - head_e.logits[level]).abs().max() < 5e-5
        assert (head_p.box_regression[level] - head_e.box_regression[level]).abs().max() < 2e-5
        assert (head_p.centerness[level] - head_e.centerness[level]).abs().max() < 2e-5
    a, b = model([padded])[0]["instances"], model([exact])[0]["instances"]
    assert len(a) == len(b) == len(fx["detections"]["scores"])
    assert not unmatched_instances(a, b, box_tol=1e-3, score_tol=2e-6)


def test_exact_length_prompt_gives_the_padded_training_losses(loaded):
    """The "no object" token sits at the last position of the 256-token budget: padding (masked)
    for a 256-token prompt, absent for an exact-length one; the losses are the same."""
    fx, model = loaded
    t = fx["train_targets"]
    losses = []
    for x in (_inputs(fx), _exact_length(_inputs(fx))):
        inst = Instances(tuple(fx["image_bgr_hwc_uint8"].shape[:2]))
        inst.gt_boxes = Boxes(t["boxes_xyxy"])
        inst.positive_map = t["positive_map"][:, : x["input_ids"].numel()]
        model.train()
        try:
            with EventStorage(), torch.no_grad():
                losses.append(model([{**x, "instances": inst}]))
        finally:
            model.eval()
    for name, ref in fx["train_losses"].items():
        if name in losses[0]:
            assert math.isclose(losses[1][name].item(), ref, rel_tol=1e-4), name
            assert math.isclose(losses[1][name].item(), losses[0][name].item(), rel_tol=1e-5)


@torch.no_grad()
def test_queries_grouped_by_image_give_one_forward_per_query(loaded):
    """Flickr / RefCOCO evaluation with an image's queries in one input (cached multi-prompt
    path, split back per query by the evaluators): each query gets the detections of its own
    forward, and the fixture prompt the official detections."""
    fx, model = loaded
    x = _exact_length(_inputs(fx))
    keys = ("input_ids", "attention_mask", "positive_map")
    first = {k: x[k] for k in keys}
    # a second query: the prompt's first label only, a third: the fixture prompt padded to 256
    second = {**first, "positive_map": first["positive_map"][:1]}
    third = {k: v for k, v in _inputs(fx).items() if k in keys}
    queries = [first, second, third]
    members = [{"image_id": i, **q} for i, q in enumerate(queries)]
    grouped = {"image": x["image"], "prompts": queries, "group": members}
    output = model([grouped])[0]
    parts = list(ungroup([grouped], [output]))
    assert [m["image_id"] for m, _ in parts] == [0, 1, 2]
    for member, out in parts:
        alone = model([{"image": x["image"], **{k: member[k] for k in keys}}])[0]["instances"]
        missing = unmatched_instances(alone, out["instances"], box_tol=1e-3, score_tol=2e-6)
        assert len(alone) == len(out["instances"]) and not missing, member["image_id"]
    ref = fx["detections"]
    got = parts[0][1]["instances"]
    missing = unmatched_detections(
        ref["boxes_xyxy"],
        ref["scores"],
        ref["labels"],
        got.pred_boxes.tensor,
        got.scores,
        got.pred_classes + 1,
    )
    assert not missing, missing[:3]
