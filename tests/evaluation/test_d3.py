"""D3: one intra-scenario run scored on the FULL, PRES and ABS GT jsons with pycocotools."""

import pytest

from fiber_det.evaluation import D3Evaluator
from fiber_det.evaluation.coco import d3_gt_files

from . import cases

# Worked example (cases.d3_case; description ids 1, 2 presence, 3 absence; each image queried
# with its group's descriptions, one per forward). Every TP has IoU 1.
#   description 1: one GT (image 0), 0.9 TP -> AP 1
#   description 2: one GT (image 1), never predicted -> AP 0
#   description 3: one GT (image 1), 0.7 TP (image 1) then 0.6 FP (image 0) -> AP 1
# FULL = mean(1, 0, 1) = 2/3; PRES = mean(1, 0) = 1/2; ABS = 1.


def test_d3_full_pres_abs(tmp_path, run_online, caplog):
    name, inputs, outputs = cases.d3_case(tmp_path)
    ev = D3Evaluator(name, distributed=False, plus_one=False)
    with caplog.at_level("INFO", logger="fiber_det"):
        res = run_online(ev, inputs, outputs)
    assert list(res) == ["FULL", "PRES", "ABS"]
    assert res["FULL"]["AP"] == pytest.approx(200 / 3)
    assert res["PRES"]["AP"] == pytest.approx(50.0)
    assert res["ABS"]["AP"] == pytest.approx(100.0)
    # category ids are description ids: no per-description table
    assert not any(k.startswith("AP-") for k in res["FULL"])
    assert "2 images, 4 prompts" in caplog.text and "intra-scenario" in caplog.text


def test_d3_gt_files_follow_the_dataset_json(tmp_path):
    name, _, _ = cases.d3_case(tmp_path)
    root = tmp_path / "d3_json"

    class Meta(dict):
        get = dict.get

    assert list(d3_gt_files(Meta(json_file=str(root / "d3_full_annotations.json")))) == [
        "FULL",
        "PRES",
        "ABS",
    ]
    # a PRES dataset (its run only queried presence descriptions) is scored on PRES alone
    pres = str(root / "d3_pres_annotations.json")
    assert d3_gt_files(Meta(json_file=pres)) == {"PRES": pres}
    with pytest.raises(ValueError, match="D3 GT subsets"):
        D3Evaluator(name, gt_files={"SOME": pres})
