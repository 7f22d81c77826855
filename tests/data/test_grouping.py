"""Grouped evaluation inputs: one input per image, batches of one padded size, same records."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from fiber_det.data import build_fiber_test_loader, register_grounding_dataset
from fiber_det.data.grouping import (
    ImageGroupMapper,
    group_by_image,
    padded_input_size,
    size_bucket_batches,
)
from fiber_det.data.mapper import FIBERDatasetMapper
from fiber_det.data.transforms import build_fiber_augmentations
from fiber_det.evaluation import GroundingRecallEvaluator, RefExpEvaluator

from .tiny_data import mdetr_dict, write_image, write_json

# (image, caption, phrase spans): the first image has three queries, the second two; one box
# per query (a RefCOCO-style expression), its phrase the first one.
QUERIES = [
    ("a.jpg", "a man wearing a red shirt standing left of a dog", [[[0, 5]], [[14, 25]]]),
    ("a.jpg", "a red circle left of a blue square", [[[0, 12]], [[21, 34]]]),
    ("a.jpg", "the dog", [[[0, 7]]]),
    ("b.jpg", "a woman holding a cup", [[[0, 7]], [[16, 21]]]),
    ("b.jpg", "a small green triangle", [[[0, 22]]]),
]
SIZES = {"a.jpg": (64, 48), "b.jpg": (44, 60)}  # (width, height): landscape and portrait


def test_group_by_image_keeps_first_appearance_and_dict_order():
    dicts = [{"file_name": f, "k": i} for i, f in enumerate("abacb")]
    assert [[d["k"] for d in g] for g in group_by_image(dicts)] == [[0, 2], [1, 4], [3]]


def test_size_buckets():
    keys = [(32, 32), (64, 32), (32, 32), None, (32, 32), (64, 32), (32, 32)]
    assert size_bucket_batches(keys, 2) == [[0, 2], [3], [1, 5], [4, 6]]  # when full
    assert size_bucket_batches(keys, 1) == [[i] for i in range(len(keys))]


def _register(tmp_path, name, evaluator_type):
    images, boxes = [], []
    for k, (file_name, caption, phrases) in enumerate(QUERIES):
        w, h = SIZES[file_name]
        images.append(
            {
                "id": k,
                "file_name": file_name,
                "width": w,
                "height": h,
                "caption": caption,
                "tokens_positive_eval": phrases,
            }
        )
        boxes.append((k, [2.0 + k, 3.0, 20.0, 24.0], phrases[0]))
    for file_name, (w, h) in SIZES.items():
        write_image(tmp_path / "images" / file_name, w, h, seed=len(file_name) + w)
    json_file = write_json(tmp_path / f"{name}.json", mdetr_dict(images, boxes))
    register_grounding_dataset(name, json_file, str(tmp_path / "images"), evaluator_type)


@pytest.fixture
def grounding_set(tmp_path):
    names = []

    def make(evaluator_type):
        name = f"_grouping_test_{evaluator_type}"
        _register(tmp_path, name, evaluator_type)
        names.append(name)
        return name

    yield make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _tiny_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.6)  # open the gates: captions change the image features
    return model


def _records(model, loader, evaluator):
    evaluator.reset()
    forwards = 0
    with torch.no_grad():
        for batch in loader:
            evaluator.process(batch, model(batch))
            forwards += 1
    return sorted(evaluator._records, key=lambda r: r["image_id"]), forwards


def _same_records(a, b):
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    for ra, rb in zip(a, b):
        assert (ra["num_prompts"], ra["num_phrases"]) == (rb["num_prompts"], rb["num_phrases"])
        assert len(ra["instances"]) == len(rb["instances"]) > 0
        for da, db in zip(ra["instances"], rb["instances"]):  # same order too
            assert da["category_id"] == db["category_id"]
            assert da["score"] == pytest.approx(db["score"], abs=1e-6)
            assert da["bbox"] == pytest.approx(db["bbox"], abs=1e-4)


@pytest.mark.parametrize(
    "evaluator_type,evaluator_cls",
    [("grounding", GroundingRecallEvaluator), ("refexp", RefExpEvaluator)],
)
def test_one_input_per_image_gives_the_records_of_one_query_per_forward(
    tiny_cfg, grounding_set, evaluator_type, evaluator_cls
):
    """The official protocol (one caption per forward) and the grouped one (an image's captions
    in one input through the cached multi-prompt path, split back by the evaluator) give the same
    records, in fewer forwards; batches of one padded size too."""
    name = grounding_set(evaluator_type)
    cfg = tiny_cfg.clone()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.TEST.FIBER.SIZE_BUCKET_BATCH = 1
    model = _tiny_model(cfg)
    evaluator = evaluator_cls(name, distributed=False)
    cfg.TEST.FIBER.GROUP_BY_IMAGE = False
    official, n_official = _records(model, build_fiber_test_loader(cfg, name), evaluator)
    cfg.TEST.FIBER.GROUP_BY_IMAGE = True
    grouped, n_grouped = _records(model, build_fiber_test_loader(cfg, name), evaluator)
    assert (n_official, n_grouped) == (len(QUERIES), len(SIZES))
    _same_records(official, grouped)
    cfg.TEST.FIBER.GROUP_BY_IMAGE = False
    cfg.TEST.FIBER.SIZE_BUCKET_BATCH = 4  # the 3 queries of a.jpg share a padded size
    bucketed, n_bucketed = _records(model, build_fiber_test_loader(cfg, name), evaluator)
    assert n_bucketed == 2
    _same_records(official, bucketed)


def test_grouped_input_carries_every_query(tiny_cfg, grounding_set):
    name = grounding_set("grounding")
    dicts = DatasetCatalog.get(name)
    for d in dicts:
        d["source_dataset"] = name
    mapper = FIBERDatasetMapper(tiny_cfg, False, dataset_names=[name])
    groups = group_by_image(dicts)
    x = ImageGroupMapper(mapper)(groups[0])
    assert [m["image_id"] for m in x["group"]] == [0, 1, 2]
    assert [p["positive_map"].shape[0] for p in x["prompts"]] == [2, 2, 1]
    assert "image" not in x["group"][0] and x["image"].shape == mapper(dicts[0])["image"].shape
    single = ImageGroupMapper(mapper)(groups[1][:1])
    assert "group" not in single and "prompts" not in single


@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("height,width", [(48, 64), (60, 44), (100, 333), (37, 41)])
def test_padded_size_is_predicted_without_reading_the_image(tiny_cfg, height, width, plus_one):
    """Against the evaluation augmentations applied to an image (both resize conventions)."""
    cfg = tiny_cfg.clone()
    cfg.MODEL.FIBER.LEGACY_PLUS_ONE = plus_one
    augs = build_fiber_augmentations(cfg, False)
    image = T.AugInput(np.zeros((height, width, 3), dtype=np.uint8))
    T.AugmentationList(augs)(image)
    h, w = image.image.shape[:2]
    assert padded_input_size(height, width, augs, 32) == (-(-h // 32) * 32, -(-w // 32) * 32)
