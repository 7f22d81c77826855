"""PairDatasetMapper: the coarse model's input contract, MLM masking, truncation, bad images."""

import io
import logging

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.utils.env import seed_all_rng
from PIL import Image
from transformers import DataCollatorForLanguageModeling

from fiber_det.data import PairDatasetMapper
from fiber_det.data.datasets import load_arrow_pairs, load_jsonl_pairs
from fiber_det.data.pair_transforms import IMAGENET_MEAN, IMAGENET_STD
from fiber_det.text import encode_captions, mask_tokens_for_mlm, special_token_mask

from .tiny_pairs import CAPTIONS, image_bytes, write_caption_arrow, write_image, write_jsonl

S, L = 32, 12
LONG = "a man wearing a red shirt standing left of a brown dog sitting on a bench near a cup"


@pytest.fixture
def coarse_cfg(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.INPUT.COARSE.IMAGE_SIZE = S
    cfg.INPUT.COARSE.MAX_TEXT_LEN = L
    return cfg


@pytest.fixture
def arrow_dicts(tmp_path):
    dicts = load_arrow_pairs(write_caption_arrow(tmp_path / "pairs.arrow"))
    for d in dicts:
        d["source_dataset"] = "tiny_pairs"
    return dicts


def reference_encoding(tokenizer, caption):
    enc = tokenizer(caption, padding="max_length", truncation=True, max_length=L)
    return enc["input_ids"], enc["attention_mask"]


def test_training_output_is_the_contract(coarse_cfg, arrow_dicts, tokenizer):
    mapper = PairDatasetMapper(coarse_cfg, True)
    out = mapper(arrow_dicts[2])
    assert out["image"].shape == (3, S, S) and out["image"].dtype == torch.float32
    for key in ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels"):
        assert out[key].shape == (L,) and out[key].dtype == torch.int64, key
    caption = CAPTIONS[2][arrow_dicts[2]["caption_ids"].index(out["caption_id"])]
    ids, mask = reference_encoding(tokenizer, caption)
    assert out["input_ids"].tolist() == ids and out["attention_mask"].tolist() == mask
    assert out["image_id"] == "COCO_val2014_000000000002.jpg"
    assert out["source_dataset"] == "tiny_pairs"
    assert (out["height"], out["width"]) == (S, S)
    # the "albef" transform of the decoded Arrow bytes
    pil = Image.open(io.BytesIO(image_bytes(seed=2))).convert("RGB")
    ref = np.asarray(pil.resize((S, S), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(out["image"], torch.from_numpy(ref.transpose(2, 0, 1)).float())
    chosen = out["mlm_labels"] != -100
    assert torch.equal(out["mlm_labels"][chosen], out["input_ids"][chosen])


def test_evaluation_output_has_every_caption(coarse_cfg, arrow_dicts, tokenizer):
    out = PairDatasetMapper(coarse_cfg, False)(arrow_dicts[0])
    assert out["caption_ids"] == [0, 1, 2] and out["caption_id"] == 0
    assert out["captions_input_ids"].shape == (3, L)
    for k, caption in enumerate(CAPTIONS[0]):
        ids, mask = reference_encoding(tokenizer, caption)
        assert out["captions_input_ids"][k].tolist() == ids
        assert out["captions_attention_mask"][k].tolist() == mask
    assert torch.equal(out["input_ids"], out["captions_input_ids"][0])
    assert "mlm_input_ids" not in out


def test_jsonl_pairs_map_from_files(coarse_cfg, tmp_path):
    write_image(tmp_path / "img" / "0.jpg", seed=5)
    dicts = load_jsonl_pairs(
        write_jsonl(tmp_path / "p.jsonl", [{"image": "img/0.jpg", "captions": ["a dog"]}])
    )
    out = PairDatasetMapper(coarse_cfg, True)(dicts[0])
    assert out["image"].shape == (3, S, S) and out["caption_id"] == 0
    bytes_dict = {"image_bytes": image_bytes(seed=5), "captions": ["a dog"], "caption_ids": [0]}
    torch.testing.assert_close(
        PairDatasetMapper(coarse_cfg, False)(bytes_dict)["image"], out["image"]
    )


def test_long_captions_are_truncated_and_counted(coarse_cfg, tokenizer, caplog):
    encoded = encode_captions(tokenizer, [LONG, "a dog"], L)
    ids, mask = reference_encoding(tokenizer, LONG)
    assert encoded.input_ids[0].tolist() == ids and encoded.attention_mask[0].tolist() == mask
    assert encoded.input_ids[0, -1] == tokenizer.sep_token_id
    assert encoded.truncated(L) == [True, False]
    assert encoded.num_tokens[0] == len(tokenizer(LONG)["input_ids"])
    mapper = PairDatasetMapper(coarse_cfg, False)
    d = {"image_bytes": image_bytes(), "captions": [LONG, "a dog", LONG + " a cat"]}
    d["caption_ids"] = [0, 1, 2]
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        mapper(d)
    assert mapper.issues.counts["caption_truncated"] == 2
    assert any("MAX_TEXT_LEN 12" in r.getMessage() for r in caplog.records)


def test_mlm_masking_equals_the_transformers_collator(tokenizer):
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.4)
    encoded = encode_captions(tokenizer, [LONG, "a red circle"], 24)
    special = tokenizer.all_special_ids
    for seed in range(5):
        for ids in encoded.input_ids:
            mask = special_token_mask(ids, special)
            torch.manual_seed(seed)
            ours = mask_tokens_for_mlm(
                ids,
                special_mask=mask,
                mask_token_id=tokenizer.mask_token_id,
                vocab_size=len(tokenizer),
                mlm_probability=0.4,
            )
            torch.manual_seed(seed)
            ref = collator([{"input_ids": ids, "special_tokens_mask": mask.long()}])
            assert torch.equal(ours[0], ref["input_ids"][0])
            assert torch.equal(ours[1], ref["labels"][0])


def test_mlm_statistics_80_10_10_and_special_tokens_never_chosen(tokenizer):
    encoded = encode_captions(tokenizer, ["a red circle left of a blue square"], 16)
    ids = encoded.input_ids[0]
    special = special_token_mask(ids, tokenizer.all_special_ids)
    assert special.sum() >= 3  # <s>, </s> and padding
    torch.manual_seed(0)
    chosen = replaced = randomized = kept = 0
    n = 4000
    for _ in range(n):
        mlm_ids, labels = mask_tokens_for_mlm(
            ids, special_mask=special, mask_token_id=4, vocab_size=len(tokenizer)
        )
        hit = labels != -100
        assert not hit[special].any() and torch.equal(mlm_ids[special], ids[special])
        assert torch.equal(mlm_ids[~hit], ids[~hit])
        chosen += int(hit.sum())
        replaced += int((mlm_ids[hit] == 4).sum())
        same = mlm_ids[hit] == ids[hit]
        kept += int(same.sum())
        randomized += int((~same & (mlm_ids[hit] != 4)).sum())
    candidates = n * int((~special).sum())
    assert abs(chosen / candidates - 0.15) < 0.01  # sd ~0.002
    # a random token equals the original with probability 1/vocab: counted as kept
    vocab = len(tokenizer)
    assert abs(replaced / chosen - 0.8) < 0.02
    assert abs(randomized / chosen - 0.1 * (1 - 1 / vocab)) < 0.015
    assert abs(kept / chosen - (0.1 + 0.1 / vocab)) < 0.015


def test_one_caption_is_drawn_uniformly_per_visit(coarse_cfg, arrow_dicts):
    mapper = PairDatasetMapper(coarse_cfg, True)
    torch.manual_seed(0)
    drawn = [mapper(arrow_dicts[2])["caption_id"] for _ in range(400)]
    counts = np.bincount(drawn, minlength=9)[5:]
    assert counts.sum() == 400 and counts.min() > 70  # 100 each expected (sd ~9)
    torch.manual_seed(0)
    again = [mapper(arrow_dicts[2])["caption_id"] for _ in range(20)]
    assert again == drawn[:20]


def _bad_dicts(tmp_path):
    images = [image_bytes(seed=0), b"\x89PNG\r\n\x1a\n garbage", image_bytes(seed=2)]
    dicts = load_arrow_pairs(write_caption_arrow(tmp_path / "bad.arrow", images=images))
    return dicts + [
        {"file_name": str(tmp_path / "gone.jpg"), "captions": ["a"], "caption_ids": [9]}
    ]


def test_unreadable_images_are_skipped_in_training_and_errors_in_evaluation(
    coarse_cfg, tmp_path, caplog
):
    dicts = _bad_dicts(tmp_path)
    mapper = PairDatasetMapper(coarse_cfg, True)
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        assert mapper(dicts[1]) is None
        assert mapper(dicts[3]) is None
    assert mapper(dicts[0]) is not None
    assert mapper.issues.counts["unreadable_image_skipped"] == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "bad.arrow row 1" in messages and "gone.jpg" in messages
    evaluation = PairDatasetMapper(coarse_cfg, False)
    with pytest.raises(OSError, match=r"cannot read image .*bad\.arrow row 1.*corrupt"):
        evaluation(dicts[1])
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        evaluation(dicts[3])


def test_mostly_unreadable_images_stop_training(coarse_cfg, tmp_path):
    dicts = _bad_dicts(tmp_path)
    mapper = PairDatasetMapper(coarse_cfg, True)
    with pytest.raises(RuntimeError, match="could not be read.*check the image folder"):
        for _ in range(30):
            mapper(dicts[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_skips_a_corrupt_image_and_is_reproducible(coarse_cfg, tmp_path, workers):
    dicts = _bad_dicts(tmp_path)[:3]
    mapper = PairDatasetMapper(coarse_cfg, True)
    mapper.read_pil(dicts[0])  # an open Arrow file must not travel to the workers

    def batches():
        seed_all_rng(0)  # as the trainer does: sampler order, transforms, captions, MLM
        loader = build_detection_train_loader(
            dataset=dicts, mapper=mapper, total_batch_size=2, num_workers=workers
        )
        it = iter(loader)
        return [next(it) for _ in range(6)]

    first, second = batches(), batches()
    ids = [x["image_id"] for batch in first for x in batch]
    assert len(ids) == 12 and "COCO_val2014_000000000001.jpg" not in ids
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            assert x["image_id"] == y["image_id"]
            assert torch.equal(x["mlm_input_ids"], y["mlm_input_ids"])
            assert torch.equal(x["image"], y["image"])


def test_bad_dicts_and_tokenizers(coarse_cfg, tokenizer):
    mapper = PairDatasetMapper(coarse_cfg, True)
    with pytest.raises(ValueError, match="needs non-empty 'captions'"):
        mapper({"image_bytes": image_bytes(), "captions": [], "caption_ids": []})
    with pytest.raises(KeyError, match="needs 'file_name', 'image_bytes' or 'arrow_file'"):
        mapper({"captions": ["a"], "caption_ids": [0]})
    with pytest.raises(ValueError, match="at least 3"):
        encode_captions(tokenizer, ["a"], 2)
    with pytest.raises(ValueError, match="MLM_PROB must be in"):
        mask_tokens_for_mlm(
            torch.zeros(3, dtype=torch.long),
            special_mask=torch.zeros(3, dtype=torch.bool),
            mask_token_id=4,
            vocab_size=10,
            mlm_probability=1.5,
        )


def test_caption_over_the_official_40_tokens_is_truncated_and_counted(tiny_cfg, tokenizer):
    assert tiny_cfg.INPUT.COARSE.MAX_TEXT_LEN == 40  # the official default
    caption = " ".join([LONG] * 3)
    assert len(tokenizer(caption)["input_ids"]) > 40
    mapper = PairDatasetMapper(tiny_cfg, True)
    out = mapper({"image_bytes": image_bytes(), "captions": [caption], "caption_ids": [0]})
    assert out["input_ids"].shape == (40,) and int(out["attention_mask"].sum()) == 40
    assert out["input_ids"][-1] == tokenizer.sep_token_id
    assert mapper.issues.counts["caption_truncated"] == 1
