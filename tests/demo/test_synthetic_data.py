"""The synthetic grounding data: reproducible, boxes inside images, captions that name what they
box (right colour, shape, size and relative position), registered like any other dataset."""

import dataclasses
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.demo.synthetic import (
    RELATIONS,
    SIZE_WORDS,
    SyntheticSpec,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    synthetic_category_names,
)
from fiber_det.text import load_tokenizer
from tests.synthetic_demo import SMALL_SPEC


def _load(path):
    with open(path) as f:
        return json.load(f)


def _files(root: Path):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "tokenizer" not in p.parts
    }


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, synthetic_data):
    spec = dataclasses.replace(SMALL_SPEC, num_train=4, num_val=2)
    generate_synthetic_dataset(tmp_path / "a", spec)
    generate_synthetic_dataset(tmp_path / "b", spec)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 4 + 2 + 4 + 1  # images, 4 jsons, manifest
    assert a == b
    generate_synthetic_dataset(tmp_path / "c", dataclasses.replace(spec, seed=spec.seed + 1))
    c = _files(tmp_path / "c")
    assert (
        c.keys() == a.keys()
        and a["annotations/grounding_train.json"] != c["annotations/grounding_train.json"]
    )
    # an image does not depend on the split's size: the first images of the bigger set match
    big = _files(synthetic_data["root"])
    assert all(big[f"images/train/{i:06d}.png"] == a[f"images/train/{i:06d}.png"] for i in range(4))


def test_boxes_inside_images_and_images_match_json(synthetic_data):
    paths = synthetic_data["paths"]
    for split in ("train", "val"):
        det = _load(paths[f"detection_{split}"])
        sizes = {im["id"]: (im["width"], im["height"]) for im in det["images"]}
        for im in det["images"]:
            with Image.open(os.path.join(paths["image_root"], im["file_name"])) as img:
                assert img.size == (im["width"], im["height"]) and img.mode == "RGB"
            assert 160 <= im["width"] <= 320 and 160 <= im["height"] <= 320
        assert det["annotations"]
        for a in det["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert w > 4 and h > 4
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height, a


def _phrases(grd):
    """Per grounding entry: caption, phrase texts, and per phrase the list of boxes."""
    anns = defaultdict(list)
    for a in grd["annotations"]:
        anns[a["image_id"]].append(a)
    for im in grd["images"]:
        caption = im["caption"]
        texts = [" ".join(caption[s:e] for s, e in group) for group in im["tokens_positive_eval"]]
        boxes = defaultdict(list)
        for a in anns[im["id"]]:
            ((s, e),) = a["tokens_positive"]
            assert caption[s:e] == texts[a["phrase_ids"]]
            assert [[s, e]] == im["tokens_positive_eval"][a["phrase_ids"]]
            boxes[a["phrase_ids"]].append(a["bbox"])
        yield im, caption, texts, boxes


def test_every_span_is_the_phrase_it_names_and_names_the_boxed_shape(synthetic_data):
    paths = synthetic_data["paths"]
    det = _load(paths["detection_train"])
    names = {c["id"]: c["name"] for c in det["categories"]}
    shapes = defaultdict(list)  # image -> [(category name, bbox)]
    for a in det["annotations"]:
        shapes[a["image_id"]].append((names[a["category_id"]], a["bbox"]))
    sizes = {im["id"]: (im["width"], im["height"]) for im in det["images"]}
    seen_size_word = seen_relation = 0
    for im, caption, texts, boxes in _phrases(_load(paths["grounding_train"])):
        assert len(texts) == len(boxes) >= 1, caption  # every phrase boxes something
        others = shapes[im["original_img_id"]]
        for j, text in enumerate(texts):
            words = text.split()
            assert words[-2:] and " ".join(words[-2:]) in synthetic_category_names(SMALL_SPEC)
            assert text in caption
            for box in boxes[j]:
                category = [n for n, b in others if b == box]
                assert category == [" ".join(words[-2:])], (caption, text)
                if len(words) == 3:
                    seen_size_word += 1
                    lo, hi = SIZE_WORDS[words[0]]
                    side = max(box[2], box[3]) / min(sizes[im["original_img_id"]])
                    assert lo - 0.01 <= side <= hi + 0.01, (text, side)
            # the words of a phrase name its boxes and no other shape of the image
            matching = [b for n, b in others if n == " ".join(words[-2:])]
            size = sizes[im["original_img_id"]]
            if len(words) == 3:
                matching = [b for b in matching if _size_word(b, size) == words[0]]
            assert sorted(map(tuple, matching)) == sorted(map(tuple, boxes[j])), (caption, text)
        seen_relation += _check_relations(caption, im["tokens_positive_eval"], boxes)
    assert seen_size_word > 0 and seen_relation > 0


def _size_word(box, size):
    side = max(box[2], box[3]) / min(size)
    return min(SIZE_WORDS, key=lambda w: abs(side - sum(SIZE_WORDS[w]) / 2))


def _check_relations(caption, phrases, boxes) -> int:
    """Assert that every "<phrase> <relation> <article> <phrase>" is true; count them."""
    found = 0
    for j in range(len(phrases) - 1):
        between = caption[phrases[j][0][1] : phrases[j + 1][0][0]]
        m = re.fullmatch(r" (left of|right of|above|below) (a|the) ", between)
        if not m:
            continue
        assert m.group(1) in RELATIONS
        found += 1
        (tx, ty, tw, th), (ax, ay, aw, ah) = boxes[j][0], boxes[j + 1][0]
        dx, dy = (tx + tw / 2) - (ax + aw / 2), (ty + th / 2) - (ay + ah / 2)
        expected = {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}
        assert expected[m.group(1)], (caption, m.group(1), dx, dy)
        horizontal = m.group(1) in ("left of", "right of")
        assert (abs(dx) >= abs(dy)) == horizontal, caption
    return found


def test_registered_views_load_with_their_evaluators(synthetic_data):
    names, spec = synthetic_data["names"], synthetic_data["spec"]
    det = DatasetCatalog.get(names["detection_val"])
    assert len(det) == spec.num_val
    meta = MetadataCatalog.get(names["detection_val"])
    assert meta.evaluator_type == "coco" and meta.data_format == "detection"
    assert meta.thing_classes == synthetic_category_names(spec) and len(meta.thing_classes) == 16
    grd = DatasetCatalog.get(names["grounding_train"])
    assert len(grd) == spec.num_train * spec.captions_train
    assert MetadataCatalog.get(names["grounding_train"]).evaluator_type == "grounding"
    assert all(d["caption"] and d["tokens_positive_eval"] for d in grd)
    assert all(a["tokens_positive"] and "phrase_ids" in a for d in grd for a in d["annotations"])


def test_offline_tokenizer_keeps_the_vocabulary_whole(synthetic_data):
    tok = load_tokenizer(synthetic_data["paths"]["tokenizer"])
    ids = tok("the small red circle left of a blue star")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and len(tokens) == 11, tokens
    assert tok.pad_token_id == 1


def test_ensure_reuses_matching_data_and_regenerates_on_a_new_spec(tmp_path):
    spec = dataclasses.replace(SMALL_SPEC, num_train=2, num_val=1)
    paths = ensure_synthetic_dataset(tmp_path, spec)
    marker = Path(paths["detection_train"])
    before = marker.stat().st_mtime_ns
    ensure_synthetic_dataset(tmp_path, spec)
    assert marker.stat().st_mtime_ns == before
    ensure_synthetic_dataset(tmp_path, dataclasses.replace(spec, num_train=3))
    assert len(_load(paths["detection_train"])["images"]) == 3
    assert not (tmp_path / "images" / "train" / "000003.png").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"colors": ("red", "mauve")}, "unknown colours"),
        ({"min_side": 300, "max_side": 200}, "min_side"),
        ({"min_objects": 0}, "min_objects"),
        ({"num_val": 0}, "num_val"),
    ],
)
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**kwargs)
