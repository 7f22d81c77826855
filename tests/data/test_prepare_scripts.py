"""datasets/prepare_*.py on tiny files: their outputs load through the builtin registrations."""

import importlib.util
import json

from detectron2.data import DatasetCatalog, MetadataCatalog

from tests.paths import REPO_ROOT

from .tiny_data import coco_dict, flickr_image, mdetr_dict, write_image, write_json


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_odinw_removes_roboflow_background(builtin_root):
    odinw = _script("prepare_odinw")
    split = builtin_root / "odinw" / "pothole" / "valid"
    write_image(split / "p.jpg", 64, 48)
    data = coco_dict(
        [(0, "p.jpg", 64, 48)], [(0, 1, [2, 2, 20, 20])], [(0, "potholes"), (1, "pothole")]
    )
    data["categories"][0]["supercategory"] = "none"
    write_json(split / "_annotations.coco.json", data)
    assert odinw.convert_tree(builtin_root / "odinw") == 1
    out = json.loads((split / "annotations_without_background.json").read_text())
    assert [c["id"] for c in out["categories"]] == [1]
    (d,) = DatasetCatalog.get("odinw_pothole_val")
    assert [a["category_id"] for a in d["annotations"]] == [0]
    assert MetadataCatalog.get("odinw_pothole_val").thing_classes == ["pothole"]
    missing = odinw.missing_builtin_files(builtin_root)
    assert len(missing) == 38 and str(split / "annotations_without_background.json") not in missing


def test_prepare_objects365_rewrites_v2_file_names(builtin_root):
    o365 = _script("prepare_objects365")
    root = builtin_root / "objects365" / "train"
    write_image(root / "patch8" / "objects365_v1_00000001.jpg", 64, 48)
    data = coco_dict(
        [
            (1, "images/v1/patch8/objects365_v1_00000001.jpg", 64, 48),
            (2, "images/v2/patch9/x.jpg", 64, 48),
        ],
        [(1, 1, [2, 2, 20, 20]), (2, 3, [1, 1, 5, 5])],
    )
    out = o365.convert(data, str(root), check=True)
    assert [i["file_name"] for i in out["images"]] == ["patch8/objects365_v1_00000001.jpg"]
    assert [a["image_id"] for a in out["annotations"]] == [1]
    write_json(builtin_root / "objects365" / "annotations" / "objects365_train.json", out)
    (d,) = DatasetCatalog.get("fiber_o365_train")
    assert d["file_name"] == str(root / "patch8" / "objects365_v1_00000001.jpg")


def test_prepare_mixed_no_coco_keeps_vg_captions():
    mixed = _script("prepare_mixed_no_coco")
    images = [flickr_image(0, "a.jpg"), flickr_image(1, "b.jpg")]
    images[0]["data_source"], images[1]["data_source"] = "coco", "vg"
    data = mdetr_dict(images, [(0, [1, 1, 5, 5], [[0, 5]]), (1, [1, 1, 5, 5], [[0, 5]])])
    out = mixed.remove_coco_images(data)
    assert [i["id"] for i in out["images"]] == [1] and [
        a["image_id"] for a in out["annotations"]
    ] == [1]
