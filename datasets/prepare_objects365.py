#!/usr/bin/env python
"""Write Objects365 as the COCO json that ``fiber_o365_train`` reads.

The official FIBER pre-training reads Objects365 from TSV files (``object365_dt_train``); fiber-det
reads the COCO-format json of the Objects365 release instead. The v2 release
(``zhiyuan_objv2_train.json``) names images ``images/v1/patch8/objects365_v1_00420917.jpg``
while the archives unpack to ``train/patch8/objects365_v1_00420917.jpg``; v1 uses flat names.
This script rewrites every ``file_name`` relative to ``--image-root`` (trying the name as is,
then its last two and last one path components), drops images that are not on disk (with
``--check-images``; a few archives are known to be incomplete) and their annotations, and keeps
only the fields the loader needs.

Usage::

    python datasets/prepare_objects365.py \\
        --json $DETECTRON2_DATASETS/objects365/zhiyuan_objv2_train.json \\
        --image-root $DETECTRON2_DATASETS/objects365/train \\
        --out $DETECTRON2_DATASETS/objects365/annotations/objects365_train.json --check-images
"""

import argparse
import json
import logging
import os
import sys

from fiber_det.utils.io import atomic_write_json, refuse_overwriting_inputs_or_exit

logger = logging.getLogger("prepare_objects365")


def relative_name(file_name: str, image_root: str, check: bool):
    """``file_name`` relative to ``image_root`` (None if ``check`` and no candidate exists)."""
    parts = file_name.replace("\\", "/").split("/")
    candidates = [file_name, "/".join(parts[-2:]), parts[-1]]
    if not check:
        return candidates[1] if "patch" in file_name else candidates[2]
    for c in candidates:
        if os.path.isfile(os.path.join(image_root, c)):
            return c
    return None


def convert(data: dict, image_root: str, check: bool) -> dict:
    images, kept_ids, missing = [], set(), 0
    for img in data["images"]:
        name = relative_name(img["file_name"], image_root, check)
        if name is None:
            missing += 1
            continue
        images.append(
            {"id": img["id"], "file_name": name, "height": img["height"], "width": img["width"]}
        )
        kept_ids.add(img["id"])
    annotations = [
        {
            "id": a["id"],
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "area": a.get("area", a["bbox"][2] * a["bbox"][3]),
            "iscrowd": a.get("iscrowd", 0),
        }
        for a in data["annotations"]
        if a["image_id"] in kept_ids
    ]
    if missing:
        logger.warning("dropped %d images not found under %s", missing, image_root)
    categories = [{"id": c["id"], "name": c["name"]} for c in data["categories"]]
    return {"images": images, "annotations": annotations, "categories": categories}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", required=True, help="Objects365 annotation json (v1 or v2)")
    parser.add_argument("--image-root", required=True, help="folder of the unpacked images")
    parser.add_argument("--out", required=True, help="output COCO json")
    parser.add_argument("--check-images", action="store_true", help="drop images not on disk")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path, what in ((args.json, "annotation file"), (args.image_root, "image folder")):
        if not os.path.exists(path):
            logger.error("%s not found: %s (see datasets/README.md)", what, path)
            return 1
    refuse_overwriting_inputs_or_exit([args.json], output_files=[args.out], fix="a new --out")
    with open(args.json) as f:
        data = json.load(f)
    out = convert(data, args.image_root, args.check_images)
    atomic_write_json(out, args.out, indent=None)
    logger.info(
        "wrote %s: %d images, %d boxes, %d categories",
        args.out,
        len(out["images"]),
        len(out["annotations"]),
        len(out["categories"]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
