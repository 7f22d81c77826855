#!/usr/bin/env python
"""Prepare ODinW (GLIP's "Object Detection in the Wild") datasets for fiber-det.

GLIP (``microsoft/GLIP``, ``configs/odinw_13/*.yaml``) reads each split from
``odinw/<dataset>/<version>/<split>/annotations_without_background.json``: the Roboflow COCO
export (``_annotations.coco.json``) without the category Roboflow adds with id 0 as the
dataset-level parent ("supercategory": "none"); GLIP's README says to remove it by hand. This script
writes that file next to every ``_annotations.coco.json`` found under ``--root`` (GLIP's Hugging
Face copies of ODinW already contain it), then reports which of the 13 builtin ODinW splits are
still missing.

Usage::

    python datasets/prepare_odinw.py --root $DETECTRON2_DATASETS/odinw
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from fiber_det.utils.io import atomic_write_json

logger = logging.getLogger("prepare_odinw")

RAW_NAME = "_annotations.coco.json"
OUT_NAME = "annotations_without_background.json"


def remove_background(data: dict) -> dict:
    """The Roboflow json without its id-0 parent category (annotations using it are dropped)."""
    background = {c["id"] for c in data["categories"] if c["id"] == 0}
    out = dict(data)
    out["categories"] = [c for c in data["categories"] if c["id"] not in background]
    out["annotations"] = [a for a in data["annotations"] if a["category_id"] not in background]
    dropped = len(data["annotations"]) - len(out["annotations"])
    if dropped:
        logger.warning("dropped %d annotations of the background category", dropped)
    return out


def convert_tree(root: Path, overwrite: bool = False) -> int:
    """Write annotations_without_background.json next to every Roboflow json under ``root``."""
    written = 0
    for raw in sorted(root.rglob(RAW_NAME)):
        out = raw.with_name(OUT_NAME)
        if out.exists() and not overwrite:
            continue
        with open(raw) as f:
            data = json.load(f)
        atomic_write_json(remove_background(data), out, indent=None)
        logger.info("wrote %s", out)
        written += 1
    return written


def missing_builtin_files(dataset_root: Path) -> list:
    """Annotation files of the builtin ``odinw_*`` datasets missing under ``dataset_root``."""
    from fiber_det.data.datasets.builtin import odinw_splits

    splits = odinw_splits(str(dataset_root))
    return [json_file for json_file, _, _ in splits.values() if not os.path.isfile(json_file)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--root", required=True, help="the odinw/ folder under $DETECTRON2_DATASETS"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.root)
    if not root.is_dir():
        logger.error("%s is not a folder (see datasets/README.md)", root)
        return 1
    logger.info("converted %d Roboflow annotation files", convert_tree(root, args.overwrite))
    missing = missing_builtin_files(root.parent)
    for path in missing:
        logger.warning("missing: %s", path)
    logger.info("%d of 39 builtin ODinW splits (13 datasets x 3) ready", 39 - len(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
