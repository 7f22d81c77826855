"""Retrieval scores of the coarse model: ITC over all pairs, cached ITM == one forward per pair."""

import pytest
import torch

from fiber_det.modeling.coarse.retrieval import itc_scores, itm_scores

from .coarse_inputs import pairs, spread_scores, stacked, tiny_coarse_model

NUM_IMAGES, NUM_TEXTS = 3, 5


@pytest.fixture(scope="module")
def setup():
    model = tiny_coarse_model(seed=21).eval()
    spread_scores(model)
    images, _, _ = stacked(pairs(NUM_IMAGES, seed=22))
    _, ids, mask = stacked(pairs(NUM_TEXTS, seed=23, lengths=[16, 5, 9, 12, 7]))
    with torch.no_grad():
        per_pair = torch.stack(
            [
                torch.cat([model.itm_logits(images[i : i + 1], ids[j : j + 1], mask[j : j + 1])])[
                    0, 1
                ]
                for i in range(NUM_IMAGES)
                for j in range(NUM_TEXTS)
            ]
        ).view(NUM_IMAGES, NUM_TEXTS)
    return model, images, ids, mask, per_pair


def test_cached_itm_scores_equal_one_forward_per_pair(setup):
    model, images, ids, mask, per_pair = setup
    batches = [images[:2], images[2:]]  # an iterable of image batches, as a loader gives
    scores = itm_scores(model, batches, ids, mask, batch_size=2)
    assert scores.i2t is scores.t2i
    assert torch.allclose(scores.i2t, per_pair, atol=1e-5), (scores.i2t - per_pair).abs().max()
    assert per_pair.std() > 1e-3  # the scores are not all alike
    assert torch.equal(scores.i2t.argsort(dim=1), per_pair.argsort(dim=1))  # same TR ranking
    assert torch.equal(scores.i2t.argsort(dim=0), per_pair.argsort(dim=0))  # same IR ranking


def test_itc_scores_are_the_embedding_similarities(setup):
    model, images, ids, mask, _ = setup
    scores = itc_scores(model, images, ids, mask, batch_size=2)
    with torch.no_grad():
        image_cls, text_cls = model.encode_itc(images, ids, mask[:NUM_TEXTS])
    assert scores.shape == (NUM_IMAGES, NUM_TEXTS)
    assert torch.allclose(scores, image_cls @ text_cls.t(), atol=1e-6)


def test_itc_topk_reranking(setup):
    model, images, ids, mask, per_pair = setup
    itc = itc_scores(model, images, ids, mask)
    scores = itm_scores(model, images, ids, mask, itc=itc, topk=2)
    top_texts = itc.topk(2, dim=1).indices
    top_images = itc.topk(2, dim=0).indices
    for i in range(NUM_IMAGES):
        scored = torch.isfinite(scores.i2t[i]).nonzero().flatten()
        assert sorted(scored.tolist()) == sorted(top_texts[i].tolist())
        assert torch.allclose(scores.i2t[i, scored], per_pair[i, scored], atol=1e-5)
    for j in range(NUM_TEXTS):
        scored = torch.isfinite(scores.t2i[:, j]).nonzero().flatten()
        assert sorted(scored.tolist()) == sorted(top_images[:, j].tolist())
        assert torch.allclose(scores.t2i[scored, j], per_pair[scored, j], atol=1e-5)
    everything = itm_scores(model, images, ids, mask, itc=itc, topk=NUM_TEXTS)
    assert torch.allclose(everything.i2t, per_pair, atol=1e-5)
    model.rerank_topk = 2  # MODEL.COARSE.RERANK_TOPK is the default
    try:
        by_default = itm_scores(model, images, ids, mask, itc=itc)
    finally:
        model.rerank_topk = 0
    assert torch.equal(torch.isfinite(by_default.t2i), torch.isfinite(scores.t2i))
    with pytest.raises(ValueError, match="needs the ITC scores"):
        itm_scores(model, images, ids, mask, topk=2)


def test_cached_ranking_gives_the_per_pair_recall(setup):
    """Recall of the cached ITM scores == recall of the one-forward-per-pair scores (metric of
    fiber_det.evaluation.retrieval, written on the data side; skipped until it is merged)."""
    retrieval = pytest.importorskip("fiber_det.evaluation.retrieval")
    model, images, ids, mask, per_pair = setup
    txt2img = [0, 0, 1, 2, 2]
    cached = itm_scores(model, images, ids, mask).i2t
    assert retrieval.retrieval_recall(cached, txt2img) == retrieval.retrieval_recall(
        per_pair, txt2img
    )
