"""Flickr30k Entities: the annotation reader (real file format) and Recall@k, any-box and merged."""

import numpy as np
import pytest

from fiber_det.evaluation import FlickrEvaluator
from fiber_det.evaluation.flickr_entities import (
    load_flickr_entities,
    parse_annotation_xml,
    parse_sentence,
    parse_sentences_file,
)
from fiber_det.evaluation.grounding import phrase_recall_hits

from . import cases


def test_sentence_parser_real_format(tmp_path):
    root = cases.write_flickr_entities(tmp_path / "fe")
    sentences = parse_sentences_file(f"{root}/Sentences/1000.txt")
    assert len(sentences) == 3  # the empty line is not a caption
    s0 = sentences[0]
    assert s0.text == "A man holds two dogs near a park ."
    assert [(p.phrase_id, p.text, p.types, p.first_word_index) for p in s0.phrases] == [
        ("10", "A man", ("people",), 0),
        ("11", "two dogs", ("animals",), 3),
        ("14", "a park", ("scene",), 6),
    ]
    assert sentences[1].phrases[0].types == ("animals", "other")
    assert [p.phrase_id for p in sentences[1].phrases] == ["12", "13", "0"]
    # one-word phrase, punctuation inside and after
    one = parse_sentence("[/EN#5/people John] , [/EN#6/other it's] ok .")
    assert one.text == "John , it's ok ." and [p.text for p in one.phrases] == ["John", "it's"]


def test_annotation_parser_real_format(tmp_path):
    root = cases.write_flickr_entities(tmp_path / "fe")
    ann = parse_annotation_xml(f"{root}/Annotations/1000.xml")
    assert (ann.width, ann.height, ann.depth) == (200, 100, 3)
    # an object with two <name> gives its box to both phrases; phrase 11 has two boxes
    assert ann.boxes == {
        "10": [[0, 0, 40, 40]],
        "11": [[100, 0, 140, 40], [150, 50, 190, 90]],
        "12": [[100, 0, 140, 40]],
    }
    assert ann.nobox == ["13"] and ann.scene == ["14"]


def test_split_gt_keeps_phrases_with_boxes_in_caption_order(tmp_path):
    root = cases.write_flickr_entities(tmp_path / "fe")
    gt = load_flickr_entities(root, "val")
    assert gt.image_ids == ["1000", "2000"]
    # caption 2 of image 1000 only has a phrase without box: not evaluated
    assert sorted(gt.phrases) == [("1000", 0), ("1000", 1), ("2000", 0)]
    assert [p.phrase_id for p, _ in gt.phrases[("1000", 0)]] == ["10", "11"]
    assert gt.phrases[("1000", 0)][1][1].shape == (2, 4)
    merged = load_flickr_entities(root, "val", merged=True)
    np.testing.assert_array_equal(merged.phrases[("1000", 0)][1][1], [[100, 0, 190, 90]])
    assert gt.num_phrases == 4


def test_recall_hits_ranks_and_upper_bound():
    gt = np.array([[0, 0, 10, 10]], dtype=float)
    preds = np.array([[20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    assert phrase_recall_hits(preds, gt, (1, 5, -1), 0.5) == {1: False, 5: True, -1: True}
    # IoU without "+1": [0,0,10,10] vs [0,0,10,5] is 50/100 = 0.5, a hit at 0.5
    half = np.array([[0, 0, 10, 5]], dtype=float)
    assert phrase_recall_hits(half, gt, (1,), 0.5) == {1: True}
    assert phrase_recall_hits(half, gt, (1,), 0.51) == {1: False}
    assert phrase_recall_hits(np.zeros((0, 4)), gt, (1, -1), 0.5) == {1: False, -1: False}


# Worked example (cases.flickr_case), any-box protocol:
#   "A man" (people):     miss at rank 1, hit at rank 2 -> R@1 no, R@5 / R@10 / UB yes
#   "two dogs" (animals): rank 1 is its second GT box -> yes everywhere
#   "A dog" (animals, other): two boxes tied at 0.5, the model lists the miss first and the tie
#                         keeps that order -> R@1 no, R@5 yes
#   "A red shirt" (clothing): no predicted box -> no everywhere
#   all: R@1 = 1/4, R@5 = R@10 = UB = 3/4.
# Merged protocol: "two dogs" is scored against the enclosing box [100, 0, 190, 90] (area 8100);
#   the 40x40 prediction has IoU 1600 / 8100 = 0.198 -> miss: R@1 = 0, R@5 = UB = 2/4.
def test_flickr_recall_any_box(tmp_path, run_online):
    name, inputs, outputs = cases.flickr_case(tmp_path)
    res = run_online(FlickrEvaluator(name, distributed=False), inputs, outputs)["flickr30k"]
    expected = {
        "R@1": 25.0,
        "R@5": 75.0,
        "R@10": 75.0,
        "UB": 75.0,
        "R@1-people": 0.0,
        "R@5-people": 100.0,
        "R@1-animals": 50.0,
        "R@5-animals": 100.0,
        "R@1-other": 0.0,
        "UB-other": 100.0,
        "R@1-clothing": 0.0,
        "UB-clothing": 0.0,
    }
    for key, value in expected.items():
        assert res[key] == pytest.approx(value), key
    assert not any(k.endswith("-scene") for k in res)  # the scene phrase has no box


def test_flickr_recall_merged_box(tmp_path, run_online):
    name, inputs, outputs = cases.flickr_case(tmp_path)
    ev = FlickrEvaluator(name, distributed=False, protocol="merged")
    res = run_online(ev, inputs, outputs)["flickr30k"]
    assert (res["R@1"], res["R@5"], res["UB"]) == (0.0, 50.0, 50.0)
    assert res["R@1-animals"] == 0.0 and res["R@5-animals"] == 50.0


def test_missing_captions_count_as_misses(tmp_path, run_online, caplog):
    name, inputs, outputs = cases.flickr_case(tmp_path)
    ev = FlickrEvaluator(name, distributed=False)
    with caplog.at_level("WARNING"):
        res = run_online(ev, inputs[:1], outputs[:1])["flickr30k"]
    # only caption (1000, 0) is predicted: "A man" (R@5) and "two dogs" (R@1) of 4 phrases
    assert (res["R@1"], res["R@5"]) == (25.0, 50.0)
    assert "2 of 3 captions" in caplog.text


def test_phrase_count_mismatch_is_an_error(tmp_path):
    name, inputs, outputs = cases.flickr_case(tmp_path)
    ev = FlickrEvaluator(name, distributed=False)
    bad = dict(inputs[0], tokens_positive_eval=[[[0, 1]], [[2, 3]], [[4, 5]]])
    ev.process([bad], [outputs[0]])
    with pytest.raises(ValueError, match="do not match"):
        ev.evaluate()


def test_configuration_errors(tmp_path):
    name, _, _ = cases.flickr_case(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        FlickrEvaluator(name, protocol="union")
    with pytest.raises(ValueError, match="flickr_entities_root"):
        FlickrEvaluator(name, entities_root=str(tmp_path / "nowhere"))
    with pytest.raises(KeyError, match="original_img_id"):
        FlickrEvaluator(name).to_record({"image_id": 1}, cases.output([], [], []))
