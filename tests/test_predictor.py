"""FIBERPredictor on the tiny model (random weights): the same detections as the detector fed by
the data mapper, single and batched, captions (spans given or found), chunked vocabularies with
labels mapped back, and clear errors."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.data import FIBERDatasetMapper
from fiber_det.predictor import FIBERPrediction, FIBERPredictor
from fiber_det.text import Prompt, find_noun_phrases
from fiber_det.utils.testing import unmatched_detections
from tests.synthetic_demo import tiny_demo_config


def _same(pred: FIBERPrediction, boxes, scores, labels, names):
    """The prediction equals (boxes, scores, label index -> names) up to float noise."""
    assert len(pred) == len(scores) > 0
    ids_b = torch.as_tensor([pred.label_names.index(names[int(i)]) for i in labels])
    missing = unmatched_detections(
        pred.boxes, pred.scores, pred.label_ids, boxes, scores, ids_b, box_tol=1e-3, score_tol=1e-5
    )
    assert not missing, missing[:3]
    assert pred.labels == [pred.label_names[i] for i in pred.label_ids.tolist()]


@pytest.mark.parametrize("view", ["detection_val", "grounding_val"])
def test_agrees_with_the_detector_fed_by_the_data_mapper(
    view, synthetic_data, tiny_cfg_demo, tiny_model, predictor
):
    name = synthetic_data["names"][view]
    record = dict(DatasetCatalog.get(name)[0], source_dataset=name)
    mapper = FIBERDatasetMapper(tiny_cfg_demo, False, dataset_names=[name])
    with torch.no_grad():
        out = tiny_model([mapper(record)])[0]["instances"]
    if view == "detection_val":
        classes = MetadataCatalog.get(name).thing_classes
        pred = predictor(record["file_name"], list(classes))
        assert pred.captions == [". ".join(classes)]
        names = classes
    else:
        caption, phrases = record["caption"], record["tokens_positive_eval"]
        pred = predictor(record["file_name"], Prompt(caption=caption, spans=phrases))
        names = [caption[s:e] for ((s, e),) in phrases]
        assert pred.label_names == names  # the given spans, not the heuristic's
    assert pred.image_size == (record["height"], record["width"])
    _same(pred, out.pred_boxes.tensor, out.scores, out.pred_classes, names)


def test_caption_phrases_are_found_when_no_spans_are_given(predictor, synthetic_data):
    caption = "the small red circle left of a blue square"
    assert [caption[s:e] for s, e in find_noun_phrases(caption)] == [
        "small red circle",
        "blue square",
    ]
    file_name = DatasetCatalog.get(synthetic_data["names"]["detection_val"])[0]["file_name"]
    pred = predictor(file_name, caption)
    assert pred.label_names == ["small red circle", "blue square"]
    assert set(pred.labels) <= {"small red circle", "blue square"} and len(pred) > 0
    blue = caption.index("blue")
    spans = [[(4, 20)], [(4, 8), (blue, blue + 4)]]  # "small red circle"; "smal" + "blue"
    given = predictor(file_name, Prompt(caption=caption, spans=spans))
    assert given.label_names == ["small red circle", "smal blue"]


def _images(synthetic_data, n):
    return [
        d["file_name"] for d in DatasetCatalog.get(synthetic_data["names"]["detection_val"])[:n]
    ]


def test_batched_equals_one_by_one(tiny_cfg_demo, tiny_model, predictor, synthetic_data):
    files = _images(synthetic_data, 3)
    names = ["red circle", "blue square", "green star"]
    single = predictor(files[0], names)
    batched = FIBERPredictor(tiny_cfg_demo, model=tiny_model, batch_size=2)
    # images of one size batch without padding: the same numbers as one by one
    array = np.asarray(Image.open(files[0]).convert("RGB"))[:, :, ::-1].copy()
    same_size = batched([array, Image.open(files[0])], names)
    assert isinstance(same_size, list) and len(same_size) == 2
    for p in same_size:
        _same(p, single.boxes, single.scores, single.label_ids, single.label_names)
    # one prompt per image, in input order
    mixed = batched(files, prompts=[names, "a red circle", ["green star"]])
    assert [p.label_names for p in mixed] == [names, ["red circle"], ["green star"]]
    assert [p.image_size for p in mixed] == [Image.open(f).size[::-1] for f in files]
    assert all(len(p) > 0 for p in mixed)


def test_explicit_constructor_without_a_config(
    tiny_cfg_demo, tiny_model, predictor, synthetic_data
):
    from fiber_det.data import build_fiber_augmentations

    explicit = FIBERPredictor(
        model=tiny_model,
        tokenizer=predictor.tokenizer,
        augmentations=build_fiber_augmentations(tiny_cfg_demo, is_train=False),
        max_query_len=tiny_cfg_demo.MODEL.LANGUAGE.MAX_QUERY_LEN,
        pad_to_max=False,
    )
    file_name = _images(synthetic_data, 1)[0]
    a, b = explicit(file_name, "a big blue star"), predictor(file_name, "a big blue star")
    _same(a, b.boxes, b.scores, b.label_ids, b.label_names)


def test_chunked_vocabulary_maps_labels_back(synthetic_data, tiny_model):
    names = [f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "star")]
    cfg = tiny_demo_config(synthetic_data["paths"]["tokenizer"], ["TEST.FIBER.CHUNK_SIZE", 3])
    chunked = FIBERPredictor(cfg, model=tiny_model)
    file_name = _images(synthetic_data, 1)[0]
    pred = chunked(file_name, names)
    assert len(pred.captions) == 3 and pred.label_names == names
    # each chunk's detections equal that chunk queried alone
    for start in range(0, len(names), 3):
        part = names[start : start + 3]
        alone = chunked(file_name, part)
        assert len(alone.captions) == 1
        sel = torch.as_tensor([pred.labels[i] in part for i in range(len(pred))])
        assert sel.any()
        _same(alone, pred.boxes[sel], pred.scores[sel], pred.label_ids[sel], pred.label_names)
    # a budget too small for all names in one prompt chunks automatically as well
    cfg = tiny_demo_config(
        synthetic_data["paths"]["tokenizer"], ["MODEL.LANGUAGE.MAX_QUERY_LEN", 12]
    )
    packed = FIBERPredictor(cfg, model=tiny_model)(file_name, names)
    assert len(packed.captions) > 1 and packed.label_names == names
    assert set(packed.labels) <= set(names)


def test_to_dict_and_instances(predictor, synthetic_data):
    pred = predictor(_images(synthetic_data, 1)[0], ["red circle", "blue square"])
    d = pred.to_dict()
    assert len(d["detections"]) == len(pred) and d["label_names"] == ["red circle", "blue square"]
    first = d["detections"][0]
    assert first["label"] == pred.labels[0] and len(first["box"]) == 4
    inst = pred.to_instances()
    assert inst.image_size == pred.image_size and torch.equal(inst.pred_classes, pred.label_ids)


@pytest.mark.parametrize(
    "prompt, error, message",
    [
        ("", ValueError, "prompt is empty"),
        ("   ", ValueError, "prompt is empty"),
        ([], ValueError, "list of category names is empty"),
        (["red circle", " "], ValueError, "empty"),
        (3, TypeError, "a prompt must be"),
        ([1, 2], TypeError, "list of"),
        (Prompt(caption="a red circle", spans=[[(2, 40)]]), ValueError, "outside the caption"),
        (Prompt(caption="a red circle", spans=[]), ValueError, "no phrase"),
        ("red circle " * 40, ValueError, "MAX_QUERY_LEN"),
    ],
)
def test_bad_prompts_are_clear_errors(predictor, synthetic_data, prompt, error, message):
    with pytest.raises(error, match=message):
        predictor(_images(synthetic_data, 1)[0], prompt)


def test_unreadable_images_are_clear_errors(predictor, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.jpg"):
        predictor(str(tmp_path / "missing.jpg"), "a red circle")
    with pytest.raises(IsADirectoryError, match="folder"):
        predictor(str(tmp_path), "a red circle")
    with pytest.raises(OSError, match="cannot read image .*notes.png"):
        predictor(str(not_image), "a red circle")
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((32, 32, 3), dtype=np.float32), "a red circle")
    with pytest.raises(TypeError, match="an image must be"):
        predictor(torch.zeros(3, 32, 32), "a red circle")


def test_prompt_arguments_are_checked(predictor, synthetic_data):
    files = _images(synthetic_data, 2)
    with pytest.raises(TypeError, match="either `prompt`"):
        predictor(files, "a", prompts=["a", "b"])
    with pytest.raises(TypeError, match="either `prompt`"):
        predictor(files)
    with pytest.raises(ValueError, match="one prompt per image"):
        predictor(files, prompts=["a red circle"])
