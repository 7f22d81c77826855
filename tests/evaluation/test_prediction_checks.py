"""Bad predictions never score silently: non-finite boxes or scores, unknown category ids,
duplicated records and records of another dataset are dropped and counted (in the log and in
results.json) or refused; prediction files are read without unpickling."""

import copy
import json
import logging
import math

import pytest
import torch
from detectron2.config import get_cfg

from fiber_det import add_fiber_config
from fiber_det.evaluation import build_evaluator
from fiber_det.evaluation.records import load_predictions

from . import cases
from .test_offline_tool import _tool

NAN, INF = float("nan"), float("inf")


def _evaluator(name, output_dir=None):
    cfg = get_cfg()
    add_fiber_config(cfg)
    return build_evaluator(cfg, name, output_folder=output_dir)


def _records(case, tmp_path):
    name, inputs, outputs = getattr(cases, f"{case}_case")(tmp_path)
    ev = _evaluator(name)
    return name, ev, [ev.to_record(i, o) for i, o in zip(inputs, outputs)]


def _score(ev, records, caplog):
    with caplog.at_level(logging.INFO, logger="fiber_det"):
        return ev.evaluate_predictions(copy.deepcopy(records)), dict(ev.prediction_checks)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"bbox": [NAN, 10, 40, 40], "score": 0.99, "category_id": 3}, "non_finite_boxes"),
        ({"bbox": [10, 10, INF, 40], "score": 0.99, "category_id": 3}, "non_finite_boxes"),
        ({"bbox": [10, 10, 40, 40], "score": NAN, "category_id": 3}, "non_finite_scores"),
        ({"bbox": [150, 150, 40, 40], "score": 0.99, "category_id": 999}, "unknown_category_ids"),
    ],
)
def test_bad_boxes_are_dropped_counted_and_do_not_change_the_ap(bad, reason, tmp_path, caplog):
    name, ev, records = _records("coco", tmp_path)
    clean, checks = _score(ev, records, caplog)
    assert checks[reason] == 0 and checks["boxes_kept"] == checks["boxes"] == 4
    records[0]["instances"].insert(0, bad)
    caplog.clear()
    res, checks = _score(ev, records, caplog)
    assert json.dumps(res) == json.dumps(clean)  # NaN-aware equality of every metric
    assert checks[reason] == 1 and checks["boxes"] == 5 and checks["boxes_kept"] == 4
    assert f"{reason}: 1" in caplog.text and "prediction checks dropped" in caplog.text
    assert len(records[0]["instances"]) == 5  # the caller's records are not modified


def test_a_duplicated_record_is_counted_once(tmp_path, caplog):
    name, ev, records = _records("coco", tmp_path)
    clean, _ = _score(ev, records, caplog)
    res, checks = _score(ev, records + [copy.deepcopy(records[0])], caplog)
    assert json.dumps(res) == json.dumps(clean)
    assert checks["duplicate_records"] == 1 and checks["records_kept"] == 2
    assert "duplicate_records: 1 (e.g. [1])" in caplog.text


def test_records_of_unknown_images_are_dropped_and_another_datasets_refused(tmp_path, caplog):
    name, ev, records = _records("coco", tmp_path)
    clean, _ = _score(ev, records, caplog)
    stray = {"image_id": 77, "instances": records[0]["instances"], "num_prompts": 1}
    res, checks = _score(ev, records + [stray], caplog)
    assert json.dumps(res) == json.dumps(clean) and checks["records_not_in_dataset"] == 1
    foreign = [dict(r, image_id=r["image_id"] + 1000) for r in records]
    with pytest.raises(ValueError, match=r"none of the 2 prediction records is an image of"):
        ev.evaluate_predictions(foreign)


def test_predictions_with_none_of_the_datasets_category_ids_are_refused(tmp_path):
    name, ev, records = _records("coco", tmp_path)
    contiguous = copy.deepcopy(records)  # what detectron2's COCOEvaluator would save: 0, 1
    for r in contiguous:
        for d in r["instances"]:
            d["category_id"] = 0
    with pytest.raises(ValueError, match=r"none of the 4 predicted boxes has a category id of"):
        ev.evaluate_predictions(contiguous)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_id": 1},
        {"image_id": 1, "instances": [{"bbox": [1, 2, 3], "score": 0.5, "category_id": 3}]},
        {"image_id": 1, "instances": [{"bbox": [1, 2, 3, 4], "score": "high", "category_id": 3}]},
        {"image_id": 1, "instances": [{"bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 3.0}]},
    ],
)
def test_malformed_records_are_refused(bad, tmp_path):
    name, ev, records = _records("coco", tmp_path)
    with pytest.raises(ValueError, match=r"prediction record #2 .*data contract, section 4"):
        ev.evaluate_predictions(records + [bad])


def test_lvis_chunk_records_are_merged_and_repeats_dropped(tmp_path, caplog):
    pytest.importorskip("lvis")
    name, ev, records = _records("lvis", tmp_path)
    clean, checks = _score(ev, records, caplog)
    assert checks["merged_records"] == 1 and checks["duplicate_records"] == 0  # two chunks
    nan = {"bbox": [0, 0, NAN, 50], "score": 0.999, "category_id": 1}
    bad = copy.deepcopy(records) + [copy.deepcopy(records[1])]
    bad[0]["instances"].append(nan)
    res, checks = _score(ev, bad, caplog)
    assert json.dumps(res) == json.dumps(clean)
    assert checks["duplicate_records"] == 1 and checks["non_finite_boxes"] == 1


@pytest.mark.parametrize("case", ["flickr", "refexp"])
def test_grounding_phrase_labels_outside_the_caption_and_duplicates(case, tmp_path, caplog):
    name, ev, records = _records(case, tmp_path)
    clean, _ = _score(ev, records, caplog)
    bad = copy.deepcopy(records) + [copy.deepcopy(records[0])]
    bad[0]["instances"].insert(0, {"bbox": [0, 0, 5, 5], "score": 1.0, "category_id": 7})
    res, checks = _score(ev, bad, caplog)
    assert json.dumps(res) == json.dumps(clean)
    assert checks["unknown_category_ids"] == 1 and checks["duplicate_records"] == 1


def test_refexp_records_of_another_refcoco_variant_are_not_scored(tmp_path, caplog):
    name, ev, records = _records("refexp", tmp_path)
    clean, _ = _score(ev, records, caplog)
    assert records[0]["dataset_name"] == "refcoco"
    swapped = copy.deepcopy(records)
    swapped[0]["dataset_name"] = "refcoco+"  # same image id, another dataset's expression
    swapped[0]["instances"] = [{"bbox": [0, 0, 100, 100], "score": 1.0, "category_id": 0}]
    res, checks = _score(ev, swapped, caplog)
    assert checks["records_not_in_dataset"] == 1
    assert res["refcoco"]["P@1_IoU"] == 0.0 < clean["refcoco"]["P@1_IoU"]  # counted as a miss


def test_counts_are_saved_in_results_json_online(tmp_path, run_online, caplog):
    name, inputs, outputs = cases.coco_case(tmp_path)
    outputs[0]["instances"].pred_boxes.tensor[0, 2] = NAN
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        run_online(_evaluator(name, str(tmp_path / "out")), inputs, outputs)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["prediction_checks"]["non_finite_boxes"] == 1
    assert math.isfinite(saved["bbox"]["AP"]) and "non_finite_boxes: 1" in caplog.text


def test_offline_tool_reports_the_counts(tmp_path, caplog):
    name, ev, records = _records("coco", tmp_path)
    records[0]["instances"].append({"bbox": [1, 1, 1, NAN], "score": 0.5, "category_id": 3})
    pred, out = tmp_path / "p.pth", tmp_path / "r.json"
    torch.save(records, pred)
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        assert (
            _tool().main(["--dataset", name, "--predictions", str(pred), "--output", str(out)]) == 0
        )
    assert json.loads(out.read_text())[name]["prediction_checks"]["non_finite_boxes"] == 1
    assert "non_finite_boxes: 1" in caplog.text


class _Payload:
    def __reduce__(self):  # what a hostile pickle does on load
        return (open, ("/tmp/fiber_det_pwned_by_predictions", "w"))


def test_prediction_files_are_never_unpickled(tmp_path):
    import os

    marker = "/tmp/fiber_det_pwned_by_predictions"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    torch.save([{"image_id": 1, "instances": [], "x": _Payload()}], path)
    with pytest.raises(ValueError, match="not a fiber-det predictions file .*not unpickled"):
        load_predictions(str(path))
    assert not os.path.exists(marker)


def test_json_predictions_records_or_coco_results(tmp_path, caplog):
    name, ev, records = _records("coco", tmp_path)
    clean, _ = _score(ev, records, caplog)
    as_records = tmp_path / "records.json"
    as_records.write_text(json.dumps(records))
    coco = [dict(d, image_id=r["image_id"]) for r in records for d in r["instances"]]
    as_coco = tmp_path / "coco_results.json"
    as_coco.write_text(json.dumps(coco))
    for path in (as_records, as_coco):
        res, _ = _score(ev, load_predictions(str(path)), caplog)
        assert json.dumps(res) == json.dumps(clean)
