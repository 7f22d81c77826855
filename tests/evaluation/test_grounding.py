"""Phrase-grounding recall with GT from the dataset dicts (evaluator_type "grounding")."""

import pytest
from detectron2.structures import BoxMode

from fiber_det.evaluation import GroundingRecallEvaluator

from . import cases


def _ann(box, span):
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "tokens_positive": [span]}


def test_grounding_recall_from_dataset_dicts(run_online):
    # caption "a red circle left of a blue square": phrase 0 = "a red circle" (chars 0-12),
    # phrase 1 = "a blue square" (chars 21-34) with two boxes, phrase 2 has no box (not scored).
    d = {
        "image_id": 1,
        "file_name": "1.jpg",
        "height": 100,
        "width": 100,
        "caption": "a red circle left of a blue square",
        "tokens_positive_eval": [[[0, 12]], [[21, 34]], [[13, 17]]],
        "annotations": [
            _ann([0, 0, 10, 10], [0, 12]),
            _ann([50, 50, 10, 10], [21, 34]),
            _ann([80, 80, 10, 10], [23, 27]),
        ],
    }
    name = cases.register(
        cases.unique_name("grounding"), [d, dict(d, image_id=2)], evaluator_type="grounding"
    )
    inp = {k: v for k, v in d.items() if k != "annotations"}
    # image 1: phrase 0 hit at rank 1; phrase 1 hit (its second box, [80,80,90,90]) at rank 2.
    # image 2: no record -> both phrases miss.
    # R@1 = 1/4, R@5 = 2/4.
    out = cases.output([[0, 0, 10, 10], [0, 0, 5, 5], [80, 80, 90, 90]], [0.9, 0.8, 0.7], [0, 1, 1])
    res = run_online(GroundingRecallEvaluator(name, distributed=False), [inp], [out])["grounding"]
    assert (res["R@1"], res["R@5"], res["UB"]) == (25.0, 50.0, 50.0)


def test_missing_tokens_positive_eval_is_an_error(run_online):
    name = cases.register(
        cases.unique_name("grounding"),
        [{"image_id": 1, "annotations": []}],
        evaluator_type="grounding",
    )
    ev = GroundingRecallEvaluator(name, distributed=False)
    with pytest.raises(KeyError, match="tokens_positive_eval"):
        run_online(ev, [], [])
