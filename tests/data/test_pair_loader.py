"""The one training loader on image-text pair datasets: the pair mapper, per-caption or
per-image epochs, a corrupt image replaced by another, pair and box datasets refused together."""

from collections import Counter

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data import (
    build_fiber_train_loader,
    build_train_sampler,
    load_training_set,
    register_pair_dataset,
)
from fiber_det.utils.testing import get_config

from .tiny_pairs import CAPTIONS, write_image, write_jsonl

NAME, BAD = "fiber_test_pair_loader", "fiber_test_pair_loader_bad"


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    good = [
        {"image": write_image(root / f"img{i}.jpg", seed=i), "captions": c, "image_id": i}
        for i, c in enumerate(CAPTIONS)
    ]
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = good[:1] + [{"image": str(root / "corrupt.jpg"), "captions": ["a dog"], "image_id": 9}]
    files = {
        NAME: write_jsonl(root / "good.jsonl", good),
        BAD: write_jsonl(root / "bad.jsonl", bad),
    }
    for name, path in files.items():
        register_pair_dataset(name, path)
    yield files
    for name in files:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(tokenizer_dir, *opts):
    return get_config(
        "tiny/coarse_tiny.yaml",
        ["MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir), "DATASETS.TRAIN", f"('{NAME}',)"]
        + list(opts),
    )


def test_pair_batches_follow_the_model_contract(pair_sets, tokenizer_dir):
    cfg = _cfg(tokenizer_dir, "SOLVER.IMS_PER_BATCH", 4)
    batch = next(iter(build_fiber_train_loader(cfg)))
    assert len(batch) == 4
    for x in batch:
        assert x["image"].shape == (3, 64, 64)
        assert x["input_ids"].shape == x["mlm_input_ids"].shape == (16,)
        assert x["source_dataset"] == NAME and x["caption_id"] >= 0


def test_an_epoch_visits_each_image_once_per_caption_or_once(pair_sets, tokenizer_dir):
    per_caption = load_training_set(_cfg(tokenizer_dir))
    assert per_caption.pairs and len(per_caption) == sum(len(c) for c in CAPTIONS) == 9
    cfg = _cfg(tokenizer_dir, "DATASETS.COARSE.SAMPLE_BY", "image", "DATALOADER.FIBER.COPIES", [2])
    per_image = load_training_set(cfg)
    assert len(per_image) == 2 * len(CAPTIONS)
    for ts, want in ((per_caption, [3, 2, 4]), (per_image, [2, 2, 2])):
        stream = iter(build_train_sampler(cfg, ts, seed=5))
        first_epoch = [next(stream) for _ in range(sum(want))]
        assert [p for p, _ in first_epoch] == list(range(sum(want)))
        counts = Counter(i for _, i in first_epoch)
        assert [counts[i] for i in range(3)] == want


def test_a_corrupt_image_is_replaced_and_counted(pair_sets, tokenizer_dir):
    cfg = _cfg(tokenizer_dir, "DATASETS.TRAIN", f"('{BAD}',)", "SOLVER.IMS_PER_BATCH", 2)
    loader = build_fiber_train_loader(cfg)
    seen = [x["image_id"] for _, batch in zip(range(4), loader) for x in batch]
    assert len(seen) == 8 and set(seen) == {0}  # the corrupt image 9 never comes out


def test_pair_and_box_datasets_cannot_be_mixed(pair_sets, shapes_data, tokenizer_dir):
    cfg = _cfg(tokenizer_dir, "DATASETS.TRAIN", f"('{NAME}', '{shapes_data['det']}')")
    with pytest.raises(ValueError, match="mixes image-text pair datasets"):
        load_training_set(cfg)


def test_category_repeat_factors_are_refused_for_pairs(pair_sets, tokenizer_dir):
    cfg = _cfg(
        tokenizer_dir,
        "DATASETS.COARSE.SAMPLE_BY", "image",
        "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
    )  # fmt: skip
    with pytest.raises(ValueError, match="SAMPLE_BY"):
        build_train_sampler(cfg, load_training_set(cfg), seed=0)


def test_pairs_of_your_own_from_the_config(tmp_path, tokenizer_dir):
    records = [
        {"image": write_image(tmp_path / f"{i}.jpg", seed=i), "captions": c}
        for i, c in enumerate(CAPTIONS)
    ]
    jsonl = write_jsonl(tmp_path / "mine.jsonl", records)
    cfg = get_config(
        "tiny/coarse_tiny_train.yaml",
        ["MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir),
         "DATASETS.COARSE.CUSTOM_TRAIN", f"['{jsonl}']",
         "DATASETS.TRAIN", "('custom_pairs_train',)"],
    )  # fmt: skip
    assert MetadataCatalog.get("custom_pairs_train").pair_files == [jsonl]
    training_set = load_training_set(cfg)
    assert training_set.pairs and len(training_set) == 9
    DatasetCatalog.remove("custom_pairs_train")
    MetadataCatalog.remove("custom_pairs_train")
    with pytest.raises(KeyError, match="DATASETS.COARSE.CUSTOM_TRAIN"):
        load_training_set(cfg)
