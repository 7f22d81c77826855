"""The official coarse-grained FIBER model, in numbers: every fixture in shared/parity/coarse.

Each fixture was computed by the official coarse-grained model (microsoft/FIBER
``coarse_grained``) from the seeded synthetic checkpoint
``make_state_dict("official_coarse_keys.json", seed)``. Here that checkpoint is written as an
official Lightning file (``{"state_dict": ...}``), loaded into the model of
``configs/fiber_b/coarse/official_parity.yaml`` through :class:`FIBERCheckpointer`, and the
model's ITC, ITM and MLM outputs are compared at the tolerances of shared/parity/README.md
(features and logits: max abs diff < 1e-3; losses: relative 1e-4).

The fused path runs from pre-fusion states computed once per image and per text (the cached path
of :meth:`FIBERCoarse.fuse_states`), which is what ``itm_logits`` / ``mlm_logits`` run for aligned
pairs (tests/modeling/test_coarse_model.py checks that they agree); it saves six FIBER-B image
passes.
"""

import glob
import json
import math
import re
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import FIBERCheckpointer
from fiber_det.checkpoint.coarse import to_official_coarse_state_dict
from fiber_det.modeling.coarse import losses as L
from fiber_det.modeling.coarse.retrieval import index_states
from fiber_det.utils.testing import get_config
from tests.paths import parity_dir

FIXTURES = sorted(glob.glob(str(parity_dir() / "coarse" / "*.pt")))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FIXTURES, reason=f"no coarse parity fixtures in {parity_dir()}"),
]

FEATURE_TOL = 1e-3  # features, similarities, weights and logits: max abs diff
LOSS_RTOL = 1e-4
# How the fixtures were drawn (shared/parity/README.md, "The coarse-grained model").
IMAGE_SEED_OFFSET, QUEUE_SEED_OFFSET = 2000, 3000

_MODEL = {}


def _model():
    """One FIBER-B coarse model for the module (building takes seconds, 1 GB)."""
    if "m" not in _MODEL:
        _MODEL["m"] = build_model(get_config("fiber_b/coarse/official_parity.yaml"))
    return _MODEL["m"]


def _max_diff(a, b) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.float() - b.float()).abs().max())


def _assert_loss(ours, ref, name):
    assert math.isclose(float(ours), float(ref), rel_tol=LOSS_RTOL), (name, float(ours), ref)


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: Path(p).stem)
def case(request, parity, tmp_path_factory):
    """(fixture, model with its checkpoint loaded, images, conversion report, outputs cache)."""
    pdir, synth = parity
    fx = torch.load(request.param, weights_only=False)
    meta = fx["meta"]
    sd = synth.make_state_dict(str(pdir / "official_coarse_keys.json"), meta["seed"])
    assert synth.fingerprint(sd) == meta["fingerprint"], "synthetic checkpoint differs"
    path = tmp_path_factory.mktemp("ckpt") / "fiber_pretrain.ckpt"
    torch.save({"state_dict": sd, "epoch": 0}, path)
    del sd
    model = _model()
    checkpointer = FIBERCheckpointer(model)
    checkpointer.load(str(path))
    path.unlink()
    model.eval()
    size = meta["image_size"]
    assert f"{IMAGE_SEED_OFFSET} + seed" in fx["images_recipe"], fx["images_recipe"]
    g = torch.Generator().manual_seed(IMAGE_SEED_OFFSET + meta["seed"])
    images = torch.randn(3, 3, size, size, generator=g).clamp(-2.5, 2.5)
    assert math.isclose(float(images.double().sum()), fx["images_sum"], rel_tol=1e-5)
    assert f"{QUEUE_SEED_OFFSET}+seed" in meta["queue"], meta["queue"]
    gq = torch.Generator().manual_seed(QUEUE_SEED_OFFSET + meta["seed"])
    queue = model.queue
    queue.image_queue.copy_(torch.randn(queue.image_queue.shape, generator=gq))
    queue.text_queue.copy_(torch.randn(queue.text_queue.shape, generator=gq))
    queue.queue_total.fill_(meta["queue_total"])
    return fx, model, images, checkpointer.last_conversion_report, {}


def test_checkpoint_loads_with_a_full_report(case):
    fx, model, _, report, _ = case
    assert report is not None, "the Lightning file was not converted"
    assert report.missing == {}, f"parameters not in the checkpoint: {report.missing}"
    assert sum(report.converted.values()) == 657
    assert model.image_size == fx["meta"]["image_size"]
    assert model.max_text_len == fx["meta"]["max_text_len"]
    assert float(model.temp.detach()) == pytest.approx(fx["meta"]["temp"])
    assert fx["rank_output_weight_equals_itm_row1"]  # the official load ties them (heads.py)


def test_model_has_the_official_key_layout(case, parity):
    """Exported in the official layout, the model's state_dict has every official key with its
    shape, but those the official model defines and never uses (or rebuilds)."""
    pdir, _ = parity
    spec = json.loads((pdir / "official_coarse_keys.json").read_text())
    ours = to_official_coarse_state_dict(case[1].state_dict())
    unused = re.compile(
        r"(relative_position_index|attn_mask|position_ids|text_transformer\.pooler\..*"
        r"|crossattention_t2i\.output\.LayerNorm\..*|layer\.[0-5]\.alpha_t2i)$"
    )
    assert sorted(k for k in spec if not unused.search(k)) == sorted(ours)
    lazy = {"image_input_queue"}  # allocated at the first training step
    wrong = [k for k in ours if k not in lazy and tuple(ours[k].shape) != tuple(spec[k])]
    assert not wrong, wrong[:5]


@torch.no_grad()
def test_itc_features_similarities_loss_and_negative_weights(case):
    fx, model, images, _, _ = case
    ref = fx["itc"]
    image_cls, text_cls = model.encode_itc(images, fx["text_ids"], fx["text_masks"])
    assert _max_diff(image_cls, ref["image_cls"]) < FEATURE_TOL
    assert _max_diff(text_cls, ref["text_cls"]) < FEATURE_TOL
    assert torch.allclose(image_cls.norm(dim=-1), torch.ones(3))
    q = model.queue
    sims = L.itc_similarities(
        image_cls, text_cls, image_cls, text_cls, q.image_queue, q.text_queue, model.temp
    )
    assert _max_diff(sims[0], ref["sim_i2t"]) < FEATURE_TOL
    assert _max_diff(sims[1], ref["sim_t2i"]) < FEATURE_TOL
    positives = torch.arange(3)
    _assert_loss(L.itc_loss(*sims, positives), ref["loss"], "itc")
    weights = L.hard_negative_weights(*sims, 3 + q.num_filled, positives)
    assert _max_diff(weights[0], ref["neg_weights_i2t"]) < FEATURE_TOL
    assert _max_diff(weights[1], ref["neg_weights_t2i"]) < FEATURE_TOL


@torch.no_grad()
def test_training_step_itc_loss_and_negatives(case):
    """The ITC part of the training step (its own encoder pass, the queue in the softmax, the
    negatives it draws, the queue update) on the fixture's batch."""
    fx, model, images, _, _ = case
    q = model.queue
    saved = {k: v.clone() for k, v in q.state_dict().items()}
    batch = {"images": images, "input_ids": fx["text_ids"], "attention_mask": fx["text_masks"]}
    try:
        loss, neg = model.losses.itc(model, batch, with_negatives=True)
        _assert_loss(loss, fx["itc"]["loss"], "itc (training step)")
        assert fx["meta"]["queue_total"] == 0  # negatives from the batch only, never the pair
        for b in range(3):
            image_match = [torch.equal(neg.images[b], images[j]) for j in range(3)]
            text_match = [torch.equal(neg.input_ids[b], fx["text_ids"][j]) for j in range(3)]
            assert sum(image_match) == 1 and not image_match[b]
            assert sum(text_match) == 1 and not text_match[b]
        assert int(q.queue_total) == 3 and torch.equal(q.image_input_queue[:3], images)
    finally:
        q.load_state_dict(saved)


def _fused(case):
    """Fused outputs of the fixture's 9 ITM pairs and 3 MLM pairs (states computed once)."""
    fx, model, images, _, cache = case
    if not cache:
        with torch.no_grad():
            image_states = model.encode_image_prefusion(images)
            ids = torch.cat([fx["text_ids"], fx["mlm_ids"]])
            masks = torch.cat([fx["text_masks"], fx["text_masks"]])
            text_states = model.encode_text_prefusion(ids, masks)
            ni, nt = fx["itm"]["neg_image_index"], fx["itm"]["neg_text_index"]
            b = torch.arange(3)
            # Official order: the 3 matches, (image b, text nt[b]), (image ni[b], text b).
            img_idx = torch.cat([b, b, ni, b])
            txt_idx = torch.cat([b, nt, b, b + 3])
            out = model.fuse_states(
                index_states(image_states, img_idx), index_states(text_states, txt_idx)
            )
            cache["itm"] = (out.text_feats[:9], out.image_feats[:9], out.cls_feats[:9])
            cache["mlm"] = model.mlm_score(out.text_feats[9:])
    return cache


def test_itm_cls_feats_logits_and_loss(case):
    fx, model, _, _, _ = case
    ref = fx["itm"]
    assert ref["order"].startswith("pairs = [(img b, txt b)] + [(img b, txt neg_text_index[b])]")
    text_feats, image_feats, cls_feats = _fused(case)["itm"]
    assert _max_diff(text_feats[:, 0], ref["text_feats_cls"]) < FEATURE_TOL
    assert _max_diff(image_feats.mean(dim=1), ref["image_feats_mean"]) < FEATURE_TOL
    assert _max_diff(cls_feats, ref["cls_feats"]) < FEATURE_TOL
    with torch.no_grad():
        logits = model.itm_score(cls_feats)
    assert _max_diff(logits, ref["logits"]) < FEATURE_TOL
    loss = torch.nn.functional.cross_entropy(logits, L.itm_labels(3, logits.device))
    _assert_loss(loss, ref["loss"], "itm")


def test_mlm_logits_at_masked_tokens_and_loss(case):
    fx, _, _, _, _ = case
    ref = fx["mlm"]
    logits = _fused(case)["mlm"]
    labels = fx["mlm_labels"]
    masked = labels != -100
    assert torch.equal(labels[masked], ref["labels_at_masked"])
    assert _max_diff(logits[masked], ref["logits_at_masked"]) < FEATURE_TOL
    _assert_loss(L.mlm_loss(logits, labels), ref["loss"], "mlm")
