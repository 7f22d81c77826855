"""RefCOCO/+/g Precision@k with GIoU (official) and IoU."""

import numpy as np
import pytest

from fiber_det.evaluation import RefExpEvaluator
from fiber_det.evaluation.refexp import refexp_hits

from . import cases

# Worked example (cases.refexp_case), GT boxes in xyxy:
# refcoco 1: GT [0,0,100,100]; rank 1 [18,18,118,118]: intersection 82^2 = 6724, union
#   2 * 10000 - 6724 = 13276, IoU 0.5065 (a hit); enclosing box 118^2 = 13924,
#   GIoU = 0.5065 - (13924 - 13276) / 13924 = 0.4599 (a miss); rank 2 is the GT box.
#   -> GIoU: P@1 no, P@5 yes; IoU: P@1 yes, P@5 yes.
# refcoco 2: GT [200,200,300,300]; two boxes tied at 0.5: the GT box, then [250,250,350,350]
#   (IoU 2500 / 17500). The official tie-break (sorting (score, box) in reverse) puts the larger
#   coordinates first: the miss is rank 1. -> P@1 no, P@5 yes (both).
# refcoco 3: no predicted box -> miss. refcoco 4: no prediction record -> miss.
# refcoco: P@1 (GIoU) 0/4, P@1_IoU 1/4, P@5 = P@10 = 2/4 (both).
# refcoco+ 5: GT [0,0,20,20] predicted exactly -> 100 everywhere.


def test_refexp_precision_giou_and_iou(tmp_path, run_online):
    name, inputs, outputs = cases.refexp_case(tmp_path)
    res = run_online(RefExpEvaluator(name, distributed=False), inputs, outputs)
    assert list(res) == ["refcoco", "refcoco+"]
    assert res["refcoco"] == {
        "P@1": 0.0,
        "P@5": 50.0,
        "P@10": 50.0,
        "P@1_IoU": 25.0,
        "P@5_IoU": 50.0,
        "P@10_IoU": 50.0,
    }
    assert all(v == 100.0 for v in res["refcoco+"].values())


def test_giou_is_stricter_than_iou():
    rec = {
        "image_id": 1,
        "instances": [{"bbox": [18, 18, 100, 100], "score": 0.9, "category_id": 0}],
    }
    giou_hits, iou_hits = refexp_hits(rec, np.array([0, 0, 100, 100.0]), (1,), 0.5)
    assert giou_hits == {1: False} and iou_hits == {1: True}


def test_ties_broken_by_box_coordinates():
    gt = np.array([0, 0, 10, 10.0])
    hit = {"bbox": [0, 0, 10, 10], "score": 0.5, "category_id": 0}
    miss = {"bbox": [50, 50, 10, 10], "score": 0.5, "category_id": 0}
    # whatever the input order, the box with larger coordinates (the miss) ranks first
    for inst in ([hit, miss], [miss, hit]):
        giou, iou = refexp_hits({"image_id": 1, "instances": inst}, gt, (1, 5), 0.5)
        assert giou == iou == {1: False, 5: True}


def test_bad_topk(tmp_path):
    name, _, _ = cases.refexp_case(tmp_path)
    with pytest.raises(ValueError, match="positive"):
        RefExpEvaluator(name, topk=(1, -1))
