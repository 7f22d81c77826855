"""The builtin datasets of fiber-det, registered at import under ``$DETECTRON2_DATASETS``.

Registration is lazy (no file is read; a missing file is a ``FileNotFoundError`` when the dataset
is loaded). The folder tree each dataset expects is in ``datasets/README.md``. Paths follow the
official FIBER / GLIP layout (``maskrcnn_benchmark/config/paths_catalog.py``, GLIP
``configs/odinw_13/*.yaml``) where one exists.
"""

import os
from typing import Dict, List, Tuple

from .d3 import register_d3_dataset
from .detection import register_detection_dataset
from .grounding import register_grounding_dataset
from .pairs import register_pair_dataset

__all__ = [
    "ODINW_13",
    "OFFICIAL_PAIR_MIXES",
    "odinw_splits",
    "register_all_coco_o",
    "register_all_d3",
    "register_all_detection",
    "register_all_fiber_datasets",
    "register_all_mdetr",
    "register_all_odinw",
    "register_all_pairs",
]

# name: (image root, json, evaluator_type, train_prompt)
_PREDEFINED_SPLITS_DETECTION = {
    "fiber_coco_2017_train": (
        "coco/train2017",
        "coco/annotations/instances_train2017.json",
        "coco",
        "full",
    ),
    "fiber_coco_2017_val": (
        "coco/val2017",
        "coco/annotations/instances_val2017.json",
        "coco",
        "full",
    ),
    # MDETR's 5k LVIS minival; LVIS v1 val and train (GLIP's copies of the LVIS v1 files).
    "fiber_lvis_v1_minival": (
        "coco",
        "coco/annotations/lvis_v1_minival_inserted_image_name.json",
        "lvis",
        "sampled",
    ),
    "fiber_lvis_v1_val": ("coco", "coco/annotations/lvis_od_val.json", "lvis", "sampled"),
    "fiber_lvis_v1_train": ("coco", "coco/annotations/lvis_od_train.json", "lvis", "sampled"),
    # Objects365 in COCO json (datasets/prepare_objects365.py writes it).
    "fiber_o365_train": (
        "objects365/train",
        "objects365/annotations/objects365_train.json",
        "coco",
        "sampled",
    ),
}

# MDETR annotations (mdetr_annotations/): name -> (image root, json, evaluator_type)
_FLICKR_ENTITIES = "flickr30k/flickr30k_entities"
_PREDEFINED_SPLITS_MDETR = {
    "flickr30k_train": (
        "flickr30k/flickr30k_images/train",
        "final_flickr_separateGT_train.json",
        "flickr30k",
    ),
    "flickr30k_val": (
        "flickr30k/flickr30k_images/val",
        "final_flickr_separateGT_val.json",
        "flickr30k",
    ),
    "flickr30k_test": (
        "flickr30k/flickr30k_images/test",
        "final_flickr_separateGT_test.json",
        "flickr30k",
    ),
    # GLIP's COCO-image-free version of MDETR's GoldG: images from GQA/VG (data_source "vg").
    "mixed_grounding_train_no_coco": (
        {"vg": "gqa/images", "coco": "coco/train2014"},
        "final_mixed_train_no_coco.json",
        "grounding",
    ),
}
for _ds, _splits in (
    ("refcoco", ("train", "val", "testA", "testB")),
    ("refcoco+", ("train", "val", "testA", "testB")),
    ("refcocog", ("train", "val", "test")),
):
    for _split in _splits:
        _json = f"finetune_{_ds}_{_split}.json"
        if (_ds, _split) == ("refcocog", "test"):
            _json = "finetune_refcocog_test_corrected.json"  # the file the official config uses
        _PREDEFINED_SPLITS_MDETR[f"{_ds}_{_split}"] = ("coco/train2014", _json, "refexp")

# GLIP's ODinW-13 (configs/odinw_13/*.yaml): name -> (folder under odinw/, val folder, names)
# Split folders hold the images and annotations_without_background.json (the Roboflow export
# without its background category; datasets/prepare_odinw.py writes it). "val" is the split GLIP
# evaluates on: mini_val for EgoHands and VehiclesOpenImages, valid otherwise. The category names
# are GLIP's OVERRIDE_CATEGORY, in category-id order.
ODINW_13 = {
    "aerialmaritimedrone_large": (
        "AerialMaritimeDrone/large",
        "valid",
        ["boat", "car", "dock", "jetski", "lift"],
    ),
    "aquarium": (
        "Aquarium/Aquarium Combined.v2-raw-1024.coco",
        "valid",
        ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"],
    ),
    "cottontailrabbits": ("CottontailRabbits", "valid", ["Cottontail-Rabbit"]),
    "egohands_generic": ("EgoHands/generic", "mini_val", ["hand"]),
    "northamericamushrooms": (
        "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        "valid",
        ["CoW", "chanterelle"],
    ),
    "packages": ("Packages/Raw", "valid", ["package"]),
    "pascalvoc": (
        "PascalVOC",
        "valid",
        "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
        "person pottedplant sheep sofa train tvmonitor".split(),
    ),
    "pistols": ("pistols/export", None, ["pistol"]),
    "pothole": ("pothole", "valid", ["pothole"]),
    "raccoon": ("Raccoon/Raccoon.v2-raw.coco", "valid", ["raccoon"]),
    "shellfishopenimages": ("ShellfishOpenImages/raw", "valid", ["Crab", "Lobster", "Shrimp"]),
    "thermaldogsandpeople": ("thermalDogsAndPeople", "valid", ["dog", "person"]),
    "vehiclesopenimages": (
        "VehiclesOpenImages/416x416",
        "mini_val",
        ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"],
    ),
}
_ODINW_JSON = "annotations_without_background.json"

# Image-text pairs of FIBER stage 1 (coarse-grained pre-training and retrieval): the ViLT/METER
# Arrow files (coarse_grained/fiber/utils/write_*.py), all in one folder (the official
# `data_root`): name -> (files or glob patterns under arrow/, the `split` every row must have).
# Karpathy splits: COCO 5k test / 5k val / 82,783 train / 30,504 restval images; Flickr30k 1k
# test / 1,014 val / 29,000 train. The shard counts of SBU (official 9) and CC3M (31) depend on
# how many images were downloaded, hence the patterns.
_PAIRS_FOLDER = "arrow"
_PREDEFINED_SPLITS_PAIRS = {
    **{
        f"coco_caption_karpathy_{s}": ((f"coco_caption_karpathy_{s}.arrow",), s)
        for s in ("train", "restval", "val", "test")
    },
    **{
        f"f30k_caption_karpathy_{s}": ((f"f30k_caption_karpathy_{s}.arrow",), s)
        for s in ("train", "val", "test")
    },
    "vg_caption_train": (("vg.arrow",), None),
    "sbu_caption_train": (("sbu_*.arrow",), None),
    "cc3m_caption_train": (("conceptual_caption_train_*.arrow",), None),
}
# The training sets of the official coarse recipes (coarse_grained/fiber/config.py and the
# datasets' `names`): pre-training on COCO + VG + SBU + CC3M (COCO "train" = Karpathy train + val,
# without restval), retrieval fine-tuning on Karpathy train + val. The official "val" of the
# retrieval recipes is the test split.
OFFICIAL_PAIR_MIXES = {
    "pretrain": (
        "coco_caption_karpathy_train",
        "coco_caption_karpathy_val",
        "vg_caption_train",
        "sbu_caption_train",
        "cc3m_caption_train",
    ),
    "coco_retrieval_train": ("coco_caption_karpathy_train", "coco_caption_karpathy_val"),
    "f30k_retrieval_train": ("f30k_caption_karpathy_train", "f30k_caption_karpathy_val"),
}

COCO_O_DOMAINS = ("sketch", "cartoon", "painting", "weather", "handmake", "tattoo")


def _odinw_split(folder: str, val_folder, split: str):
    """(image root, json) of an ODinW split, relative to the dataset root."""
    base = f"odinw/{folder}"
    if val_folder is None:  # pistols: one folder, one json per split
        prefix = {"train": "train", "val": "val", "test": "test"}[split]
        return base, f"{base}/{prefix}_{_ODINW_JSON}"
    if folder == "PascalVOC" and split == "test":
        split_folder = "valid"  # GLIP's PascalVOC has no test split: its "test" is valid
    else:
        split_folder = {"train": "train", "val": val_folder, "test": "test"}[split]
    return f"{base}/{split_folder}", f"{base}/{split_folder}/{_ODINW_JSON}"


def register_all_detection(root: str) -> None:
    """COCO, LVIS and Objects365 (``fiber_*`` names)."""
    for name, (
        image_root,
        json_file,
        evaluator_type,
        train_prompt,
    ) in _PREDEFINED_SPLITS_DETECTION.items():
        register_detection_dataset(
            name,
            os.path.join(root, json_file),
            os.path.join(root, image_root),
            evaluator_type,
            train_prompt=train_prompt,
        )


def register_all_mdetr(root: str) -> None:
    """Flickr30k Entities, GoldG (mixed, no COCO) and RefCOCO/+/g from MDETR's annotations."""
    for name, (image_root, json_name, evaluator_type) in _PREDEFINED_SPLITS_MDETR.items():
        if isinstance(image_root, dict):
            image_root = {k: os.path.join(root, v) for k, v in image_root.items()}
        else:
            image_root = os.path.join(root, image_root)
        extra = {}
        if evaluator_type == "flickr30k":
            # Flickr30k Entities (Annotations/*.xml, Sentences/*.txt, {val,test}.txt): the
            # Flickr evaluator reads the GT boxes and phrase types from there.
            extra["flickr_entities_root"] = os.path.join(root, _FLICKR_ENTITIES)
            extra["flickr_split"] = name.rsplit("_", 1)[1]
        register_grounding_dataset(
            name,
            os.path.join(root, "mdetr_annotations", json_name),
            image_root,
            evaluator_type,
            **extra,
        )


def odinw_splits(root: str) -> Dict[str, Tuple[str, str, List[str]]]:
    """Name -> (json file, image root, category names) of the 39 builtin ODinW splits."""
    out = {}
    for short, (folder, val_folder, names) in ODINW_13.items():
        for split in ("train", "val", "test"):
            image_root, json_file = _odinw_split(folder, val_folder, split)
            out[f"odinw_{short}_{split}"] = (
                os.path.join(root, json_file),
                os.path.join(root, image_root),
                list(names),
            )
    return out


def register_all_odinw(root: str) -> None:
    """GLIP's 13 ODinW datasets as ``odinw_<name>_{train,val,test}``."""
    for name, (json_file, image_root, names) in odinw_splits(root).items():
        register_detection_dataset(
            name,
            json_file,
            image_root,
            "odinw",
            category_names=names,
            odinw_dataset=name[len("odinw_") :].rsplit("_", 1)[0],
        )


def register_all_coco_o(root: str) -> None:
    """The six COCO-O domains (COCO's 80 categories, COCO json) as ``coco_o_<domain>``."""
    for domain in COCO_O_DOMAINS:
        base = os.path.join(root, "ood_coco", domain)
        register_detection_dataset(
            f"coco_o_{domain}",
            os.path.join(base, "annotations", "instances_val2017.json"),
            os.path.join(base, "val2017"),
            "coco_o",
            coco_o_domain=domain,
        )


def register_all_d3(root: str) -> None:
    """D3 FULL / PRES / ABS (intra-scenario) as ``d3_{full,pres,abs}``."""
    base = os.path.join(root, "d3")
    for subset in ("full", "pres", "abs"):
        register_d3_dataset(
            f"d3_{subset}",
            os.path.join(base, "d3_json", f"d3_{subset}_annotations.json"),
            os.path.join(base, "d3_images"),
            os.path.join(base, "d3_pkl"),
        )


def register_all_pairs(root: str) -> None:
    """Image-text pairs (COCO / Flickr30k Karpathy splits, VG, SBU, CC3M) from Arrow files.

    A name already registered with other files is an error (see ``register_pair_dataset``).
    """
    for name, (patterns, split) in _PREDEFINED_SPLITS_PAIRS.items():
        files = [os.path.join(root, _PAIRS_FOLDER, p) for p in patterns]
        register_pair_dataset(name, files, file_format="arrow", expected_split=split)


def register_all_fiber_datasets(root: str) -> None:
    """Register every builtin dataset under ``root`` (names already registered are kept, except
    image-text pair datasets, for which another root is an error)."""
    register_all_detection(root)
    register_all_mdetr(root)
    register_all_odinw(root)
    register_all_coco_o(root)
    register_all_d3(root)
    register_all_pairs(root)


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_fiber_datasets(_root)
