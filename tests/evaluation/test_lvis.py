"""LVIS: Fixed AP (top-k per category, no per-image cap), standard AP, chunks merged, numpy 2."""

import math

import numpy as np
import pytest

from fiber_det.evaluation import LVISEvaluator, evaluate_lvis_boxes, load_predictions
from fiber_det.evaluation.lvis import (
    lvis_eval_class,
    merge_records_by_image,
    prune_top_k_per_category,
    top_k_per_category,
)

from . import cases

# lvis 0.5.3 calls the deprecated Logger.warn.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

# Worked example (tests/evaluation/cases.py: lvis_case). Every TP has IoU 1.
# Category 1 (frequent, 3 GT), detections by score: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 TP.
#   All four: tp [1,1,2,3], fp [0,1,1,1]; recall [1/3,1/3,2/3,1]; precision [1,.5,2/3,.75]
#   -> envelope [1,.75,.75,.75]. 101 recall levels: r <= 1/3 (0..0.33, 34 levels) -> 1, the
#   other 67 -> .75: AP = (34 + 67 * .75) / 101.
#   Top 3 only (0.6 dropped): envelope [1, 2/3, 2/3], recall reaches 2/3: 34 levels at 1, 33
#   levels (0.34..0.66) at 2/3, 34 levels at 0: AP = (34 + 33 * 2/3) / 101 = 56 / 101.
# Category 2 (common, 1 GT): 0.99 on image 1, which neither has category 2 nor lists it as absent
#   (LVIS federated rule: ignored), 0.5 TP -> AP 1.
# Category 3 (rare, 1 GT): 0.95 on image 1, which lists it in neg_category_ids (FP), 0.5 TP:
#   recall [0, 1], precision [0, .5] -> envelope [.5, .5] -> AP .5.
AP1_ALL = (34 + 67 * 0.75) / 101 * 100
AP1_TOP3 = 56 / 101 * 100


def _evaluate(tmp_path, run_online, chunked=True, **kwargs):
    name, inputs, outputs = cases.lvis_case(tmp_path, chunked=chunked)
    ev = LVISEvaluator(name, distributed=False, **kwargs)
    return run_online(ev, inputs, outputs)["bbox"]


def test_numpy_has_no_float_alias_and_lvis_runs():
    # lvis 0.5.3's own accumulate uses np.float (removed in numpy 1.24): this suite runs on a
    # numpy without it, so every LVIS test below exercises our replacement.
    assert not hasattr(np, "float")


@pytest.mark.parametrize("chunked", [True, False])
def test_fixed_ap_default(tmp_path, run_online, chunked):
    res = _evaluate(tmp_path, run_online, chunked=chunked)
    assert res["APf"] == pytest.approx(AP1_ALL, abs=1e-6)
    assert res["APc"] == pytest.approx(100.0)
    assert res["APr"] == pytest.approx(50.0)
    assert res["AP"] == pytest.approx((AP1_ALL + 100 + 50) / 3, abs=1e-6)
    assert res["AP50"] == pytest.approx(res["AP"]) and res["AP75"] == pytest.approx(res["AP"])
    assert res["APm"] == pytest.approx(res["AP"])  # all GT boxes are 50x50 (medium)
    assert math.isnan(res["APs"]) and math.isnan(res["APl"])


def test_fixed_ap_keeps_top_k_per_category_over_the_dataset(tmp_path, run_online):
    res = _evaluate(tmp_path, run_online, topk_per_category=3)
    assert res["APf"] == pytest.approx(AP1_TOP3, abs=1e-6)  # category 1 lost its 0.6 TP
    assert res["AP"] == pytest.approx((AP1_TOP3 + 100 + 50) / 3, abs=1e-6)


def test_standard_ap_caps_detections_per_image(tmp_path, run_online):
    # No cap binds with 300 per image: same as Fixed AP.
    res = _evaluate(tmp_path, run_online, use_fixed_ap=False)
    assert res["AP"] == pytest.approx((AP1_ALL + 100 + 50) / 3, abs=1e-6)
    # 3 per image (chunks merged first). Image 1 keeps 0.99, 0.95, 0.9 and drops category 1's
    # 0.6 TP; image 2 keeps 0.8, 0.7 and, of the two 0.5 ties, the first listed (category 2):
    # category 3 loses its TP. Category 1: 56/101 as top-3 above; category 2: 1; category 3:
    # only an FP -> 0.
    res = _evaluate(tmp_path, run_online, use_fixed_ap=False, max_dets_per_image=3)
    assert res["AP"] == pytest.approx((AP1_TOP3 + 100 + 0) / 3, abs=1e-6)
    assert res["APr"] == pytest.approx(0.0)


def test_merge_records_and_top_k_ties():
    recs = [
        {"image_id": 2, "instances": [{"score": 0.1}], "num_prompts": 1},
        {"image_id": 1, "instances": [], "num_prompts": 1},
        {"image_id": 2, "instances": [{"score": 0.2}], "num_prompts": 1},
    ]
    merged = merge_records_by_image(recs)
    assert [(m["image_id"], len(m["instances"]), m["num_prompts"]) for m in merged] == [
        (2, 2, 2),
        (1, 0, 1),
    ]
    res = [
        {"category_id": 1, "score": s, "tag": t} for s, t in [(0.5, "a"), (0.9, "b"), (0.5, "c")]
    ]
    # the tie at 0.5 keeps the input order: "a" before "c"
    assert [r["tag"] for r in top_k_per_category(res, 2)] == ["b", "a"]


def test_pruning_while_processing_keeps_fixed_ap(tmp_path, run_online, monkeypatch):
    monkeypatch.setattr(LVISEvaluator, "_PRUNE_MIN", 1)  # prune after every batch
    name, inputs, outputs = cases.lvis_case(tmp_path)
    ev = LVISEvaluator(name, distributed=False, topk_per_category=3, output_dir=str(tmp_path))
    res = run_online(ev, inputs, outputs)["bbox"]
    assert res["AP"] == pytest.approx((AP1_TOP3 + 100 + 50) / 3, abs=1e-6)
    saved = load_predictions(str(tmp_path / "instances_predictions.pth"))
    cats = [d["category_id"] for r in saved for d in r["instances"]]
    assert sorted(cats) == [1, 1, 1, 2, 2, 3, 3]  # category 1's fourth box (0.6) is gone


def test_prune_top_k_per_category_ties_and_order():
    recs = [
        {
            "instances": [
                {"category_id": 1, "score": 0.5, "t": "a"},
                {"category_id": 2, "score": 0.1, "t": "b"},
            ]
        },
        {
            "instances": [
                {"category_id": 1, "score": 0.9, "t": "c"},
                {"category_id": 1, "score": 0.5, "t": "d"},
            ]
        },
    ]
    # category 1: 0.9 (c), then the 0.5 tie: "a" (earlier record) before "d"
    assert prune_top_k_per_category(recs, 2) == 3
    assert [[d["t"] for d in r["instances"]] for r in recs] == [["a", "b"], ["c"]]


def test_no_detections_and_unknown_images(tmp_path):
    lvis = pytest.importorskip("lvis")
    gt = lvis.LVIS(cases.write_json(tmp_path / "g.json", cases.lvis_gt()))
    assert all(math.isnan(v) for v in evaluate_lvis_boxes(gt, []).values())
    bad = [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(ValueError, match="not in the LVIS GT json"):
        evaluate_lvis_boxes(gt, bad)


def _random_lvis(rng, tmp_path):
    """Random GT; detections: jittered copies of most GT boxes and random boxes, scores with
    ties."""
    images = [
        {
            "id": i,
            "width": 100,
            "height": 100,
            "neg_category_ids": [3] if i == 1 else [],
            "not_exhaustive_category_ids": [2] if i == 2 else [],
        }
        for i in (1, 2, 3)
    ]
    anns, results = [], []

    def score():
        return float(rng.choice([0.3, 0.5, rng.uniform()]))

    for img in (1, 2, 3):
        for cat in (1, 2, 3):
            for _ in range(rng.integers(0, 4)):
                x, y, s = rng.uniform(0, 60, 3)
                box = [x, y, s + 8, s + 8]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": img,
                        "category_id": cat,
                        "bbox": box,
                        "area": box[2] * box[3],
                    }
                )
                if rng.uniform() < 0.7:
                    jitter = [v + rng.uniform(-3, 3) for v in box]
                    results.append(
                        {"image_id": img, "category_id": cat, "bbox": jitter, "score": score()}
                    )
            for _ in range(rng.integers(0, 3)):
                x, y, s = rng.uniform(0, 60, 3)
                results.append(
                    {
                        "image_id": img,
                        "category_id": cat,
                        "bbox": [x, y, s + 4, s + 4],
                        "score": score(),
                    }
                )
    cats = [{"id": c, "name": str(c), "frequency": f} for c, f in ((1, "f"), (2, "c"), (3, "r"))]
    path = cases.write_json(
        tmp_path / "r.json", {"images": images, "annotations": anns, "categories": cats}
    )
    return path, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accumulate_matches_lvis_reference(tmp_path, monkeypatch, seed):
    """Our numpy-2 accumulate equals lvis 0.5.3's own (run with np.float restored)."""
    lvis = pytest.importorskip("lvis")
    path, results = _random_lvis(np.random.default_rng(seed), tmp_path)
    gt = lvis.LVIS(path)
    dt = lvis.LVISResults(gt, results, max_dets=-1)
    ours = lvis_eval_class()(gt, dt, iou_type="bbox")
    ours.evaluate()
    ours.accumulate()
    monkeypatch.setattr(np, "float", float, raising=False)
    ref = lvis.LVISEval(gt, dt, iou_type="bbox")
    ref.evaluate()
    ref.accumulate()
    assert (ours.eval["precision"] > 0).any() and (ours.eval["precision"] < 1).any()
    np.testing.assert_array_equal(ours.eval["precision"], ref.eval["precision"])
    np.testing.assert_array_equal(ours.eval["recall"], ref.eval["recall"])
