"""Bad data: missing / corrupt images, boxes outside the image, degenerate boxes, empty images,
prompts that do not fit. Each gives a clear error or a documented, counted and logged skip."""

import logging

import pytest
import torch

from fiber_det.data import (
    get_fiber_dataset_dicts,
    register_detection_dataset,
    register_grounding_dataset,
)
from fiber_det.data.transforms import annotations_to_boxes

from .tiny_data import decode, write_coco, write_json

NO_FLIP = {"DATASETS.FIBER.FLIP_PROB": 0.0}


@pytest.fixture
def coco(tmp_path, unique_name):
    name = unique_name("coco")
    json_file, image_root = write_coco(tmp_path)
    register_detection_dataset(name, json_file, image_root)
    return name, json_file, image_root


def _record(dicts, boxes):
    record = dict(dicts[0])
    record["annotations"] = [
        {"bbox": b, "bbox_mode": 1, "category_id": c, "iscrowd": 0} for c, b in boxes
    ]
    return record


def test_missing_image_names_the_file(coco, make_mapper, tmp_path):
    name, _, _ = coco
    record = dict(get_fiber_dataset_dicts([name])[0], file_name=str(tmp_path / "gone.jpg"))
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg.*image root"):
        make_mapper(False, [name])(record)


def test_corrupt_image_names_the_file(coco, make_mapper, tmp_path):
    name, _, _ = coco
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    record = dict(get_fiber_dataset_dicts([name])[0], file_name=str(bad))
    with pytest.raises(OSError, match=r"cannot read image .*corrupt\.jpg.*corrupt or not an image"):
        make_mapper(False, [name])(record)


def test_image_size_mismatch_is_an_error(coco, make_mapper):
    name, _, _ = coco
    record = dict(get_fiber_dataset_dicts([name])[0], width=100)
    with pytest.raises(ValueError, match="is 64x48 but its annotation file says 100x48"):
        make_mapper(False, [name])(record)


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(coco, make_mapper, caplog):
    name, _, _ = coco
    dicts = get_fiber_dataset_dicts([name])
    boxes = [(0, [50, 40, 30, 30]), (2, [70, 10, 10, 10]), (1, [10, 10, 0, 5]), (1, [5, 5, -3, 9])]
    mapper = make_mapper(True, [name], NO_FLIP)
    with caplog.at_level(logging.WARNING):
        out = mapper(_record(dicts, boxes))
    inst = out["instances"]
    # only the first box survives, clipped to the 64x48 image (x5 resize to 320x240)
    assert len(inst) == 1 and inst.gt_classes.tolist() == [0]
    assert inst.gt_boxes.tensor[0].tolist() == [250, 200, 320, 240]
    counts = mapper.issues.counts
    assert counts["clipped_box"] == 1 and counts["empty_after_clip"] == 1
    assert counts["degenerate_box"] == 2
    assert "degenerate_box x2" in caplog.text and "000000.jpg" in caplog.text


def test_box_conversion_conventions():
    anns = [{"bbox": [4, 6, 20, 24], "bbox_mode": 1}, {"bbox": [10, 10, 1, 5], "bbox_mode": 1}]
    boxes, kept, issues = annotations_to_boxes(anns, 48, 64, plus_one=True)
    assert boxes.tolist() == [[4, 6, 23, 29]] and kept == [0]  # 1-px box collapses with +1
    assert issues["empty_after_clip"] == 1
    boxes, kept, _ = annotations_to_boxes(anns, 48, 64, plus_one=False)
    assert boxes.tolist() == [[4, 6, 24, 30], [10, 10, 11, 15]] and kept == [0, 1]
    boxes, _, _ = annotations_to_boxes(
        [{"bbox": [0, 0, 64, 48], "bbox_mode": 1}], 48, 64, plus_one=True
    )
    assert boxes.tolist() == [[0, 0, 63, 47]]
    xyxy = [{"bbox": [1, 2, 30, 40], "bbox_mode": 0}]
    assert annotations_to_boxes(xyxy, 48, 64, plus_one=False)[0].tolist() == [[1, 2, 30, 40]]


def test_image_without_annotations_is_a_negative_when_kept(coco, make_mapper):
    name, json_file, _ = coco
    dicts = get_fiber_dataset_dicts([name])
    out = make_mapper(True, [name], NO_FLIP)(_record(dicts, []))
    assert len(out["instances"]) == 0
    assert out["instances"].positive_map.shape == (0, out["input_ids"].shape[0])
    assert len(out["positive_map"]) == 3  # the prompt still lists every category


def test_crowd_boxes_are_not_training_targets(coco, make_mapper):
    name, _, _ = coco
    record = _record(get_fiber_dataset_dicts([name]), [(0, [4, 6, 20, 24]), (1, [8, 8, 20, 20])])
    record["annotations"][1]["iscrowd"] = 1
    out = make_mapper(True, [name], NO_FLIP)(record)
    assert out["instances"].gt_classes.tolist() == [0]


def _long_vocabulary(tmp_path, unique_name):
    """40 categories of ~3 tokens each (far over the tiny 64-token budget); image 1 has a box of
    the first and of the last category."""
    from .tiny_data import coco_dict, write_image

    names = [f"dog {i}" for i in range(40)]
    write_image(tmp_path / "a.jpg", 64, 48)
    cats = [(i + 1, n) for i, n in enumerate(names)]
    anns = [(1, 1, [2, 2, 20, 20]), (1, 40, [30, 5, 20, 20])]
    json_file = write_json(tmp_path / "long.json", coco_dict([(1, "a.jpg", 64, 48)], anns, cats))
    name = unique_name()
    register_detection_dataset(name, json_file, str(tmp_path))  # its own policy: "full"
    return name, get_fiber_dataset_dicts([name])


def test_full_prompt_that_cannot_hold_the_vocabulary_switches_to_sampled(
    tmp_path, unique_name, make_mapper, tokenizer, caplog
):
    name, dicts = _long_vocabulary(tmp_path, unique_name)
    opts = {**NO_FLIP, "DATASETS.FIBER.SHUFFLE_CATEGORIES": False}
    mapper = make_mapper(True, [name], opts)
    with caplog.at_level(logging.WARNING):
        out = mapper(dicts[0])
        mapper(dicts[0])
    assert caplog.text.count("using 'sampled' prompts") == 1  # once per dataset, never silent
    assert "40 category names take" in caplog.text
    rows = [decode(tokenizer, out["input_ids"], r) for r in out["instances"].positive_map]
    assert sorted(rows) == ["dog 0", "dog 39"]  # no box lost to a cut-off prompt
    assert mapper.issues.counts["box_without_tokens"] == 0
    assert mapper.issues.counts["prompt_truncated"] == 0
    # evaluation packs the names into several prompts instead of truncating
    ev = make_mapper(False, [name])(dicts[0])
    assert len(ev["prompts"]) > 1 and ev["label_to_category"] == list(range(40))
    assert all(int(p["attention_mask"].sum()) <= 64 for p in ev["prompts"])


def test_explicit_full_prompt_that_cannot_hold_the_vocabulary_is_refused(
    tmp_path, unique_name, make_mapper
):
    name, dicts = _long_vocabulary(tmp_path, unique_name)
    mapper = make_mapper(True, [name], {**NO_FLIP, "DATASETS.FIBER.TRAIN_PROMPT": "full"})
    with pytest.raises(ValueError, match=r"40 category names take \d+ tokens.*TRAIN_PROMPT"):
        mapper(dicts[0])


def test_truncated_caption_is_logged_and_its_boxes_counted(
    tmp_path, unique_name, make_mapper, tokenizer, caplog
):
    from .tiny_data import flickr_image, mdetr_dict, write_image

    caption = " ".join(["dog"] * 70) + " a man"  # the phrase "a man" is past the 64-token cut
    end = len(caption)
    write_image(tmp_path / "a.jpg", 64, 48)
    img = flickr_image(1, "a.jpg", caption=caption, phrases=[[[0, 3]], [[end - 5, end]]])
    data = mdetr_dict(
        [img], [(1, [2, 2, 20, 20], [[0, 3]]), (1, [30, 5, 20, 20], [[end - 5, end]])]
    )
    name = unique_name()
    register_grounding_dataset(name, write_json(tmp_path / "g.json", data), str(tmp_path))
    dicts = get_fiber_dataset_dicts([name])
    mapper = make_mapper(True, [name], NO_FLIP)
    with caplog.at_level(logging.WARNING):
        out = mapper(dicts[0])
    assert "truncated to 64" in caplog.text  # never silent
    assert mapper.issues.counts["prompt_truncated"] == 1
    assert mapper.issues.counts["box_without_tokens"] == 1  # "a man" was cut off
    assert [decode(tokenizer, out["input_ids"], r) for r in out["instances"].positive_map] == [
        "dog"
    ]


def test_a_name_that_cannot_fit_any_prompt_is_an_error_naming_it(
    tmp_path, unique_name, make_mapper
):
    from .tiny_data import coco_dict, write_image

    long_name = " ".join(["dog"] * 80)
    write_image(tmp_path / "a.jpg", 64, 48)
    data = coco_dict([(1, "a.jpg", 64, 48)], [], [(1, "cat"), (2, long_name)])
    name = unique_name()
    register_detection_dataset(name, write_json(tmp_path / "l.json", data), str(tmp_path))
    dicts = get_fiber_dataset_dicts([name])
    with pytest.raises(ValueError, match="'dog dog dog.*cannot be put in any prompt"):
        make_mapper(False, [name])(dicts[0])


def test_summary_is_logged_periodically(coco, make_mapper, caplog):
    name, _, _ = coco
    dicts = get_fiber_dataset_dicts([name])
    mapper = make_mapper(True, [name], NO_FLIP, log_period=2)
    record = _record(dicts, [(0, [10, 10, 0, 5])])
    with caplog.at_level(logging.INFO):
        mapper(record)
        mapper(record)
    assert "after 2 images: degenerate_box: 2" in caplog.text
    assert torch.is_tensor(mapper(dicts[0])["image"])
