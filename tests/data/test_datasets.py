"""Dataset registration and loading on tiny files in each real format."""

import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from fiber_det.data import (
    get_fiber_dataset_dicts,
    register_detection_dataset,
    register_grounding_dataset,
)
from fiber_det.data.datasets import builtin
from fiber_det.data.datasets.d3 import D3_PICKLE_OPT_IN

from .tiny_data import (
    D3_GROUPS,
    FLICKR_CAPTION,
    FLICKR_PHRASES,
    flickr_image,
    mdetr_dict,
    write_coco,
    write_coco_o,
    write_d3,
    write_flickr,
    write_image,
    write_json,
    write_lvis,
    write_odinw_split,
)

ISSUE_NAMES = (
    ["fiber_coco_2017_train", "fiber_coco_2017_val", "fiber_lvis_v1_minival", "fiber_lvis_v1_val"]
    + ["fiber_lvis_v1_train", "fiber_o365_train", "mixed_grounding_train_no_coco"]
    + [f"flickr30k_{s}" for s in ("train", "val", "test")]
    + [f"refcoco_{s}" for s in ("train", "val", "testA", "testB")]
    + [f"refcoco+_{s}" for s in ("train", "val", "testA", "testB")]
    + [f"refcocog_{s}" for s in ("train", "val", "test")]
    + [f"coco_o_{d}" for d in ("sketch", "cartoon", "painting", "weather", "handmake", "tattoo")]
    + [f"d3_{s}" for s in ("full", "pres", "abs")]
)


def test_builtin_names_are_registered_with_evaluator_and_format():
    registered = set(DatasetCatalog.list())
    assert set(ISSUE_NAMES) <= registered
    odinw = [n for n in registered if n.startswith("odinw_")]
    assert len(odinw) == 13 * 3
    expected = {"fiber_lvis_v1_minival": "lvis", "flickr30k_val": "flickr30k", "d3_abs": "d3"}
    expected.update({"refcoco+_testB": "refexp", "coco_o_tattoo": "coco_o"})
    expected.update({"odinw_pothole_val": "odinw", "fiber_coco_2017_val": "coco"})
    for name, evaluator in expected.items():
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == evaluator, name
        assert meta.data_format == (
            "grounding" if evaluator in ("flickr30k", "refexp") else "detection"
        )
    assert MetadataCatalog.get("fiber_o365_train").train_prompt == "sampled"
    assert MetadataCatalog.get("fiber_coco_2017_train").train_prompt == "full"


def test_registration_is_lazy_and_missing_file_is_a_clear_error(tmp_path, unique_name):
    name = unique_name()
    missing = str(tmp_path / "nowhere" / "instances.json")
    register_detection_dataset(name, missing, str(tmp_path))  # reads nothing
    with pytest.raises(FileNotFoundError, match=r"nowhere/instances\.json.*datasets/README\.md"):
        DatasetCatalog.get(name)
    g = unique_name()
    register_grounding_dataset(g, str(tmp_path / "final_flickr.json"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="final_flickr.json"):
        DatasetCatalog.get(g)


def test_register_again_is_a_no_op_with_the_same_files_and_an_error_with_others(
    tmp_path, unique_name
):
    name = unique_name()
    json_file, image_root = write_coco(tmp_path)
    register_detection_dataset(name, json_file, image_root)
    register_detection_dataset(name, json_file, image_root)  # same files: nothing happens
    with pytest.raises(
        ValueError, match=r"already registered .*other\.json.*DatasetCatalog\.remove"
    ):
        register_detection_dataset(name, "other.json", "other")
    with pytest.raises(ValueError, match="evaluator_type"):
        register_detection_dataset(name, json_file, image_root, evaluator_type="odinw")
    with pytest.raises(ValueError, match="already registered"):
        register_grounding_dataset(name, json_file, image_root)
    assert MetadataCatalog.get(name).json_file == json_file
    g = unique_name()
    register_grounding_dataset(g, json_file, image_root)
    register_grounding_dataset(g, json_file, image_root)
    with pytest.raises(ValueError, match="already registered"):
        register_grounding_dataset(g, json_file, str(tmp_path))


def test_coco_json_loads_with_contiguous_ids(tmp_path, unique_name):
    name = unique_name()
    json_file, image_root = write_coco(tmp_path)
    register_detection_dataset(name, json_file, image_root, evaluator_type="odinw")
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [0, 1]
    assert dicts[0]["file_name"] == os.path.join(image_root, "000000.jpg")
    assert (dicts[0]["height"], dicts[0]["width"]) == (48, 64)
    anns = dicts[0]["annotations"]
    assert [a["category_id"] for a in anns] == [0, 2]  # ids 1, 18 of (1, 3, 18)
    assert anns[0]["bbox"] == [4, 6, 20, 24] and anns[0]["bbox_mode"] == BoxMode.XYWH_ABS
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["person", "car", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 18: 2}
    assert meta.evaluator_type == "odinw" and meta.data_format == "detection"


def test_category_name_override(tmp_path, unique_name):
    name = unique_name()
    json_file, image_root = write_coco(tmp_path)
    register_detection_dataset(name, json_file, image_root, category_names=["man", "auto", "hound"])
    DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == ["man", "auto", "hound"]
    bad = unique_name()
    register_detection_dataset(bad, json_file, image_root, category_names=["one"])
    with pytest.raises(ValueError, match="1 category names given to replace the 3"):
        DatasetCatalog.get(bad)


def test_lvis_json_uses_coco_url_and_keeps_frequency(tmp_path, unique_name):
    name = unique_name()
    json_file, image_root = write_lvis(tmp_path, num_categories=20)
    register_detection_dataset(name, json_file, image_root, evaluator_type="lvis")
    dicts = DatasetCatalog.get(name)
    assert dicts[0]["file_name"] == os.path.join(image_root, "val2017", "000000000007.jpg")
    assert dicts[1]["file_name"] == os.path.join(image_root, "train2017", "000000000009.jpg")
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert dicts[0]["neg_category_ids"] == [5]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 3]
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == 20 and meta.thing_classes[1] == "bow_(weapon)"
    assert meta.lvis_frequency[:4] == ["r", "c", "f", "r"]


def test_mdetr_flickr_json_keeps_grounding_fields(tmp_path, unique_name):
    name = unique_name()
    json_file, image_root = write_flickr(tmp_path)
    register_grounding_dataset(name, json_file, image_root, "flickr30k", flickr_entities_root="E")
    (d,) = DatasetCatalog.get(name)
    assert d["caption"] == FLICKR_CAPTION
    assert d["tokens_positive_eval"] == FLICKR_PHRASES
    assert d["sentence_id"] == 0 and d["original_img_id"] == 1000
    assert d["dataset_name"] == "flickr" and d["tokens_negative"] == [[0, len(FLICKR_CAPTION)]]
    assert [a["tokens_positive"] for a in d["annotations"]] == [[[0, 5]], [[14, 25]], [[43, 48]]]
    assert [a["phrase_ids"] for a in d["annotations"]] == [0, 1, 2]
    assert all(a["category_id"] == 0 for a in d["annotations"])
    meta = MetadataCatalog.get(name)
    assert meta.flickr_entities_root == "E" and meta.data_format == "grounding"


def test_mixed_grounding_images_come_from_their_data_source(tmp_path, unique_name):
    images = [flickr_image(0, "vg.jpg"), flickr_image(1, "coco.jpg")]
    images[0]["data_source"], images[1]["data_source"] = "vg", "coco"
    json_file = write_json(
        tmp_path / "mixed.json", mdetr_dict(images, [(0, [1, 1, 9, 9], [[0, 5]])])
    )
    roots = {"vg": str(tmp_path / "gqa"), "coco": str(tmp_path / "coco")}
    name = unique_name()
    register_grounding_dataset(name, json_file, roots)
    dicts = DatasetCatalog.get(name)
    assert dicts[0]["file_name"] == os.path.join(roots["vg"], "vg.jpg")
    assert dicts[1]["file_name"] == os.path.join(roots["coco"], "coco.jpg")
    assert dicts[0]["data_source"] == "vg"
    bad = unique_name()
    register_grounding_dataset(bad, json_file, {"vg": roots["vg"]})
    with pytest.raises(KeyError, match="data_source 'coco'"):
        DatasetCatalog.get(bad)


def test_span_outside_caption_is_dropped_and_logged(tmp_path, unique_name, caplog):
    img = flickr_image(5, "x.jpg", phrases=[[[0, 5]], [[40, 90]]])
    boxes = [
        (5, [1, 1, 9, 9], [[0, 5]]),
        (5, [2, 2, 9, 9], [[44, 99]]),
        (5, [3, 3, 9, 9], [[7, 3]]),
    ]
    json_file = write_json(tmp_path / "bad.json", mdetr_dict([img], boxes))
    name = unique_name()
    register_grounding_dataset(name, json_file, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        (d,) = DatasetCatalog.get(name)
    assert [a["tokens_positive"] for a in d["annotations"]] == [[[0, 5]]]
    assert d["tokens_positive_eval"] == [[[0, 5]], []]  # phrase order kept
    text = caplog.text
    assert "image 5" in text and "[44, 99]" in text and "outside its caption of 48" in text
    assert "span_outside_caption: 3" in text and "box_without_valid_span: 2" in text


def test_empty_caption_is_an_error_naming_the_image(tmp_path, unique_name):
    img = flickr_image(4, "x.jpg", caption="  ", phrases=[])
    json_file = write_json(tmp_path / "empty.json", mdetr_dict([img], []))
    name = unique_name()
    register_grounding_dataset(name, json_file, str(tmp_path))
    with pytest.raises(ValueError, match="empty.json: image 4 has an empty caption"):
        DatasetCatalog.get(name)


def test_a_detection_json_is_not_a_grounding_json(tmp_path, unique_name):
    json_file, image_root = write_coco(tmp_path)
    name = unique_name()
    register_grounding_dataset(name, json_file, image_root)
    with pytest.raises(ValueError, match="has no 'caption'.*register_detection_dataset"):
        DatasetCatalog.get(name)


def test_source_dataset_tag_and_official_empty_filter(tmp_path, unique_name, caplog):
    name = unique_name()
    json_file, image_root = write_coco(tmp_path, num_images=2)
    data = __import__("json").load(open(json_file))
    data["images"].append({"id": 2, "file_name": "000000.jpg", "width": 64, "height": 48})
    data["images"].append({"id": 3, "file_name": "000000.jpg", "width": 64, "height": 48})
    data["annotations"].append(
        {"id": 9, "image_id": 3, "category_id": 1, "bbox": [1, 1, 1, 5], "iscrowd": 0, "area": 5}
    )
    write_json(json_file, data)
    register_detection_dataset(name, json_file, image_root)
    dicts = get_fiber_dataset_dicts([name], filter_empty=False)
    assert len(dicts) == 4 and {d["source_dataset"] for d in dicts} == {name}
    with caplog.at_level(logging.INFO):
        kept = get_fiber_dataset_dicts([name], filter_empty=True)
    # image 2 has no annotation, image 3 only a 1-pixel-wide box (official has_valid_annotation)
    assert [d["image_id"] for d in kept] == [0, 1]
    assert "removed 2 of 4 images" in caplog.text
    with pytest.raises(KeyError, match="not registered"):
        get_fiber_dataset_dicts(["no_such_dataset"])


def test_builtin_layouts_load(builtin_root):
    root = builtin_root
    write_flickr(root, "final_flickr_separateGT_test.json", "test")
    (d,) = DatasetCatalog.get("flickr30k_test")
    assert os.path.isfile(d["file_name"])
    entities = MetadataCatalog.get("flickr30k_test").flickr_entities_root
    assert entities == os.path.join(str(root), "flickr30k", "flickr30k_entities")
    assert MetadataCatalog.get("flickr30k_test").flickr_split == "test"

    names = builtin.ODINW_13["aquarium"][2]
    write_odinw_split(root, "Aquarium/Aquarium Combined.v2-raw-1024.coco", "valid", names)
    (d,) = DatasetCatalog.get("odinw_aquarium_val")
    assert os.path.isfile(d["file_name"])
    assert MetadataCatalog.get("odinw_aquarium_val").thing_classes == names
    write_odinw_split(root, "EgoHands/generic", "mini_val", ["hand"])
    assert len(DatasetCatalog.get("odinw_egohands_generic_val")) == 1  # GLIP evaluates mini_val

    write_coco_o(root, "tattoo")
    (d,) = DatasetCatalog.get("coco_o_tattoo")
    assert os.path.isfile(d["file_name"]) and "ood_coco/tattoo/val2017" in d["file_name"]

    refcoco = root / "mdetr_annotations" / "finetune_refcocog_test_corrected.json"
    write_image(root / "coco" / "train2014" / "r.jpg", 64, 48)
    write_json(refcoco, mdetr_dict([flickr_image(0, "r.jpg")], [(0, [1, 1, 20, 20], [[0, 5]])]))
    (d,) = DatasetCatalog.get("refcocog_test")
    assert os.path.isfile(d["file_name"])
    with pytest.raises(FileNotFoundError, match="finetune_refcoco_val.json"):
        DatasetCatalog.get("refcoco_val")


def test_d3_dicts_carry_their_group_descriptions(builtin_root, monkeypatch):
    monkeypatch.setenv(D3_PICKLE_OPT_IN, "1")  # the toolkit's pickles written by this test
    write_d3(builtin_root)
    dicts = DatasetCatalog.get("d3_full")
    assert [d["sent_ids"] for d in dicts] == [sorted(D3_GROUPS[0]), sorted(D3_GROUPS[1])]
    meta = MetadataCatalog.get("d3_full")
    assert meta.thing_classes[0] == "a dog without leash" and meta.evaluator_type == "d3"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    assert MetadataCatalog.get("d3_full").eval_prompt_chunk_size == 1
    DatasetCatalog.get("d3_abs")
    assert MetadataCatalog.get("d3_abs").thing_classes == ["a hat that is not blue"]


def test_d3_without_toolkit_files_is_a_clear_error(builtin_root, monkeypatch):
    monkeypatch.setenv(D3_PICKLE_OPT_IN, "1")
    paths = write_d3(builtin_root)
    os.remove(os.path.join(paths["pkl"], "groups.pkl"))
    with pytest.raises(FileNotFoundError, match="groups.pkl.*datasets/README.md"):
        DatasetCatalog.get("d3_pres")
