"""Register a dataset of your own from the config: ``DATASETS.CUSTOM`` -> custom_train / custom_val.

Fine-tuning on any COCO-format detection json (or an MDETR-format grounding json) then needs no
code, only the paths (``configs/fiber_b/custom_finetune.yaml``). ``fiber_det.config.load_config``
registers them::

    tools/train_net.py --config-file configs/fiber_b/custom_finetune.yaml \\
        DATASETS.CUSTOM.TRAIN_JSON train.json DATASETS.CUSTOM.TRAIN_IMAGES images/ \\
        DATASETS.CUSTOM.VAL_JSON val.json DATASETS.CUSTOM.VAL_IMAGES images/
"""

import logging
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .detection import register_detection_dataset
from .grounding import register_grounding_dataset

__all__ = ["CUSTOM_TRAIN", "CUSTOM_VAL", "register_custom_datasets"]

logger = logging.getLogger(__name__)

CUSTOM_TRAIN, CUSTOM_VAL = "custom_train", "custom_val"


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
    """Register ``custom_train`` / ``custom_val`` from ``cfg.DATASETS.CUSTOM`` (paths that are
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
    return names
