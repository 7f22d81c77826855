"""Image-text pair datasets: ViLT/METER Arrow files and JSON lines, registration, bad input."""

import logging
import os

import pyarrow as pa
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from fiber_det.data.datasets import (
    OFFICIAL_PAIR_MIXES,
    ArrowImageReader,
    load_arrow_pairs,
    load_jsonl_pairs,
    pair_repeat_factors,
    register_pair_dataset,
    retrieval_texts,
)

from .tiny_pairs import (
    CAPTIONS,
    caption_columns,
    image_bytes,
    write_arrow,
    write_caption_arrow,
    write_image,
    write_jsonl,
    write_vg_arrow,
)


def test_builtin_karpathy_split_loads_lazily_with_its_metadata(builtin_root):
    name = "coco_caption_karpathy_test"
    meta = MetadataCatalog.get(name)
    assert (meta.evaluator_type, meta.data_format, meta.pair_format) == (
        "retrieval",
        "pairs",
        "arrow",
    )
    with pytest.raises(FileNotFoundError, match=r"coco_caption_karpathy_test\.arrow.*README"):
        DatasetCatalog.get(name)
    path = write_caption_arrow(builtin_root / "arrow" / "coco_caption_karpathy_test.arrow")
    dicts = DatasetCatalog.get(name)
    assert [d["captions"] for d in dicts] == CAPTIONS
    assert [d["caption_ids"] for d in dicts] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert [d["arrow_row"] for d in dicts] == [0, 1, 2]
    assert all(d["arrow_file"] == path for d in dicts)
    assert dicts[1]["image_id"] == "COCO_val2014_000000000001.jpg"


def test_every_official_name_is_registered():
    karpathy = [f"coco_caption_karpathy_{s}" for s in ("train", "restval", "val", "test")]
    karpathy += [f"f30k_caption_karpathy_{s}" for s in ("train", "val", "test")]
    for name in karpathy + [n for mix in OFFICIAL_PAIR_MIXES.values() for n in mix]:
        assert name in DatasetCatalog.list(), name
        assert MetadataCatalog.get(name).data_format == "pairs"


def test_shards_are_read_in_natural_order_with_running_caption_ids(builtin_root):
    folder = builtin_root / "arrow"
    for shard, caps in ((10, [["a dog"]]), (2, [["a cat", "a cat on a bench"]]), (0, [["a cup"]])):
        write_caption_arrow(folder / f"sbu_{shard}.arrow", caps, split="train", prefix=f"s{shard}_")
    dicts = DatasetCatalog.get("sbu_caption_train")
    assert [d["captions"] for d in dicts] == [["a cup"], ["a cat", "a cat on a bench"], ["a dog"]]
    assert [d["caption_ids"] for d in dicts] == [[0], [1, 2], [3]]
    assert [os.path.basename(d["arrow_file"]) for d in dicts] == [
        "sbu_0.arrow",
        "sbu_2.arrow",
        "sbu_10.arrow",
    ]


def test_vg_layout_without_split_column(builtin_root):
    write_vg_arrow(builtin_root / "arrow" / "vg.arrow")
    dicts = DatasetCatalog.get("vg_caption_train")
    assert [d["image_id"] for d in dicts] == ["10", "11", "12"]
    assert dicts[2]["captions"] == CAPTIONS[2]


def test_repeated_captions_kept_once_in_order(tmp_path):
    path = write_caption_arrow(
        tmp_path / "a.arrow", [["a dog", "a cat", "a dog", "a cat", "a cup"]]
    )
    assert load_arrow_pairs(path)[0]["captions"] == ["a dog", "a cat", "a cup"]


def test_bad_rows_are_dropped_counted_and_logged(tmp_path, caplog):
    captions = [["a dog"], [], None, ["", "  ", "a cat"], ["a cup"], ["a man"]]
    images = [image_bytes(seed=i) for i in range(6)]
    images[4] = None  # no image bytes
    images[5] = b""
    path = write_caption_arrow(tmp_path / "bad.arrow", captions, images=images)
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        dicts = load_arrow_pairs(path, "bad_pairs")
    assert [d["captions"] for d in dicts] == [["a dog"], ["a cat"]]
    assert [d["arrow_row"] for d in dicts] == [0, 3]
    assert [d["caption_ids"] for d in dicts] == [[0], [1]]
    summary = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()][-1]
    assert "row_without_captions: 2" in summary
    assert "row_without_image_bytes: 2" in summary
    assert "empty_caption: 2" in summary
    assert any("bad.arrow row 1" in r.getMessage() for r in caplog.records)


def test_file_without_usable_rows_is_an_error(tmp_path):
    path = write_caption_arrow(tmp_path / "empty.arrow", [[], []])
    with pytest.raises(ValueError, match="no image with a caption"):
        load_arrow_pairs(path)


@pytest.mark.parametrize("column", ["image", "caption"])
def test_missing_column_is_an_error(tmp_path, column):
    columns = caption_columns(CAPTIONS)
    del columns[column]
    path = write_arrow(tmp_path / "x.arrow", columns)
    with pytest.raises(ValueError, match=rf"no column \['{column}'\].*write_\*\.py"):
        load_arrow_pairs(path)


def test_wrong_column_types_are_errors(tmp_path):
    columns = caption_columns(CAPTIONS)
    columns["caption"] = pa.array(["one caption", "b", "c"])
    with pytest.raises(ValueError, match="'caption' must be a list of strings"):
        load_arrow_pairs(write_arrow(tmp_path / "a.arrow", columns))
    columns = caption_columns(CAPTIONS)
    columns["image"] = pa.array([1, 2, 3])
    with pytest.raises(ValueError, match="'image' must hold bytes"):
        load_arrow_pairs(write_arrow(tmp_path / "b.arrow", columns))


def test_file_of_another_split_is_an_error(builtin_root):
    write_caption_arrow(builtin_root / "arrow" / "f30k_caption_karpathy_test.arrow", split="val")
    with pytest.raises(ValueError, match=r"3 of 3 rows belong to split\(s\) \['val'\], not 'test'"):
        DatasetCatalog.get("f30k_caption_karpathy_test")


def test_not_an_arrow_file_and_missing_shards(tmp_path):
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match="not an Arrow IPC file.*RecordBatchFileWriter"):
        load_arrow_pairs(str(bad))
    with pytest.raises(FileNotFoundError, match=r"no file matches .*sbu_\*\.arrow"):
        load_arrow_pairs(str(tmp_path / "sbu_*.arrow"))


def test_reregistering_a_name(tmp_path, unique_name):
    name = unique_name("pairs")
    first = str(tmp_path / "a.arrow")
    register_pair_dataset(name, first)
    register_pair_dataset(name, [first])  # the same files: nothing happens
    with pytest.raises(ValueError, match=rf"{name}.*already registered with .*a\.arrow"):
        register_pair_dataset(name, str(tmp_path / "b.arrow"))
    with pytest.raises(ValueError, match="already registered"):
        register_pair_dataset(name, first, expected_split="test")
    other = unique_name("coco")
    DatasetCatalog.register(other, list)
    with pytest.raises(ValueError, match="already registered with other data"):
        register_pair_dataset(other, first)


def test_format_is_inferred_or_asked_for(tmp_path, unique_name):
    with pytest.raises(ValueError, match="cannot tell the format.*file_format"):
        register_pair_dataset(unique_name("pairs"), str(tmp_path / "pairs.txt"))
    name = unique_name("pairs")
    register_pair_dataset(name, str(tmp_path / "pairs.jsonl"))
    assert MetadataCatalog.get(name).pair_format == "jsonl"


def test_jsonl_pairs(tmp_path, unique_name):
    write_image(tmp_path / "data" / "images" / "0.jpg")
    absolute = write_image(tmp_path / "elsewhere" / "1.jpg", seed=1)
    path = write_jsonl(
        tmp_path / "data" / "pairs.jsonl",
        [
            {"image": "images/0.jpg", "captions": ["a dog", "a dog on a bench"]},
            "",
            {"image": absolute, "captions": ["a cat"], "image_id": 7, "extra": "ignored"},
        ],
    )
    name = unique_name("pairs")
    register_pair_dataset(name, path)
    dicts = DatasetCatalog.get(name)
    assert dicts[0]["file_name"] == str(tmp_path / "data" / "images" / "0.jpg")
    assert dicts[0]["image_id"] == "images/0.jpg"
    assert (dicts[1]["file_name"], dicts[1]["image_id"]) == (absolute, 7)
    assert [d["caption_ids"] for d in dicts] == [[0, 1], [2]]
    assert MetadataCatalog.get(name).evaluator_type == "retrieval"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "0.jpg"}', r"pairs\.jsonl:2: no \['captions'\]"),
        ('{"captions": ["a dog"]}', r"pairs\.jsonl:2: no \['image'\]"),
        ('{"image": "0.jpg", "captions": "a dog"}', r":2: 'captions' must be a list of strings"),
        ('{"image": "", "captions": ["a dog"]}', r":2: 'image' must be a non-empty path"),
        ('{"image": "0.jpg", "captions": ["a dog"]', r"pairs\.jsonl:2: not valid JSON"),
        ('["0.jpg", "a dog"]', r":2: expected a JSON object"),
    ],
)
def test_malformed_jsonl_lines_are_errors_with_line_numbers(tmp_path, line, message):
    write_image(tmp_path / "0.jpg")
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "0.jpg", "captions": ["a"]}, line])
    with pytest.raises(ValueError, match=message):
        load_jsonl_pairs(path)


def test_jsonl_lines_without_captions_are_dropped_and_counted(tmp_path, caplog):
    write_image(tmp_path / "0.jpg")
    records = [
        {"image": "0.jpg", "captions": ["a dog"]},
        {"image": "1.jpg", "captions": []},
        {"image": "2.jpg", "captions": ["", None]},
    ]
    with caplog.at_level(logging.WARNING, logger="fiber_det"):
        dicts = load_jsonl_pairs(write_jsonl(tmp_path / "p.jsonl", records))
    assert len(dicts) == 1
    summary = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()][-1]
    assert "line_without_captions: 2" in summary and "empty_caption: 2" in summary


def test_jsonl_with_a_wrong_image_folder_fails_at_once(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"image": "images/0.jpg", "captions": ["a dog"]}])
    with pytest.raises(FileNotFoundError, match=r"p\.jsonl:1: image not found: .*images/0\.jpg"):
        load_jsonl_pairs(path)


def test_arrow_image_reader_reads_rows_and_pickles_empty(tmp_path):
    import pickle

    path = write_caption_arrow(tmp_path / "a.arrow")
    reader = ArrowImageReader()
    assert reader.read(path, 2) == image_bytes(seed=2)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._columns == {} and clone.read(path, 0) == image_bytes(seed=0)
    with pytest.raises(IndexError, match="has 3 rows, no row 3"):
        reader.read(path, 3)


def test_repeat_factors_reproduce_the_official_epoch(tmp_path):
    dicts = load_arrow_pairs(write_caption_arrow(tmp_path / "a.arrow"))
    factors = pair_repeat_factors(dicts, "caption")
    assert factors.dtype == torch.float32 and factors.tolist() == [3.0, 2.0, 4.0]
    assert pair_repeat_factors(dicts, "image").tolist() == [1.0, 1.0, 1.0]
    sampler = iter(RepeatFactorTrainingSampler(factors, shuffle=True, seed=0))
    epoch = [next(sampler) for _ in range(9)]  # one epoch: every image once per caption
    assert sorted(epoch) == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="SAMPLE_BY must be one of"):
        pair_repeat_factors(dicts, "pair")


def test_retrieval_texts(tmp_path):
    dicts = load_arrow_pairs(write_caption_arrow(tmp_path / "a.arrow"))
    captions, txt2img = retrieval_texts(dicts)
    assert captions == [c for caps in CAPTIONS for c in caps]
    assert txt2img == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="not consecutive"):
        retrieval_texts(dicts[1:])
