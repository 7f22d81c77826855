"""Image-text retrieval Recall@k on hand-built score matrices (expected values worked out by hand
in the comments), score files, and tools/evaluate_retrieval.py."""

import json

import pytest
import torch

from fiber_det.evaluation.retrieval import (
    RETRIEVAL_KEYS,
    load_retrieval_scores,
    retrieval_ranks,
    retrieval_recall,
    save_retrieval_scores,
)
from tests.paths import load_tool

# 3 images, 2 texts each. Rows: images; columns: texts t0..t5.
TIES_TXT2IMG = [0, 0, 1, 1, 2, 2]
TIES_SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.9, 0.3, 0.2, 0.2],
        [0.8, 0.2, 0.8, 0.5, 0.1, 0.0],
        [0.7, 0.6, 0.5, 0.5, 0.3, 0.2],
    ]
)
# TR (rows): image 0: t0 = 0.9 ties t2, t0 has the lower index -> rank 0 (hit at 1).
#   image 1: t2 = 0.8 ties t0, t0 first -> rank 1; t3 = 0.5 -> rank 2; best 1 (miss at 1).
#   image 2: t4 = 0.3 is below t0, t1, t2, t3 -> rank 4; t5 -> 5; best 4 (miss at 1, hit at 5).
#   R@1 1/3, R@5 3/3, R@10 3/3.
# IR (columns): t0 [.9 .8 .7] img 0 first -> 0 hit; t1 [.1 .2 .6] img 0 third -> 2;
#   t2 [.9 .8 .5] img 1 second -> 1; t3 [.3 .5 .5] img 1 ties img 2, lower index -> 0 hit;
#   t4 [.2 .1 .3] img 2 first -> 0 hit; t5 [.2 .0 .2] img 2 ties img 0, img 0 first -> 1.
#   R@1 3/6; 3 images only, so R@5 = R@10 = 6/6.
TIES_EXPECTED = {
    "ir_r1": 50.0,
    "ir_r5": 100.0,
    "ir_r10": 100.0,
    "tr_r1": 100.0 / 3,
    "tr_r5": 100.0,
    "tr_r10": 100.0,
    "ir_mean": 250.0 / 3,
    "tr_mean": (100.0 / 3 + 200.0) / 3,
    "r_mean": (250.0 / 3 + (100.0 / 3 + 200.0) / 3) / 2,
}


def test_ties_and_several_texts_per_image():
    out = retrieval_recall(TIES_SCORES, TIES_TXT2IMG)
    assert list(out) == list(RETRIEVAL_KEYS)
    assert out == pytest.approx(TIES_EXPECTED, abs=1e-9)
    tr, ir = retrieval_ranks(TIES_SCORES, TIES_TXT2IMG)
    assert tr.tolist() == [0, 1, 4]
    assert ir.tolist() == [0, 2, 1, 0, 0, 1]


def low_ranked_case():
    """12 images; texts t0..t11 belong to images 0..11, t12 to image 11 as well.

    Base score of text j in every row: -j / 100 (earlier texts score higher). Images 0..9 give
    their own text 1.0 (rank 0). Image 10 gives t10 -0.065: seven texts (t0..t6, -0.00..-0.06)
    score higher -> rank 7 (hit only at 10). Image 11 gives both its texts -1, below all 11 other
    texts -> best rank 11 (never a hit at 10).
    TR: R@1 = R@5 = 10/12, R@10 = 11/12.
    IR: columns 0..10: the own image has the only score above the base -> rank 0; columns 11 and
    12: image 11 has -1, the 11 other images -0.11 / -0.12 -> rank 11, a miss. 11/13 at every k.
    """
    txt2img = list(range(12)) + [11]
    scores = -torch.arange(13, dtype=torch.float64).repeat(12, 1) / 100
    for i in range(10):
        scores[i, i] = 1.0
    scores[10, 10] = -0.065
    scores[11, 11] = scores[11, 12] = -1.0
    return scores, txt2img


def test_an_image_whose_texts_are_all_ranked_low():
    out = retrieval_recall(*low_ranked_case())
    assert out["tr_r1"] == pytest.approx(1000 / 12)
    assert out["tr_r5"] == pytest.approx(1000 / 12)
    assert out["tr_r10"] == pytest.approx(1100 / 12)
    for k in (1, 5, 10):
        assert out[f"ir_r{k}"] == pytest.approx(1100 / 13)
    assert retrieval_ranks(*low_ranked_case())[0].tolist() == [0] * 10 + [7, 11]


def test_an_image_without_texts_counts_as_a_miss():
    # images 0 and 1 find their only text first; image 2 has none -> TR 2/3; IR 2/2
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = retrieval_recall(scores, [0, 1], ks=(1, 2))
    assert out["tr_r1"] == out["tr_r2"] == pytest.approx(200 / 3)
    assert out["ir_r1"] == out["ir_r2"] == 100.0
    assert set(out) == {"ir_r1", "ir_r2", "tr_r1", "tr_r2", "ir_mean", "tr_mean", "r_mean"}


def official_recall(scores, txt2img, k):
    """The official definition with torch.topk (fine when there are no ties)."""
    txt2img = torch.as_tensor(txt2img)
    images = torch.arange(scores.shape[0])
    top_texts = scores.topk(k, dim=1).indices
    tr = (txt2img[top_texts] == images.unsqueeze(1)).any(1).double().mean() * 100
    top_images = scores.topk(k, dim=0).indices
    ir = (images[top_images] == txt2img.unsqueeze(0)).any(0).double().mean() * 100
    return ir.item(), tr.item()


@pytest.mark.parametrize("seed", range(3))
def test_equals_the_official_topk_definition_without_ties(seed):
    g = torch.Generator().manual_seed(seed)
    num_images = 40
    txt2img = torch.randint(num_images, (150,), generator=g)
    scores = torch.randn(num_images, 150, generator=g)
    scores[txt2img, torch.arange(150)] += 1.5  # better than chance
    out = retrieval_recall(scores, txt2img)
    for k in (1, 5, 10):
        ir, tr = official_recall(scores, txt2img, k)
        assert out[f"ir_r{k}"] == pytest.approx(ir) and out[f"tr_r{k}"] == pytest.approx(tr)


def test_all_scores_tied():
    # every score equal: a candidate's rank is the number of candidates before it.
    # TR: image 0 owns t0, t1 -> 0; image 1 t2, t3 -> 2; image 2 t4 -> 4; image 3 t5 -> 5.
    # IR: text j's image is ranked at its own index: [0, 0, 1, 1, 2, 3].
    scores, txt2img = torch.zeros(4, 6), [0, 0, 1, 1, 2, 3]
    tr, ir = retrieval_ranks(scores, txt2img)
    assert tr.tolist() == [0, 2, 4, 5] and ir.tolist() == [0, 0, 1, 1, 2, 3]
    tr, ir = retrieval_ranks(scores, txt2img, limit=3)
    assert tr.tolist() == [0, 2, 3, 3] and ir.tolist() == [0, 0, 1, 1, 2, 3]
    out = retrieval_recall(scores, txt2img, ks=(1, 3))  # TR 1/4, 2/4; IR 2/6, 5/6
    expected = (25.0, 50.0, 100 / 3, 500 / 6)
    assert (out["tr_r1"], out["tr_r3"], out["ir_r1"], out["ir_r3"]) == pytest.approx(expected)


def stable_sort_ranks(scores, txt2img):
    """Reference: positions in a stable descending sort (ties: lower index first)."""
    txt2img = torch.as_tensor(txt2img)
    row_pos = torch.sort(scores, dim=1, descending=True, stable=True).indices.argsort(1)
    col_pos = torch.sort(scores, dim=0, descending=True, stable=True).indices.argsort(0)
    tr = [row_pos[i, txt2img == i].min().item() for i in range(scores.shape[0])]
    return tr, col_pos[txt2img, torch.arange(len(txt2img))].tolist()


@pytest.mark.parametrize("limit", [None, 1, 4, 10])
def test_ranks_with_many_ties_equal_a_stable_sort(monkeypatch, limit):
    from fiber_det.evaluation import retrieval

    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 50)  # several chunks
    g = torch.Generator().manual_seed(7)
    txt2img = torch.cat([torch.arange(15), torch.randint(15, (25,), generator=g)])
    scores = torch.randint(0, 4, (15, 40), generator=g).float()  # ties everywhere
    tr_ref, ir_ref = stable_sort_ranks(scores, txt2img)
    cap = limit or 10**9
    tr, ir = retrieval_ranks(scores, txt2img, limit=limit)
    assert tr.tolist() == [min(r, cap) for r in tr_ref]
    assert ir.tolist() == [min(r, cap) for r in ir_ref]


def test_bad_inputs():
    with pytest.raises(ValueError, match="txt2img has 5 entries .* 6 texts"):
        retrieval_recall(TIES_SCORES, TIES_TXT2IMG[:5])
    with pytest.raises(ValueError, match=r"image indices in \[0, 3\)"):
        retrieval_recall(TIES_SCORES, [0, 0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((2, 2), float("nan")), [0, 1])
    with pytest.raises(ValueError, match="float tensor of shape"):
        retrieval_recall(torch.ones(3, dtype=torch.long).reshape(1, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="empty score matrix"):
        retrieval_recall(torch.zeros(0, 0), [])
    with pytest.raises(ValueError, match="ks must be positive"):
        retrieval_recall(TIES_SCORES, TIES_TXT2IMG, ks=(0,))


def test_score_file_round_trip(tmp_path):
    path = tmp_path / "scores.safetensors"
    meta = {"dataset": "f30k_caption_karpathy_test", "score": "itm", "image_ids": ["a", "b", "c"]}
    save_retrieval_scores(path, TIES_SCORES, TIES_TXT2IMG, meta)
    scores, txt2img, loaded_meta = load_retrieval_scores(path)
    assert torch.equal(scores, TIES_SCORES) and txt2img.tolist() == TIES_TXT2IMG
    assert loaded_meta == meta
    assert [p.name for p in tmp_path.iterdir()] == ["scores.safetensors"]  # no temporary left


def test_score_file_refusals(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_retrieval_scores(tmp_path / "a", TIES_SCORES, TIES_TXT2IMG, {"x": object()})
    with pytest.raises(ValueError, match="txt2img has"):
        save_retrieval_scores(tmp_path / "a", TIES_SCORES, [0])
    assert not (tmp_path / "a").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_retrieval_scores(tmp_path / "missing.safetensors")
    pickled = tmp_path / "scores.pt"
    torch.save({"scores": TIES_SCORES, "txt2img": TIES_TXT2IMG}, pickled)
    with pytest.raises(ValueError, match="not a fiber-det retrieval score file"):
        load_retrieval_scores(pickled)
    other = tmp_path / "model.safetensors"
    save_file({"scores": TIES_SCORES, "txt2img": torch.tensor(TIES_TXT2IMG)}, str(other))
    with pytest.raises(ValueError, match="not a fiber-det retrieval score file"):
        load_retrieval_scores(other)


def _tool():
    return load_tool("evaluate_retrieval")


def test_tool_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "scores.safetensors"
    save_retrieval_scores(path, TIES_SCORES, TIES_TXT2IMG, {"dataset": "tiny"})
    out_json = tmp_path / "results.json"
    out_json.write_text("old")
    assert _tool().main(["--scores", str(path), "--output", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "Retrieval results for tiny (3 images, 6 texts)" in printed
    rows = {
        cells[0]: cells[1:]
        for line in printed.splitlines()
        if line.startswith("| ")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["task"] == ["R@1", "R@5", "R@10", "mean"]
    assert rows["IR (text -> image)"] == ["50.00", "100.00", "100.00", "83.33"]
    assert rows["TR (image -> text)"] == ["33.33", "100.00", "100.00", "77.78"]
    assert "r_mean: 80.56" in printed
    written = json.loads(out_json.read_text())
    assert written["meta"] == {"dataset": "tiny"}
    assert written["metrics"] == pytest.approx(TIES_EXPECTED)


def test_tool_refuses_to_write_over_its_input(tmp_path, monkeypatch):
    path = tmp_path / "scores.safetensors"
    save_retrieval_scores(path, TIES_SCORES, TIES_TXT2IMG)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    for output in (str(path), "./scores.safetensors"):
        with pytest.raises(SystemExit, match="is the score file itself"):
            _tool().main(["--scores", str(path), "--output", output])
    assert path.read_bytes() == before
