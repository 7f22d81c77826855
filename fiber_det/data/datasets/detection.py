"""Detection datasets (COCO-format and LVIS-format json) as detectron2 dataset dicts.

Any COCO-format detection dataset is one call away::

    register_detection_dataset("my_data_train", "path/to/train.json", "path/to/images")

and one config line (``DATASETS.TRAIN: ("my_data_train",)``). FIBER turns the categories into a
text prompt (training: :mod:`fiber_det.text.od_to_grounding`; evaluation: one prompt or chunks).
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..utils import read_json
from .validation import (
    AnnotationError,
    AnnotationIssues,
    check_registration,
    check_top_level,
    group_annotations,
    index_categories,
    index_images,
)

__all__ = ["load_detection_json", "load_lvis_detection_json", "register_detection_dataset"]

logger = logging.getLogger(__name__)

TRAIN_PROMPTS = ("full", "sampled")


def _set_category_metadata(dataset_name: Optional[str], names: List[str], ids: List[int]) -> None:
    if dataset_name is None:
        return
    meta = MetadataCatalog.get(dataset_name)
    meta.set(
        thing_classes=names, thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(ids)}
    )


def _category_names(categories: List[Dict], override: Optional[Sequence[str]]) -> List[str]:
    names = [c["name"] for c in categories]
    if override is None:
        return names
    if len(override) != len(names):
        raise ValueError(
            f"{len(override)} category names given to replace the {len(names)} categories of the "
            "annotation file: give one name per category, in category-id order"
        )
    return list(override)


def load_detection_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    category_names: Optional[Sequence[str]] = None,
) -> List[Dict]:
    """Load a COCO-format detection json (COCO, Objects365, ODinW, COCO-O, D3 GT, your own).

    Categories are sorted by id and numbered 0..C-1 (``category_id`` in the dicts is this
    contiguous id). Segmentations are not loaded (FIBER detects boxes). The file is validated
    (:mod:`.validation`): malformed or ambiguous records are refused, unusable boxes dropped and
    counted.

    Args:
        json_file: COCO-format json (``images``, ``annotations``, ``categories``).
        image_root: folder that ``file_name`` of the images is relative to.
        dataset_name: if given, ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` are
            set in its metadata.
        category_names: names replacing the json's (in category-id order), e.g. GLIP's
            ``OVERRIDE_CATEGORY`` for ODinW.

    Returns:
        list[dict] in detectron2's format (see ``fiber_det/data/CONTRACT.md``).
    """
    data = read_json(json_file)
    check_top_level(data, json_file, ("images", "categories"), optional=("annotations",))
    images = index_images(data["images"], json_file)
    categories = index_categories(data["categories"], json_file)
    ids = [c["id"] for c in categories]
    names = _category_names(categories, category_names)
    id_map = {c: i for i, c in enumerate(ids)}
    issues = AnnotationIssues(json_file)
    anns = group_annotations(
        data.get("annotations", []), images, json_file, issues, category_ids=set(ids)
    )
    issues.log_summary(f"of {len(data.get('annotations', []))} annotations")
    _set_category_metadata(dataset_name, names, ids)

    dicts = []
    for img_id in sorted(images):
        img = images[img_id]
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img_id,
            "annotations": [_box_record(ann, id_map) for ann in anns.get(img_id, [])],
        }
        dicts.append(record)
    logger.info("Loaded %d images, %d categories from %s", len(dicts), len(ids), json_file)
    return dicts


def _box_record(ann: Dict, id_map: Dict[int, int]) -> Dict:
    return {
        "bbox": [float(v) for v in ann["bbox"]],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": id_map[ann["category_id"]],
        "iscrowd": int(ann.get("iscrowd", 0)),
    }


def _lvis_file_name(img: Dict, json_file: str) -> str:
    # LVIS v1 images come from COCO train2017 and val2017: the folder is in coco_url.
    if isinstance(img.get("coco_url"), str):
        return "/".join(img["coco_url"].split("/")[-2:])
    if isinstance(img.get("file_name"), str):
        return img["file_name"]
    raise AnnotationError(
        f"{json_file}: LVIS image {img.get('id')!r} has neither 'coco_url' nor 'file_name': "
        "the image cannot be found; fix the file"
    )


def _lvis_id_list(img: Dict, key: str, json_file: str) -> List:
    value = img.get(key, [])
    if not isinstance(value, list):
        raise AnnotationError(
            f"{json_file}: LVIS image {img['id']!r} has {key} {value!r}: it must be a list of "
            "category ids; fix the file"
        )
    return value


def load_lvis_detection_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict]:
    """Load an LVIS-format json (LVIS v1 train/val, MDETR's 5k minival).

    Image paths are ``image_root/<split folder>/<file>`` from ``coco_url`` (as the official
    ``LvisDetection``), or ``file_name`` when there is no ``coco_url``. Records keep
    ``neg_category_ids`` and ``not_exhaustive_category_ids`` (dataset ids). Metadata gets
    ``thing_classes``, ``thing_dataset_id_to_contiguous_id`` and ``lvis_frequency`` (per
    contiguous id: "r", "c" or "f"; "" if unknown). The file is validated as COCO-format ones
    (:mod:`.validation`).
    """
    data = read_json(json_file)
    check_top_level(data, json_file, ("images", "annotations", "categories"))
    images = index_images(data["images"], json_file, required=("id", "height", "width"))
    categories = index_categories(data["categories"], json_file)
    ids = [c["id"] for c in categories]
    id_map = {c: i for i, c in enumerate(ids)}
    issues = AnnotationIssues(json_file)
    anns = group_annotations(data["annotations"], images, json_file, issues, category_ids=set(ids))
    issues.log_summary(f"of {len(data['annotations'])} annotations")
    _set_category_metadata(dataset_name, [c["name"] for c in categories], ids)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            lvis_frequency=[c.get("frequency", "") for c in categories]
        )
    dicts = []
    for img_id in sorted(images):
        img = images[img_id]
        record = {
            "file_name": os.path.join(image_root, _lvis_file_name(img, json_file)),
            "height": img["height"],
            "width": img["width"],
            "image_id": img_id,
            "neg_category_ids": _lvis_id_list(img, "neg_category_ids", json_file),
            "not_exhaustive_category_ids": _lvis_id_list(
                img, "not_exhaustive_category_ids", json_file
            ),
            "annotations": [
                dict(_box_record(ann, id_map), iscrowd=0) for ann in anns.get(img_id, [])
            ],
        }
        dicts.append(record)
    logger.info("Loaded %d images, %d categories from %s", len(dicts), len(ids), json_file)
    return dicts


def register_detection_dataset(
    name: str,
    json_file: str,
    image_root: str,
    evaluator_type: str = "coco",
    *,
    train_prompt: str = "full",
    category_names: Optional[Sequence[str]] = None,
    **extra_metadata,
) -> None:
    """Register a COCO-format (or, with ``evaluator_type="lvis"``, LVIS-format) detection dataset.

    Registration reads no file; a missing file is reported when the dataset is loaded.
    Registering a name again with the same arguments does nothing; with other files or settings
    it is an error (:func:`.validation.check_registration`).

    Args:
        name: dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: annotation json.
        image_root: image folder.
        evaluator_type: "coco", "lvis", "odinw", "coco_o", "d3", ... (picks the evaluator).
        train_prompt: training caption policy, "full" (every category, shuffled: COCO, ODinW,
            small vocabularies) or "sampled" (positives + sampled negatives: LVIS, Objects365).
        category_names: names replacing the json's, in category-id order.
        extra_metadata: stored in the metadata as is.
    """
    if train_prompt not in TRAIN_PROMPTS:
        raise ValueError(f"train_prompt must be one of {TRAIN_PROMPTS}, got {train_prompt!r}")
    metadata = dict(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type,
        data_format="detection",
        train_prompt=train_prompt,
        **extra_metadata,
    )
    metadata["category_names"] = list(category_names) if category_names is not None else None
    if check_registration(name, metadata):
        return
    if evaluator_type == "lvis":
        DatasetCatalog.register(name, lambda: load_lvis_detection_json(json_file, image_root, name))
    else:
        DatasetCatalog.register(
            name,
            lambda: load_detection_json(json_file, image_root, name, category_names=category_names),
        )
    MetadataCatalog.get(name).set(**metadata)
