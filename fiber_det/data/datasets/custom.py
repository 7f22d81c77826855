"""Register a dataset of your own from the config: ``DATASETS.CUSTOM`` -> custom_train / custom_val.

Fine-tuning on any COCO-format detection json (or an MDETR-format grounding json) then needs no
code, only the paths (``configs/fiber_b/custom_finetune.yaml``). ``fiber_det.config.load_config``
registers them::

    tools/train_net.py --config-file configs/fiber_b/custom_finetune.yaml \\
        DATASETS.CUSTOM.TRAIN_JSON train.json DATASETS.CUSTOM.TRAIN_IMAGES images/ \\
        DATASETS.CUSTOM.VAL_JSON val.json DATASETS.CUSTOM.VAL_IMAGES images/

Image-text pairs of your own (stage 1, JSON lines ``{"image": path, "captions": [...]}`` or Arrow
files) likewise, from ``DATASETS.COARSE.CUSTOM_TRAIN`` / ``CUSTOM_TEST`` -> custom_pairs_train /
custom_pairs_test (retrieval evaluation)::

    tools/train_net.py --config-file configs/tiny/coarse_tiny_train.yaml \
        DATASETS.COARSE.CUSTOM_TRAIN "['pairs.jsonl']" DATASETS.TRAIN "('custom_pairs_train',)"
"""

import logging
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .detection import register_detection_dataset
from .grounding import register_grounding_dataset
from .pairs import register_pair_dataset

__all__ = [
    "CUSTOM_PAIRS_TEST",
    "CUSTOM_PAIRS_TRAIN",
    "CUSTOM_TRAIN",
    "CUSTOM_VAL",
    "register_custom_datasets",
]

logger = logging.getLogger(__name__)

CUSTOM_TRAIN, CUSTOM_VAL = "custom_train", "custom_val"
CUSTOM_PAIRS_TRAIN, CUSTOM_PAIRS_TEST = "custom_pairs_train", "custom_pairs_test"


def _register(name: str, json_file: str, image_root: str, custom) -> None:
    if name in DatasetCatalog:
        if MetadataCatalog.get(name).get("json_file", None) == json_file:
            return
        DatasetCatalog.remove(name)  # another file under the same name (e.g. a second run)
        MetadataCatalog.remove(name)
    if custom.FORMAT == "detection":
        register_detection_dataset(
            name, json_file, image_root, custom.EVALUATOR_TYPE, train_prompt=custom.TRAIN_PROMPT
        )
    elif custom.FORMAT == "grounding":
        register_grounding_dataset(name, json_file, image_root, custom.EVALUATOR_TYPE)
    else:
        raise ValueError(
            f"DATASETS.CUSTOM.FORMAT must be 'detection' (COCO json) or 'grounding' (MDETR json), "
            f"got {custom.FORMAT!r}"
        )
    logger.info("Registered %s (%s): %s, images in %s", name, custom.FORMAT, json_file, image_root)


def register_custom_datasets(cfg) -> List[str]:
    """Register ``custom_train`` / ``custom_val`` from ``cfg.DATASETS.CUSTOM`` and
    ``custom_pairs_train`` / ``custom_pairs_test`` from ``cfg.DATASETS.COARSE`` (those that are
    set); returns the registered names."""
    custom = cfg.DATASETS.CUSTOM
    names = []
    for name, json_file, images in (
        (CUSTOM_TRAIN, custom.TRAIN_JSON, custom.TRAIN_IMAGES),
        (CUSTOM_VAL, custom.VAL_JSON, custom.VAL_IMAGES),
    ):
        if not json_file:
            continue
        if not images:
            raise ValueError(
                f"DATASETS.CUSTOM: {name} has a json ({json_file}) but no image folder; set "
                f"DATASETS.CUSTOM.{'TRAIN' if name == CUSTOM_TRAIN else 'VAL'}_IMAGES"
            )
        _register(name, json_file, images, custom)
        names.append(name)
    for name, files in (
        (CUSTOM_PAIRS_TRAIN, cfg.DATASETS.COARSE.CUSTOM_TRAIN),
        (CUSTOM_PAIRS_TEST, cfg.DATASETS.COARSE.CUSTOM_TEST),
    ):
        if files:
            _register_pairs(name, list(files))
            names.append(name)
    return names


def _register_pairs(name: str, files: List[str]) -> None:
    if name in DatasetCatalog:
        if MetadataCatalog.get(name).get("pair_files", None) == files:
            return
        DatasetCatalog.remove(name)  # other files under the same name (e.g. a second run)
        MetadataCatalog.remove(name)
    register_pair_dataset(name, files)
    logger.info("Registered %s (image-text pairs): %s", name, files)
