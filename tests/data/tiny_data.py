"""Tiny files in the real formats (COCO, LVIS, MDETR, ODinW, COCO-O, D3) for the data tests."""

import json
import os
import pickle
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

COCO_CATEGORIES = [(1, "person"), (3, "car"), (18, "dog")]
# Two captions in the test tokenizer's vocabulary; spans are [start, end) characters.
FLICKR_CAPTION = "a man wearing a red shirt standing left of a dog"
# phrases: "a man" [0, 5), "a red shirt" [14, 25), "a dog" [43, 48)
FLICKR_PHRASES = [[[0, 5]], [[14, 25]], [[43, 48]]]


def write_image(path, width: int, height: int, seed: int = 0) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def write_json(path, data) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def coco_dict(
    images: Sequence[Tuple[int, str, int, int]],
    annotations: Sequence[Tuple[int, int, List[float]]],
    categories: Sequence[Tuple[int, str]] = COCO_CATEGORIES,
    crowd: Sequence[int] = (),
) -> Dict:
    """COCO instances json: images (id, file, w, h); annotations (image id, category id, xywh)."""
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": [
            {
                "id": k + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": float(box[2] * box[3]),
                "iscrowd": int(k in crowd),
                "segmentation": [],
            }
            for k, (img, cat, box) in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": n, "supercategory": "thing"} for c, n in categories],
    }


def write_coco(root, name: str = "coco", num_images: int = 2, size=(64, 48)) -> Tuple[str, str]:
    """A COCO dataset: <root>/<name>/images/*.jpg and <root>/<name>/instances.json."""
    base = Path(root) / name
    w, h = size
    images = [(i, f"{i:06d}.jpg", w, h) for i in range(num_images)]
    for i, f, _, _ in images:
        write_image(base / "images" / f, w, h, seed=i)
    anns = [(0, 1, [4, 6, 20, 24]), (0, 18, [30, 10, 25, 30]), (1, 3, [10, 10, 30, 20])]
    anns = [a for a in anns if a[0] < num_images]
    return write_json(base / "instances.json", coco_dict(images, anns)), str(base / "images")


def lvis_dict(num_categories: int = 50) -> Dict:
    """LVIS v1-style json: coco_url image paths, frequency per category."""
    words = "person bicycle car dog cat horse sheep cow bird bus train truck boat bench".split()
    cats = []
    for i in range(num_categories):
        name = words[i % len(words)] + ("" if i < len(words) else f"_{i}")
        cats.append({"id": i + 1, "name": name, "frequency": "rcf"[i % 3], "synonyms": [name]})
    cats[1]["name"] = "bow_(weapon)"
    images = [
        {
            "id": 7,
            "width": 64,
            "height": 48,
            "coco_url": "http://x/val2017/000000000007.jpg",
            "neg_category_ids": [5],
            "not_exhaustive_category_ids": [],
        },
        {
            "id": 9,
            "width": 64,
            "height": 48,
            "coco_url": "http://x/train2017/000000000009.jpg",
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [4],
        },
    ]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400},
        {"id": 2, "image_id": 7, "category_id": 4, "bbox": [30, 5, 20, 30], "area": 600},
        {"id": 3, "image_id": 9, "category_id": 3, "bbox": [5, 5, 40, 30], "area": 1200},
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def write_lvis(root, num_categories: int = 50) -> Tuple[str, str]:
    """An LVIS dataset: <root>/coco/{val2017,train2017}/*.jpg and the LVIS json."""
    base = Path(root) / "coco"
    data = lvis_dict(num_categories)
    for img in data["images"]:
        write_image(base / "/".join(img["coco_url"].split("/")[-2:]), 64, 48, seed=img["id"])
    return write_json(base / "annotations" / "lvis_tiny.json", data), str(base)


def mdetr_dict(images: Sequence[Dict], boxes: Sequence[Tuple[int, List[float], List]]) -> Dict:
    """MDETR json: images with caption fields; boxes (image id, xywh, tokens_positive)."""
    anns = []
    for k, (img, box, spans) in enumerate(boxes):
        anns.append(
            {
                "id": k + 1,
                "image_id": img,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                "tokens_positive": spans,
                "phrase_ids": k,
            }
        )
    return {
        "images": list(images),
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }


def flickr_image(img_id: int, file_name: str, caption=FLICKR_CAPTION, phrases=FLICKR_PHRASES):
    return {
        "id": img_id,
        "file_name": file_name,
        "width": 64,
        "height": 48,
        "caption": caption,
        "dataset_name": "flickr",
        "tokens_negative": [[0, len(caption)]],
        "sentence_id": img_id,
        "original_img_id": 1000 + img_id,
        "tokens_positive_eval": phrases,
    }


def write_flickr(root, json_name: str = "final_flickr_separateGT_val.json", folder="val"):
    """MDETR Flickr: <root>/flickr30k/flickr30k_images/<folder>/*.jpg + mdetr_annotations json."""
    img_dir = Path(root) / "flickr30k" / "flickr30k_images" / folder
    write_image(img_dir / "1000.jpg", 64, 48, seed=3)
    data = mdetr_dict(
        [flickr_image(0, "1000.jpg")],
        [
            (0, [2, 2, 20, 40], [[0, 5]]),
            (0, [3, 10, 18, 20], [[14, 25]]),
            (0, [40, 20, 20, 20], [[43, 48]]),
        ],
    )
    return write_json(Path(root) / "mdetr_annotations" / json_name, data), str(img_dir)


def write_odinw_split(root, folder: str, split_folder: str, names: Sequence[str]) -> str:
    """A GLIP ODinW split: images + annotations_without_background.json."""
    base = Path(root) / "odinw" / folder / split_folder
    write_image(base / "a.jpg", 64, 48, seed=5)
    cats = [(i + 1, n) for i, n in enumerate(names)]
    data = coco_dict([(1, "a.jpg", 64, 48)], [(1, 1, [3, 3, 30, 30])], categories=cats)
    return write_json(base / "annotations_without_background.json", data)


def write_coco_o(root, domain: str) -> str:
    base = Path(root) / "ood_coco" / domain
    write_image(base / "val2017" / "000000000001.jpg", 64, 48, seed=6)
    data = coco_dict([(1, "000000000001.jpg", 64, 48)], [(1, 18, [3, 3, 30, 30])])
    return write_json(base / "annotations" / "instances_val2017.json", data)


D3_SENTENCES = {
    1: ("a dog without leash", False),
    2: ("a person holding a cup", False),
    3: ("a dog with a leash", False),
    4: ("a hat that is not blue", True),
    5: ("a red car", False),
}
D3_GROUPS = {0: [1, 3, 4], 1: [2, 5]}  # group id -> inner sentence ids
D3_IMAGE_GROUP = {0: 0, 1: 1}


def write_d3(root) -> Dict[str, str]:
    """D3: d3/d3_images, d3/d3_json/d3_{full,pres,abs}_annotations.json and d3/d3_pkl/*.pkl."""
    base = Path(root) / "d3"
    images = [(i, f"img{i}.jpg", 64, 48) for i in D3_IMAGE_GROUP]
    for i, f, w, h in images:
        write_image(base / "d3_images" / f, w, h, seed=10 + i)
    anns = [(0, 1, [2, 2, 30, 30]), (1, 5, [10, 10, 20, 20])]
    for subset, keep in (("full", None), ("pres", False), ("abs", True)):
        ids = [s for s, (_, neg) in D3_SENTENCES.items() if keep is None or neg == keep]
        cats = [(s, D3_SENTENCES[s][0]) for s in ids]
        data = coco_dict(images, [a for a in anns if a[1] in ids], categories=cats)
        write_json(base / "d3_json" / f"d3_{subset}_annotations.json", data)
    _write_d3_pkl(base / "d3_pkl", images, anns)
    return {"root": str(base), "pkl": str(base / "d3_pkl")}


def _write_d3_pkl(folder: Path, images, anns) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sentences = {
        s: {
            "id": s,
            "raw_sent": t,
            "is_negative": neg,
            "anno_id": [],
            "raw_sent_zh": "",
            "group_id": [g for g, ss in D3_GROUPS.items() if s in ss],
        }
        for s, (t, neg) in D3_SENTENCES.items()
    }
    annotations = {
        k: {
            "id": k,
            "image_id": img,
            "sent_id": [s],
            "bbox": [np.array(box)],
            "area": [1.0],
            "segmentation": [],
            "iscrowd": 0,
            "group_id": D3_IMAGE_GROUP[img],
        }
        for k, (img, s, box) in enumerate(anns)
    }
    imgs = {
        i: {
            "id": i,
            "file_name": f,
            "width": w,
            "height": h,
            "group_id": D3_IMAGE_GROUP[i],
            "anno_id": [k for k, a in annotations.items() if a["image_id"] == i],
        }
        for i, f, w, h in images
    }
    groups = {
        g: {
            "id": g,
            "inner_sent_id": ss,
            "outer_sent_id": [],
            "pos_sent_id": ss,
            "img_id": [i for i, gg in D3_IMAGE_GROUP.items() if gg == g],
            "scene": ["x"],
            "group_name": f"group{g}",
            "group_name_zh": "",
        }
        for g, ss in D3_GROUPS.items()
    }
    for name, obj in (
        ("sentences", sentences),
        ("annotations", annotations),
        ("images", imgs),
        ("groups", groups),
    ):
        with open(os.path.join(folder, f"{name}.pkl"), "wb") as f:
            pickle.dump(obj, f)


def decode(tokenizer, input_ids, row) -> str:
    """Text of the tokens where ``row`` (one positive-map row) is non-zero, stripped."""
    ids = [int(i) for i, on in zip(input_ids.tolist(), row.tolist()) if on > 0]
    return tokenizer.decode(ids).strip()
