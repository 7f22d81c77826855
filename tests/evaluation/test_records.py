"""Prediction records, atomic result files and the predictions loader."""

import json

import pytest
import torch

from fiber_det.evaluation.records import (
    atomic_save_json,
    grounding_record,
    load_predictions,
    num_prompts,
)

from . import cases


def test_grounding_record_keeps_phrase_labels_and_fields():
    inp = {
        "image_id": 3,
        "original_img_id": 1000,
        "sentence_id": 2,
        "dataset_name": "x",
        "tokens_positive_eval": [[[0, 1]], [[2, 3]]],
        "caption": "not carried",
    }
    rec = grounding_record(inp, cases.output([[1, 2, 4, 8]], [0.25], [1]))
    assert rec == {
        "image_id": 3,
        "num_prompts": 1,
        "num_phrases": 2,
        "original_img_id": 1000,
        "sentence_id": 2,
        "dataset_name": "x",
        # xyxy [1,2,4,8] -> xywh without "+1"
        "instances": [{"bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.25, "category_id": 1}],
    }
    assert num_prompts({"prompts": [{}, {}, {}]}) == 3 and num_prompts({}) == 1


def test_results_json_is_strict(tmp_path):
    path = tmp_path / "r.json"
    atomic_save_json({"bbox": {"AP": float("nan"), "AP50": 1.5}}, str(path))
    assert json.loads(path.read_text()) == {"bbox": {"AP": None, "AP50": 1.5}}
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_load_predictions_checks_the_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_predictions.pth"):
        load_predictions(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save([{"image_id": 1, "instances": None}, {"boxes": []}], bad)
    with pytest.raises(ValueError, match="data contract"):
        load_predictions(str(bad))
    good = tmp_path / "good.pth"
    torch.save([{"image_id": 1, "instances": [], "num_prompts": 1}], good)
    assert load_predictions(str(good))[0]["image_id"] == 1
