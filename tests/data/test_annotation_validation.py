"""Bad annotation files: each loader (COCO, ODinW, D3, LVIS, MDETR) refuses what is ambiguous or
malformed with the file, the record and the fix, and drops and counts what is confined to a box."""

import copy
import json
import logging
import math

import pytest

from fiber_det.data.datasets import (
    load_d3_json,
    load_detection_json,
    load_lvis_detection_json,
    load_mdetr_grounding_json,
)
from fiber_det.data.datasets.builtin import ODINW_13
from fiber_det.data.datasets.validation import AnnotationError

from .tiny_data import coco_dict, flickr_image, lvis_dict, mdetr_dict

LOADERS = ["coco", "odinw", "d3", "lvis", "mdetr"]


def _base(kind: str) -> dict:
    """A valid file of ``kind``: two images (ids 1, 2), three boxes (the first two on image 1)."""
    if kind == "lvis":
        data = lvis_dict(5)
        data["images"][0]["id"], data["images"][1]["id"] = 1, 2
        for ann, img in zip(data["annotations"], (1, 1, 2)):
            ann["image_id"] = img
        return data
    if kind == "mdetr":
        images = [flickr_image(1, "a.jpg"), flickr_image(2, "b.jpg")]
        boxes = [(1, [2, 2, 20, 20], [[0, 5]]), (1, [9, 9, 9, 9], [[14, 25]])]
        return mdetr_dict(images, boxes + [(2, [1, 1, 30, 30], [[43, 48]])])
    images = [(1, "a.jpg", 64, 48), (2, "b.jpg", 64, 48)]
    anns = [(1, 1, [4, 6, 20, 24]), (1, 18, [30, 10, 25, 30]), (2, 3, [10, 10, 30, 20])]
    return coco_dict(images, anns)


def _load(kind: str, data: dict, tmp_path):
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON extensions
    root = str(tmp_path)
    if kind == "coco":
        return load_detection_json(str(path), root)
    if kind == "odinw":
        return load_detection_json(str(path), root, category_names=ODINW_13["aquarium"][2][:3])
    if kind == "d3":
        return load_d3_json(str(path), root, intra_scenario=False)
    if kind == "lvis":
        return load_lvis_detection_json(str(path), root)
    return load_mdetr_grounding_json(str(path), root)


def _boxes(dicts):
    return {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in dicts}


@pytest.mark.parametrize("kind", LOADERS)
def test_valid_files_load_every_box(kind, tmp_path):
    assert [len(b) for b in _boxes(_load(kind, _base(kind), tmp_path)).values()] == [2, 1]


@pytest.mark.parametrize("kind", LOADERS)
def test_duplicate_image_ids_are_refused(kind, tmp_path):
    data = _base(kind)
    data["images"][1]["id"] = 1
    with pytest.raises(AnnotationError, match=r"images #0 and #1 have the same id 1.*own id"):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", LOADERS)
def test_image_id_of_another_type_is_refused_not_dropped(kind, tmp_path):
    data = _base(kind)
    data["annotations"][2]["image_id"] = "2"  # the image's id is the integer 2
    with pytest.raises(
        AnnotationError, match=r"annotation #2 .*image_id '2' \(str\).*is 2 \(int\)"
    ):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", LOADERS)
def test_annotations_of_unknown_images_are_dropped_and_counted(kind, tmp_path, caplog):
    data = _base(kind)
    data["annotations"][2]["image_id"] = 99
    with caplog.at_level(logging.WARNING):
        dicts = _load(kind, data, tmp_path)
    assert [len(b) for b in _boxes(dicts).values()] == [2, 0]
    assert "image_id 99" in caplog.text and "annotation_of_unknown_image: 1" in caplog.text


@pytest.mark.parametrize("kind", LOADERS)
def test_a_file_whose_annotations_match_no_image_is_refused(kind, tmp_path):
    data = _base(kind)
    for ann in data["annotations"]:
        ann["image_id"] += 100
    with pytest.raises(AnnotationError, match="none of its 3 annotations .*another file"):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", ["coco", "odinw", "d3", "lvis"])
def test_duplicate_category_ids_are_refused(kind, tmp_path):
    data = _base(kind)
    data["categories"][1]["id"] = data["categories"][0]["id"]
    with pytest.raises(AnnotationError, match=r"categories #0 and #1 have the same id"):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_boxes_of_unknown_categories_are_dropped_and_counted(kind, tmp_path, caplog):
    data = _base(kind)
    data["annotations"][0]["category_id"] = 777
    with caplog.at_level(logging.WARNING):
        dicts = _load(kind, data, tmp_path)
    assert [len(b) for b in _boxes(dicts).values()] == [1, 1]
    assert "unknown_category_id: 1" in caplog.text


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize(
    "bbox, reason",
    [
        ([math.nan, 2, 3, 4], "non_finite_box"),
        ([1, 2, math.inf, 4], "non_finite_box"),
        ([1, 2, -3, 4], "negative_box_size"),
        ([1, 2, 3, 1e9], "box_larger_than_twice_its_image"),
        ([0, 0, 129, 10], "box_larger_than_twice_its_image"),  # 64 px wide image
    ],
)
def test_non_finite_and_absurd_boxes_are_dropped_and_counted(kind, bbox, reason, tmp_path, caplog):
    data = _base(kind)
    data["annotations"][1]["bbox"] = bbox
    with caplog.at_level(logging.WARNING):
        dicts = _load(kind, data, tmp_path)
    boxes = _boxes(dicts)
    assert len(boxes[1]) == 1 and all(math.isfinite(v) for b in boxes[1] for v in b)
    assert f"{reason}: 1" in caplog.text and "annotation #1" in caplog.text


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize(
    "where, key",
    [("images", "height"), ("images", "id"), ("annotations", "bbox"), ("annotations", "image_id")],
)
def test_missing_required_keys_are_refused_with_the_record(kind, where, key, tmp_path):
    data = _base(kind)
    del data[where][1][key]
    kind_name = where[:-1]
    with pytest.raises(AnnotationError, match=rf"{kind_name} #1 .*has no '{key}'"):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", ["coco", "odinw", "d3", "lvis"])
def test_missing_category_keys_and_sections_are_refused(kind, tmp_path):
    data = _base(kind)
    del data["annotations"][0]["category_id"]
    with pytest.raises(AnnotationError, match=r"annotation #0 .*has no 'category_id'"):
        _load(kind, data, tmp_path)
    data = _base(kind)
    del data["categories"][0]["name"]
    with pytest.raises(AnnotationError, match=r"category #0 .*has no 'name'"):
        _load(kind, data, tmp_path)
    data = _base(kind)
    del data["categories"]
    with pytest.raises(AnnotationError, match=r"the file has no 'categories'.*right file"):
        _load(kind, data, tmp_path)
    with pytest.raises(AnnotationError, match="the file is a list, not an object"):
        _load(kind, [], tmp_path)


WRONG_TYPES = [
    ("annotations", 0, "bbox", "4,6,20,24", r"bbox '4,6,20,24'.*4 numbers"),
    ("annotations", 0, "bbox", [4, 6, 20], r"bbox \[4, 6, 20\].*4 numbers"),
    ("annotations", 0, "iscrowd", 2, "iscrowd 2: it must be 0 or 1"),
    ("images", 0, "id", 1.5, "id 1.5 of type float"),
    ("images", 0, "height", "48", "height '48': image sizes must be positive integers"),
    ("images", 1, "width", 0, "width 0: image sizes must be positive integers"),
    ("images", 1, "id", "b", "image ids mix integers and strings"),
    ("annotations", 0, "image_id", [1], r"image_id \[1\] of type list"),
]


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("where, index, key, value, message", WRONG_TYPES)
def test_wrong_types_are_refused(kind, where, index, key, value, message, tmp_path):
    data = _base(kind)
    data[where][index][key] = value
    with pytest.raises(AnnotationError, match=message):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_category_id_of_another_type_is_refused_with_a_hint(kind, tmp_path):
    data = _base(kind)
    cid = data["annotations"][0]["category_id"]
    data["annotations"][0]["category_id"] = str(cid)
    with pytest.raises(AnnotationError, match=rf"category_id '{cid}' of type str \(the file has"):
        _load(kind, data, tmp_path)


@pytest.mark.parametrize("kind", LOADERS)
def test_duplicate_annotation_ids_are_refused(kind, tmp_path):
    data = _base(kind)
    data["annotations"][2]["id"] = data["annotations"][0]["id"]
    with pytest.raises(AnnotationError, match="annotations #0 and #2 have the same id"):
        _load(kind, data, tmp_path)


def test_lvis_image_without_a_path_is_refused(tmp_path):
    data = _base("lvis")
    del data["images"][1]["coco_url"]
    with pytest.raises(AnnotationError, match="LVIS image 2 has neither 'coco_url' nor"):
        _load("lvis", data, tmp_path)
    data = _base("lvis")
    data["images"][0]["neg_category_ids"] = 5
    with pytest.raises(AnnotationError, match="neg_category_ids 5: it must be a list"):
        _load("lvis", data, tmp_path)


def test_mdetr_malformed_spans_are_dropped_and_counted(tmp_path, caplog):
    data = _base("mdetr")
    data["annotations"][0]["tokens_positive"] = 7  # not a list of spans
    data["annotations"][1]["tokens_positive"] = [["a", "b"]]
    with caplog.at_level(logging.WARNING):
        dicts = _load("mdetr", data, tmp_path)
    assert _boxes(dicts)[1] == []
    assert "span_outside_caption: 2" in caplog.text and "box_without_valid_span: 2" in caplog.text
    bad = copy.deepcopy(_base("mdetr"))
    bad["images"][0]["tokens_positive_eval"] = "0-5"
    with pytest.raises(AnnotationError, match="tokens_positive_eval '0-5': it must be a list"):
        _load("mdetr", bad, tmp_path)


def test_intra_scenario_d3_needs_the_pickle_opt_in(tmp_path, monkeypatch):
    """The D3 toolkit unpickles d3_pkl/*.pkl: refused without FIBER_D3_ALLOW_PICKLE=1, before
    any file is opened."""
    from fiber_det.data.datasets.d3 import D3_PICKLE_OPT_IN, d3_group_sent_ids

    pkl = tmp_path / "d3_pkl"
    pkl.mkdir()
    (pkl / "images.pkl").write_bytes(b"not read")
    monkeypatch.delenv(D3_PICKLE_OPT_IN, raising=False)
    with pytest.raises(PermissionError, match=D3_PICKLE_OPT_IN):
        d3_group_sent_ids(str(tmp_path), str(pkl), [1])
    monkeypatch.setenv(D3_PICKLE_OPT_IN, "1")  # opted in: goes on to the toolkit and its files
    with pytest.raises((ImportError, FileNotFoundError, OSError, ValueError)) as err:
        d3_group_sent_ids(str(tmp_path), str(pkl), [1])
    assert not isinstance(err.value, PermissionError)
