"""FIBERDatasetMapper: prompts, positive maps that decode to the text, flips, resize, caching."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data import (
    get_fiber_dataset_dicts,
    register_detection_dataset,
    register_grounding_dataset,
)
from fiber_det.data.datasets.d3 import D3_PICKLE_OPT_IN
from fiber_det.data.transforms import official_resize_shape
from fiber_det.text import count_name_tokens

from .tiny_data import FLICKR_CAPTION, decode, write_coco, write_d3, write_flickr, write_lvis

NO_FLIP = {"DATASETS.FIBER.FLIP_PROB": 0.0}
ALWAYS_FLIP = {"DATASETS.FIBER.FLIP_PROB": 1.0}


@pytest.fixture
def coco(tmp_path, unique_name):
    name = unique_name("coco")
    register_detection_dataset(name, *write_coco(tmp_path))
    return name, get_fiber_dataset_dicts([name])


@pytest.fixture
def flickr(tmp_path, unique_name):
    name = unique_name("flickr")
    register_grounding_dataset(name, *write_flickr(tmp_path), "flickr30k")
    return name, get_fiber_dataset_dicts([name])


def _label_texts(tokenizer, out):
    return [decode(tokenizer, out["input_ids"], row) for row in out["positive_map"]]


def test_detection_training_prompt_lists_every_category_and_maps_boxes(
    coco, make_mapper, tokenizer
):
    name, dicts = coco
    mapper = make_mapper(True, [name], NO_FLIP)
    out = mapper(dicts[0])
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
    assert (out["height"], out["width"]) == (48, 64)
    assert sorted(_label_texts(tokenizer, out)) == ["car", "dog", "person"]
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 2]
    texts = [decode(tokenizer, out["input_ids"], row) for row in inst.positive_map]
    assert texts == ["person", "dog"]
    # 64x48 -> short side 256 would make the long side 341 > 320: scale 5 (240x320).
    assert inst.image_size == (240, 320) and tuple(out["image"].shape[1:]) == (240, 320)
    assert torch.allclose(inst.gt_boxes.tensor[0], torch.tensor([4, 6, 24, 30.0]) * 5)


def test_detection_prompt_is_shuffled_per_image_unless_disabled(coco, make_mapper, tokenizer):
    name, dicts = coco
    mapper = make_mapper(True, [name], NO_FLIP)
    captions = {
        tokenizer.decode(mapper(dicts[0])["input_ids"], skip_special_tokens=True) for _ in range(30)
    }
    assert len(captions) > 1
    fixed = make_mapper(True, [name], {**NO_FLIP, "DATASETS.FIBER.SHUFFLE_CATEGORIES": False})
    first, second = fixed(dicts[0]), fixed(dicts[1])
    assert tokenizer.decode(first["input_ids"], skip_special_tokens=True) == "person. car. dog"
    assert first["input_ids"] is second["input_ids"]  # one tokenisation, cached per prompt text


def test_sampled_prompt_keeps_positives_within_budget(
    tmp_path, unique_name, make_mapper, tokenizer
):
    name = unique_name("lvis")
    register_detection_dataset(name, *write_lvis(tmp_path, 50), "lvis", train_prompt="sampled")
    dicts = get_fiber_dataset_dicts([name])
    opts = {**NO_FLIP, "DATASETS.FIBER.RANDOM_SAMPLE_NEG": 10}
    mapper = make_mapper(True, [name], opts)
    names = MetadataCatalog.get(name).thing_classes
    for _ in range(5):
        out = mapper(dicts[0])
        labels = _label_texts(tokenizer, out)
        assert 2 < len(labels) <= 12  # 2 positives + up to 10 negatives
        assert [decode(tokenizer, out["input_ids"], r) for r in out["instances"].positive_map] == [
            names[0],
            names[3],
        ]


def test_sampled_prompt_overflow_drops_and_counts_boxes(
    tmp_path, unique_name, make_mapper, tokenizer
):
    name = unique_name("lvis")
    register_detection_dataset(name, *write_lvis(tmp_path, 50), "lvis", train_prompt="sampled")
    dicts = get_fiber_dataset_dicts([name])
    names = MetadataCatalog.get(name).thing_classes
    cost = count_name_tokens(tokenizer, [names[0], names[3]])  # the two positive categories
    opts = {**NO_FLIP, "DATASETS.FIBER.MAX_CAPTION_TOKENS": min(cost) - 1}
    mapper = make_mapper(True, [name], opts)
    out = mapper(dicts[0])
    # no positive fits: the caption falls back to the cheapest name of the vocabulary alone
    assert len(out["positive_map"]) == 1
    dropped = mapper.issues.counts["box_name_overflow"]
    assert dropped >= 1 and len(out["instances"]) + dropped == 2
    opts["DATASETS.FIBER.MAX_CAPTION_TOKENS"] = sum(cost)  # room for the positives only
    mapper = make_mapper(True, [name], opts)
    out = mapper(dicts[0])
    assert len(out["instances"]) == 2 and len(out["positive_map"]) == 2


def test_grounding_positive_maps_decode_to_the_phrases(flickr, make_mapper, tokenizer):
    name, dicts = flickr
    out = make_mapper(True, [name], NO_FLIP)(dicts[0])
    texts = [decode(tokenizer, out["input_ids"], r) for r in out["instances"].positive_map]
    assert texts == ["a man", "a red shirt", "a dog"]
    assert out["caption"] == FLICKR_CAPTION and len(out["instances"]) == 3


def test_flip_moves_boxes_and_keeps_captions(flickr, make_mapper, tokenizer):
    name, dicts = flickr
    plain = make_mapper(True, [name], NO_FLIP)(dicts[0])
    flipped = make_mapper(True, [name], ALWAYS_FLIP)(dicts[0])
    width = flipped["image"].shape[2]
    a, b = plain["instances"].gt_boxes.tensor, flipped["instances"].gt_boxes.tensor
    assert torch.allclose(b[:, 0], width - a[:, 2]) and torch.allclose(b[:, 2], width - a[:, 0])
    assert torch.equal(a[:, 1::2], b[:, 1::2])
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert flipped["caption"] == FLICKR_CAPTION  # official: image and boxes only
    assert torch.equal(flipped["instances"].positive_map, plain["instances"].positive_map)


def test_flip_with_left_right_swap_moves_the_spans(tmp_path, unique_name, make_mapper, tokenizer):
    from .tiny_data import flickr_image, mdetr_dict, write_image, write_json

    caption = "the man on the left holds a cup right of the dog"
    write_image(tmp_path / "i.jpg", 64, 48)
    img = flickr_image(0, "i.jpg", caption=caption, phrases=[[[0, 19]], [[40, 47]]])
    boxes = [(0, [1, 1, 20, 20], [[0, 19]]), (0, [30, 5, 20, 20], [[26, 31]])]
    name = unique_name()
    register_grounding_dataset(
        name, write_json(tmp_path / "g.json", mdetr_dict([img], boxes)), str(tmp_path)
    )
    dicts = get_fiber_dataset_dicts([name])
    opts = {**ALWAYS_FLIP, "DATASETS.FIBER.FLIP_SWAP_LEFT_RIGHT": True}
    out = make_mapper(True, [name], opts)(dicts[0])
    assert out["caption"] == "the man on the right holds a cup left of the dog"
    texts = [decode(tokenizer, out["input_ids"], r) for r in out["instances"].positive_map]
    assert texts == ["the man on the right", "a cup"]


def test_legacy_plus_one_boxes_flip_and_resize(coco, make_mapper):
    name, dicts = coco
    opts = {**ALWAYS_FLIP, "MODEL.FIBER.LEGACY_PLUS_ONE": True, "INPUT.MIN_SIZE_TRAIN": (48,)}
    opts["INPUT.MAX_SIZE_TRAIN"] = 1000
    out = make_mapper(True, [name], opts)(dicts[0])
    # no resize (short side already 48); xywh [4, 6, 20, 24] -> xyxy [4, 6, 23, 29] (+1);
    # flip: x1' = 64 - 23 - 1 = 40, x2' = 64 - 4 - 1 = 59.
    assert out["instances"].gt_boxes.tensor[0].tolist() == [40, 6, 59, 29]


def test_official_resize_rounding():
    assert official_resize_shape(480, 640, 800, 1333) == (800, 1066)  # detectron2: 1067
    assert official_resize_shape(427, 640, 800, 1333) == (800, 1199)
    assert official_resize_shape(200, 1000, 800, 1333) == (267, 1335)  # size = round(266.6)
    assert official_resize_shape(800, 600, 800, 1333) == (1066, 800)
    assert official_resize_shape(600, 800, 600, 1333) == (600, 800)


def test_eval_resize_uses_official_rounding_with_plus_one(coco, make_mapper):
    name, dicts = coco
    cfg = {
        "MODEL.FIBER.LEGACY_PLUS_ONE": True,
        "INPUT.MIN_SIZE_TEST": 101,
        "INPUT.MAX_SIZE_TEST": 1000,
    }
    out = make_mapper(False, [name], cfg)(dicts[0])
    # 64 * 101 / 48 = 134.67: official int() -> 134, detectron2 round -> 135
    assert tuple(out["image"].shape[1:]) == official_resize_shape(48, 64, 101, 1000) == (101, 134)
    cfg["MODEL.FIBER.LEGACY_PLUS_ONE"] = False
    out = make_mapper(False, [name], cfg)(dicts[0])
    assert tuple(out["image"].shape[1:]) == (101, 135)


@pytest.mark.parametrize("plus_one", [True, False])
def test_multi_scale_training_draws_a_size_per_image(coco, make_mapper, plus_one):
    name, dicts = coco
    opts = {**NO_FLIP, "MODEL.FIBER.LEGACY_PLUS_ONE": plus_one, "INPUT.MIN_SIZE_TRAIN": (24, 36)}
    mapper = make_mapper(True, [name], opts)
    shapes = {tuple(mapper(dicts[0])["image"].shape[1:]) for _ in range(20)}
    assert shapes == {(24, 32), (36, 48)}


def test_eval_detection_one_prompt_or_chunks(coco, make_mapper, tokenizer):
    name, dicts = coco
    out = make_mapper(False, [name])(dicts[0])
    assert "instances" not in out and "prompts" not in out
    assert out["label_to_category"] == [0, 1, 2]
    assert _label_texts(tokenizer, out) == ["person", "car", "dog"]
    chunked = make_mapper(False, [name], {"TEST.FIBER.CHUNK_SIZE": 2})(dicts[0])
    assert "input_ids" not in chunked and len(chunked["prompts"]) == 2
    texts = [t for p in chunked["prompts"] for t in _label_texts(tokenizer, p)]
    assert texts == ["person", "car", "dog"] and chunked["label_to_category"] == [0, 1, 2]


def test_eval_lvis_chunks_of_k_names(tmp_path, unique_name, make_mapper, tokenizer):
    name = unique_name("lvis")
    register_detection_dataset(name, *write_lvis(tmp_path, 50), "lvis", train_prompt="sampled")
    dicts = get_fiber_dataset_dicts([name])
    out = make_mapper(False, [name], {"TEST.FIBER.CHUNK_SIZE": 8})(dicts[0])
    assert [p["positive_map"].shape[0] for p in out["prompts"]] == [8] * 6 + [2]
    assert out["label_to_category"] == list(range(50))
    first = _label_texts(tokenizer, out["prompts"][0])
    # official clean_name: "bow_(weapon)" -> "bow " (the trailing space may pull in the next token)
    assert first[0] == "person" and first[1].startswith("bow")


def test_eval_grounding_rows_are_the_phrases_to_evaluate(flickr, make_mapper, tokenizer):
    name, dicts = flickr
    out = make_mapper(False, [name])(dicts[0])
    assert _label_texts(tokenizer, out) == ["a man", "a red shirt", "a dog"]
    assert out["sentence_id"] == 0 and out["original_img_id"] == 1000
    assert out["caption"] == FLICKR_CAPTION and out["dataset_name"] == "flickr"
    assert "annotations" not in out and "instances" not in out


def test_d3_eval_queries_the_group_descriptions_one_per_prompt(
    builtin_root, make_mapper, tokenizer, monkeypatch
):
    monkeypatch.setenv(D3_PICKLE_OPT_IN, "1")  # the toolkit's pickles written by this test
    write_d3(builtin_root)
    dicts = get_fiber_dataset_dicts(["d3_full"])
    out = make_mapper(False, ["d3_full"])(dicts[0])
    meta = MetadataCatalog.get("d3_full")
    assert out["label_to_category"] == [
        meta.thing_dataset_id_to_contiguous_id[s] for s in (1, 3, 4)
    ]
    texts = [_label_texts(tokenizer, p) for p in out["prompts"]]
    assert texts == [["a dog without leash"], ["a dog with a leash"], ["a hat that is not blue"]]
    pres = get_fiber_dataset_dicts(["d3_pres"])
    out = make_mapper(False, ["d3_pres"])(pres[0])  # the absence description is not queried
    assert len(out["prompts"]) == 2 and out["label_to_category"] == [0, 2]


def test_mapper_reads_vocabulary_at_construction(coco, make_mapper, tokenizer):
    name, dicts = coco
    mapper = make_mapper(False, [name])
    MetadataCatalog.remove(name)  # e.g. a spawned worker with an empty catalog
    assert mapper(dicts[0])["label_to_category"] == [0, 1, 2]
    assert name in DatasetCatalog


def test_unloaded_dataset_is_a_clear_error(tmp_path, unique_name, make_mapper):
    name = unique_name()
    register_detection_dataset(name, *write_coco(tmp_path))
    mapper = make_mapper(False, [name])
    record = {"file_name": str(tmp_path / "coco/images/000000.jpg"), "source_dataset": name}
    record.update(height=48, width=64, image_id=0, annotations=[])
    with pytest.raises(KeyError, match="load it first"):
        mapper(record)
    np.testing.assert_equal(len(DatasetCatalog.get(name)), 2)
