"""COCO box AP for prompt detection: label -> category mapping, crowd regions, empty images."""

import math
import os

import pytest
import torch

from fiber_det.evaluation import FIBERCOCOEvaluator, load_predictions
from fiber_det.evaluation.records import detection_record, xyxy_to_xywh

from . import cases

# Category 3 (image 1, two GT boxes A and B, one crowd region), ranked detections:
#   0.9 = A (TP), 0.8 inside the crowd region (matched to the crowd: ignored), 0.7 nothing (FP),
#   0.6 = B (TP). Counting non-ignored detections: tp = [1, 1, 2], fp = [0, 1, 1]; recall
#   [0.5, 0.5, 1], precision [1, 0.5, 2/3] -> envelope [1, 2/3, 2/3]. COCO's 101 recall levels:
#   r <= 0.5 (51 levels) precision 1, r in (0.5, 1] (50 levels) 2/3:
#   AP = (51 + 50 * 2/3) / 101 = 0.834983. Every match has IoU 1, so AP50 = AP75 = AP.
# Category 5 (image 2, one GT box, no prediction on image 2): AP 0.
# Mean over categories: (0.834983 + 0) / 2.
AP_CAT_A = (51 + 50 * 2 / 3) / 101 * 100
AP_ALL = AP_CAT_A / 2


def test_coco_ap_with_crowd_and_an_image_without_predictions(tmp_path, run_online):
    name, inputs, outputs = cases.coco_case(tmp_path)
    ev = FIBERCOCOEvaluator(
        name, distributed=False, output_dir=str(tmp_path / "out"), plus_one=False
    )
    res = run_online(ev, inputs, outputs)["bbox"]
    assert res["AP"] == pytest.approx(AP_ALL, abs=1e-6)
    assert res["AP50"] == pytest.approx(AP_ALL, abs=1e-6)
    assert res["AP75"] == pytest.approx(AP_ALL, abs=1e-6)
    assert res["APm"] == pytest.approx(AP_ALL, abs=1e-6)  # every GT box is 40x40 or 50x50
    assert math.isnan(res["APs"]) and math.isnan(res["APl"])
    # per-category AP, named after the GT json categories
    assert res["AP-cat_a"] == pytest.approx(AP_CAT_A, abs=1e-6)
    assert res["AP-cat_b"] == pytest.approx(0.0)
    # the predictions file and the results file are written
    saved = load_predictions(str(tmp_path / "out" / "instances_predictions.pth"))
    assert [r["image_id"] for r in saved] == [1, 2] and saved[1]["instances"] == []
    assert os.path.isfile(tmp_path / "out" / "results.json")


def test_labels_map_through_label_to_category_to_dataset_ids(tmp_path):
    name, inputs, outputs = cases.coco_case(tmp_path)
    ev = FIBERCOCOEvaluator(name, distributed=False, plus_one=False)
    # label 1 -> contiguous 0 -> dataset id 3; label 0 -> contiguous 1 -> dataset id 5
    rec = ev.to_record(inputs[0], cases.output([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.4], [1, 0]))
    assert [d["category_id"] for d in rec["instances"]] == [3, 5]
    assert rec["num_prompts"] == 1


def test_wrong_prompt_label_is_a_clear_error(tmp_path):
    name, inputs, _ = cases.coco_case(tmp_path)
    ev = FIBERCOCOEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="label_to_category"):
        ev.to_record(inputs[0], cases.output([[0, 0, 1, 1]], [0.5], [7]))
    with pytest.raises(KeyError, match="label_to_category"):
        ev.to_record({"image_id": 1}, cases.output([[0, 0, 1, 1]], [0.5], [0]))


def test_plus_one_conversion():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    # official COCO path: w = x2 - x1 + 1 = 21, h = y2 - y1 + 1 = 41
    assert xyxy_to_xywh(boxes, plus_one=True).tolist() == [[10, 20, 21, 41]]
    assert xyxy_to_xywh(boxes, plus_one=False).tolist() == [[10, 20, 20, 40]]
    rec = detection_record(
        {"image_id": 7, "label_to_category": [0]},
        cases.output([[10, 20, 30, 60]], [0.5], [0]),
        category_ids=[42],
        plus_one=True,
    )
    assert rec["instances"] == [{"bbox": [10.0, 20.0, 21.0, 41.0], "score": 0.5, "category_id": 42}]


def test_all_images_without_predictions_gives_nan_not_a_crash(tmp_path, run_online):
    name, inputs, _ = cases.coco_case(tmp_path)
    ev = FIBERCOCOEvaluator(name, distributed=False)
    res = run_online(ev, inputs, [cases.output([], [], [])] * 2)["bbox"]
    assert math.isnan(res["AP"])


def test_counts_are_logged(tmp_path, run_online, caplog):
    name, inputs, outputs = cases.coco_case(tmp_path)
    ev = FIBERCOCOEvaluator(name, distributed=False)
    with caplog.at_level("INFO", logger="fiber_det"):
        run_online(ev, inputs, outputs)
    assert "evaluating 2 images, 2 prompts, 4 predicted boxes (1 images without predictions)" in (
        caplog.text
    )
