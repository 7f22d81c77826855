"""MDETR-format grounding datasets (Flickr30k Entities, GoldG "mixed", RefCOCO/+/g).

MDETR (Kamath et al. 2021, ``ashkamath/mdetr``) ships its annotations as COCO-like json files
(``final_flickr_separateGT_*.json``, ``final_mixed_train(_no_coco).json``,
``finetune_refcoco*_*.json``): one "image" per (image, caption) pair with the ``caption``, the
phrases to evaluate (``tokens_positive_eval``) and bookkeeping (``sentence_id``,
``original_img_id``, ``dataset_name``, ``tokens_negative``, ``data_source``, ...); one
annotation per box with its phrase's character spans (``tokens_positive``) and ``phrase_ids``.
The official FIBER loaders (``data/datasets/modulated_coco.py`` ``ModulatedDataset``,
``mixed.py``, ``flickr.py``, ``refexp.py``) read these files; so does this one.

The file is validated as COCO-format detection files are (:mod:`.validation`: missing keys,
wrong types, duplicate ids, mismatched image ids are refused; non-finite or absurd boxes and boxes
of unknown images are dropped and counted). Spans that are not ``0 <= start < end <=
len(caption)`` are dropped and counted (the log names the image and the span); a box left without
a valid span is dropped. A phrase to evaluate with no valid span keeps its place (label order =
phrase order) with no spans.

Any other MDETR-format grounding dataset is one call away::

    register_grounding_dataset("my_grounding_train", "path/to/ann.json", "path/to/images")
"""

import logging
import os
from typing import Dict, List, Mapping, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...text.spans import is_valid_span
from ..utils import read_json
from .validation import (
    AnnotationError,
    AnnotationIssues,
    check_registration,
    check_top_level,
    group_annotations,
    index_images,
)

__all__ = ["load_mdetr_grounding_json", "register_grounding_dataset"]

logger = logging.getLogger(__name__)

# Image fields that the loader interprets; every other image field is kept verbatim.
_IMAGE_KEYS = ("id", "file_name", "height", "width", "caption", "tokens_positive_eval")

ImageRoot = Union[str, Mapping[str, str]]


def _image_path(img: Dict, image_root: ImageRoot, json_file: str) -> str:
    if isinstance(image_root, str):
        return os.path.join(image_root, img["file_name"])
    # MDETR's mixed json takes images from COCO and from VG/GQA: "data_source" says which.
    source = img.get("data_source")
    if not isinstance(source, str) or source not in image_root:
        raise KeyError(
            f"{json_file}: image {img['id']} has data_source {source!r}, but the image root maps "
            f"only {sorted(image_root)}: add a folder for it"
        )
    return os.path.join(image_root[source], img["file_name"])


class _SpanChecker:
    """Drops invalid spans, counting them in ``issues`` (the first few are logged with their
    image)."""

    def __init__(self, issues: AnnotationIssues):
        self.issues = issues

    def filter(self, spans, caption: str, image_id, what: str) -> List[List[int]]:
        if not isinstance(spans, (list, tuple)):
            spans = [] if spans is None else [spans]
        kept = []
        for span in spans:
            if isinstance(span, (list, tuple)) and is_valid_span(span, len(caption)):
                kept.append([int(span[0]), int(span[1])])
                continue
            self.issues.add(
                "span_outside_caption",
                f"image {image_id}: {what} span {span!r} is outside its caption of "
                f"{len(caption)} characters {caption[:80]!r}",
            )
        return kept


def load_mdetr_grounding_json(
    json_file: str, image_root: ImageRoot, dataset_name: Optional[str] = None
) -> List[Dict]:
    """Load an MDETR-format grounding json as dataset dicts (CONTRACT.md section 1).

    Args:
        json_file: MDETR annotation file.
        image_root: image folder, or a mapping from the images' ``data_source`` to folders
            (MDETR's mixed GoldG json: ``{"coco": ..., "vg": ...}``).
        dataset_name: unused (kept for the detectron2 loader signature).

    Returns:
        list[dict], one per (image, caption), with ``caption``, ``tokens_positive_eval`` (one
        entry per phrase to evaluate) and the annotations' ``tokens_positive``.
    """
    data = read_json(json_file)
    check_top_level(data, json_file, ("images",), optional=("annotations",))
    images = index_images(data["images"], json_file)
    issues = AnnotationIssues(json_file)
    checker = _SpanChecker(issues)
    anns_per_image = group_annotations(data.get("annotations", []), images, json_file, issues)
    dicts = []
    for img_id in sorted(images):
        img = images[img_id]
        caption = _caption(img, json_file)
        record = {k: v for k, v in img.items() if k not in _IMAGE_KEYS}
        record.update(
            file_name=_image_path(img, image_root, json_file),
            height=img["height"],
            width=img["width"],
            image_id=img_id,
            caption=caption,
        )
        if "tokens_positive_eval" in img:
            phrases = img["tokens_positive_eval"]
            if not isinstance(phrases, list):
                raise AnnotationError(
                    f"{json_file}: image {img_id!r} has tokens_positive_eval {phrases!r}: it "
                    "must be a list (one list of [start, end] spans per phrase); fix the file"
                )
            record["tokens_positive_eval"] = [
                checker.filter(spans, caption, img_id, "phrase to evaluate") for spans in phrases
            ]
        record["annotations"] = _annotations(
            anns_per_image.get(img_id, []), caption, img_id, checker
        )
        dicts.append(record)
    issues.log_summary(f"{len(dicts)} images")
    logger.info("Loaded %d captions from %s", len(dicts), json_file)
    return dicts


def _caption(img: Dict, json_file: str) -> str:
    caption = img.get("caption")
    if not isinstance(caption, str):
        raise AnnotationError(
            f"{json_file}: image {img.get('id')!r} has no 'caption': this is not an MDETR-format "
            "grounding file (use register_detection_dataset for COCO-format detection data)"
        )
    if not caption.strip():
        raise AnnotationError(
            f"{json_file}: image {img.get('id')!r} has an empty caption: remove it or give it one"
        )
    return caption


def _annotations(anns: List[Dict], caption: str, image_id, checker: _SpanChecker) -> List[Dict]:
    out = []
    for ann in anns:
        spans = checker.filter(ann.get("tokens_positive"), caption, image_id, "box")
        if not spans:
            checker.issues.add("box_without_valid_span", f"image {image_id}")
            continue
        obj = {
            "bbox": [float(v) for v in ann["bbox"]],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "tokens_positive": spans,
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        if "phrase_ids" in ann:
            obj["phrase_ids"] = ann["phrase_ids"]
        out.append(obj)
    return out


def register_grounding_dataset(
    name: str,
    json_file: str,
    image_root: ImageRoot,
    evaluator_type: str = "grounding",
    **extra_metadata,
) -> None:
    """Register an MDETR-format grounding dataset (registration reads no file).

    Args:
        name: dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: MDETR-format json.
        image_root: image folder, or ``{data_source: folder}`` (see
            :func:`load_mdetr_grounding_json`).
        evaluator_type: "flickr30k", "refexp" or "grounding" (training only / no evaluator).
        extra_metadata: stored as is, e.g. ``flickr_entities_root`` for the Flickr evaluator.

    Registering a name again with the same arguments does nothing; with other files or settings
    it is an error (:func:`.validation.check_registration`).
    """
    metadata = dict(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type,
        data_format="grounding",
        **extra_metadata,
    )
    if check_registration(name, metadata):
        return
    DatasetCatalog.register(name, lambda: load_mdetr_grounding_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(**metadata)
