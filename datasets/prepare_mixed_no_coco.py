#!/usr/bin/env python
"""Write ``final_mixed_train_no_coco.json`` from MDETR's ``final_mixed_train.json``.

FIBER pre-trains on GLIP's COCO-image-free version of MDETR's GoldG "mixed" annotations (so that
no COCO image seen in pre-training is in COCO val); GLIP distributes that file. If you only have
MDETR's ``final_mixed_train.json`` (https://zenodo.org/record/4729015, ``mdetr_annotations``),
this script removes every caption whose image comes from COCO (``data_source == "coco"``) and
the boxes of those captions. GLIP's own file is the reference for reproducing FIBER's numbers.

Usage::

    python datasets/prepare_mixed_no_coco.py \\
        --json $DETECTRON2_DATASETS/mdetr_annotations/final_mixed_train.json \\
        --out $DETECTRON2_DATASETS/mdetr_annotations/final_mixed_train_no_coco.json
"""

import argparse
import json
import logging
import os
import sys

from fiber_det.utils.io import atomic_write_json, refuse_overwriting_inputs_or_exit

logger = logging.getLogger("prepare_mixed_no_coco")


def remove_coco_images(data: dict) -> dict:
    images = [img for img in data["images"] if img.get("data_source") != "coco"]
    kept = {img["id"] for img in images}
    out = dict(data)
    out["images"] = images
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", required=True, help="MDETR final_mixed_train.json")
    parser.add_argument("--out", required=True, help="output json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.path.isfile(args.json):
        logger.error("annotation file not found: %s (see datasets/README.md)", args.json)
        return 1
    refuse_overwriting_inputs_or_exit([args.json], output_files=[args.out], fix="a new --out")
    with open(args.json) as f:
        data = json.load(f)
    out = remove_coco_images(data)
    atomic_write_json(out, args.out, indent=None)
    logger.info(
        "wrote %s: kept %d of %d captions", args.out, len(out["images"]), len(data["images"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
