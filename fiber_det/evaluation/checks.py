"""Prediction records are checked before they are scored, online and offline alike.

A NaN box matches nothing in pycocotools' IoU yet can rank first; an unknown category id scores 0;
a record of another dataset or a duplicated record shifts every number. None of these may score
silently. Every evaluator runs :func:`check_prediction_records` at the top of
``evaluate_predictions``:

* refused (ValueError): a record or box that is not in the data contract's format (section 4);
  a file none of whose records is an image of the dataset (another dataset's predictions); boxes
  none of whose category ids is a category of the dataset (e.g. the contiguous ids that
  detectron2's own evaluators save);
* dropped and counted: records of images (or, for RefCOCO-style data, of ``dataset_name`` groups)
  the dataset does not have; a record repeating an earlier record of its image (grounding: any
  later record of its caption); boxes with a non-finite coordinate or score; boxes whose category
  id (detection) or phrase index (grounding) the dataset or the caption does not have.

Detection records of one image with different boxes (one record per prompt chunk) are kept and
counted as ``merged_records``: the scorers take the union of an image's boxes.

The counts are logged (a warning naming examples when anything is dropped) and saved under
``prediction_checks`` in ``results.json`` and in the offline tool's output.
"""

import logging
import math
from collections import Counter
from numbers import Integral, Real
from typing import (
    Any,
    Callable,
    Container,
    Dict,
    Hashable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

__all__ = ["CHECK_COUNTS", "PREDICTION_CHECKS_KEY", "check_prediction_records"]

PREDICTION_CHECKS_KEY = "prediction_checks"
# Reasons a record or a box is dropped; every one is reported (0 when nothing was dropped).
CHECK_COUNTS = (
    "records_not_in_dataset",
    "duplicate_records",
    "non_finite_boxes",
    "non_finite_scores",
    "unknown_category_ids",
)
_EXAMPLES = 3
_CONTRACT = "the data contract, section 4 (fiber_det/data/CONTRACT.md)"


def _is_real(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _check_format(k: int, record: Any) -> None:
    """Refuse a record or box that is not in the contract's format."""
    where = f"prediction record #{k}"
    if not isinstance(record, Mapping) or "image_id" not in record:
        raise ValueError(f"{where} is not a dict with an 'image_id': see {_CONTRACT}")
    instances = record.get("instances")
    if not isinstance(instances, (list, tuple)):
        raise ValueError(
            f"{where} (image {record['image_id']!r}) has no 'instances' list: {_CONTRACT}"
        )
    for d in instances:
        box = d.get("bbox") if isinstance(d, Mapping) else None
        ok = isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_is_real, box))
        ok = ok and _is_real(d.get("score")) and isinstance(d.get("category_id"), Integral)
        if not ok:
            raise ValueError(
                f"{where} (image {record['image_id']!r}) has a box {d!r} that is not "
                f"{{'bbox': 4 numbers, 'score': number, 'category_id': int}}: see {_CONTRACT}"
            )


def _bad_instance(d: Mapping, record: Mapping, category_ids, phrase_labels: bool) -> Optional[str]:
    if not all(math.isfinite(v) for v in d["bbox"]):
        return "non_finite_boxes"
    if not math.isfinite(d["score"]):
        return "non_finite_scores"
    c = int(d["category_id"])
    if phrase_labels:
        num = record.get("num_phrases")
        if num is not None and not 0 <= c < int(num):
            return "unknown_category_ids"
    elif category_ids is not None and c not in category_ids:
        return "unknown_category_ids"
    return None


def check_prediction_records(
    records: Sequence[Mapping[str, Any]],
    *,
    dataset_name: str,
    logger: logging.Logger,
    image_key: Callable[[Mapping], Hashable] = lambda r: r["image_id"],
    known_images: Optional[Container] = None,
    groups: Optional[Mapping[Hashable, str]] = None,
    category_ids: Optional[Container[int]] = None,
    phrase_labels: bool = False,
    merge_same_image: bool = False,
) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """Drop (and count) what cannot be scored; refuse what is not predictions of this dataset.

    Args:
        records: prediction records (data contract section 4); not modified.
        dataset_name: named in the messages.
        logger: where the counts and examples are logged.
        image_key: the key of a record's image (for Flickr, (original image, sentence)).
        known_images: keys of the dataset's images (None: not checked).
        groups: key -> the ``dataset_name`` of the GT (RefCOCO / + / g); a record that names
            another one is not of this dataset.
        category_ids: the dataset's category ids (detection records; None: not checked).
        phrase_labels: grounding records, whose ``category_id`` is a phrase index below their
            ``num_phrases``.
        merge_same_image: detection: keep several records of one image unless one repeats an
            earlier one (one record per prompt chunk); False: keep the first record of a key.

    Returns:
        (kept records, copied when boxes were dropped; counts: ``records``, ``boxes``,
        ``records_kept``, ``boxes_kept`` and one entry per :data:`CHECK_COUNTS` reason).

    Raises:
        ValueError: a record is malformed, none is of the dataset, or no box has a category id
            of the dataset.
    """
    counts: Counter = Counter({k: 0 for k in CHECK_COUNTS})
    examples: Dict[str, List[Any]] = {k: [] for k in CHECK_COUNTS}

    def drop(reason: str, example: Any, n: int = 1) -> None:
        counts[reason] += n
        if len(examples[reason]) < _EXAMPLES:
            examples[reason].append(example)

    kept: List[Dict[str, Any]] = []
    seen: Dict[Hashable, List[Any]] = {}
    for k, r in enumerate(records):
        _check_format(k, r)
        try:
            key = image_key(r)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"prediction record #{k} cannot be matched to an image ({e!r}): {_CONTRACT}"
            ) from e
        counts["boxes"] += len(r["instances"])
        other_group = groups is not None and r.get("dataset_name", groups.get(key)) != groups.get(
            key
        )
        if (known_images is not None and key not in known_images) or other_group:
            drop("records_not_in_dataset", key, 1)
            continue
        if key in seen:
            if not merge_same_image or any(r["instances"] == prev for prev in seen[key]):
                drop("duplicate_records", key, 1)
                continue
            counts["merged_records"] += 1
        seen.setdefault(key, []).append(r["instances"])
        good = []
        for d in r["instances"]:
            reason = _bad_instance(d, r, category_ids, phrase_labels)
            if reason is None:
                good.append(d)
            else:
                drop(reason, d["category_id"] if reason == "unknown_category_ids" else key)
        kept.append(r if len(good) == len(r["instances"]) else {**r, "instances": good})
    counts.update(records=len(records), records_kept=len(kept))
    counts["boxes_kept"] = sum(len(r["instances"]) for r in kept)
    _refuse_foreign(records, counts, examples, dataset_name)
    _log(counts, examples, dataset_name, logger)
    order = ("records", "records_kept", "merged_records", "boxes", "boxes_kept") + CHECK_COUNTS
    return kept, {k: int(counts[k]) for k in order}


def _refuse_foreign(records, counts: Counter, examples, dataset_name: str) -> None:
    if records and counts["records_not_in_dataset"] == len(records):
        raise ValueError(
            f"none of the {len(records)} prediction records is an image of {dataset_name} (e.g. "
            f"{examples['records_not_in_dataset']}): these are predictions of another dataset; "
            "evaluate them with the dataset they were made on"
        )
    unknown = counts["unknown_category_ids"]
    if unknown and not counts["boxes_kept"]:  # every finite box has an unknown category
        raise ValueError(
            f"none of the {unknown} predicted boxes has a category id of {dataset_name} (e.g. "
            f"{examples['unknown_category_ids']}): the predictions use other ids (detectron2's "
            "own evaluators save contiguous ids); evaluate them with the evaluator they were "
            "made for, or map them to the dataset's category ids"
        )


def _log(counts: Counter, examples, dataset_name: str, logger: logging.Logger) -> None:
    dropped = {k: counts[k] for k in CHECK_COUNTS if counts[k]}
    if not dropped:
        logger.info(
            "%s: prediction checks: %d records, %d boxes, all valid",
            dataset_name,
            counts["records"],
            counts["boxes"],
        )
        return
    detail = "; ".join(f"{k}: {n} (e.g. {examples[k]})" for k, n in dropped.items())
    logger.warning(
        "%s: prediction checks dropped what cannot be scored: %s. Kept %d of %d records, %d of "
        "%d boxes.",
        dataset_name,
        detail,
        counts["records_kept"],
        counts["records"],
        counts["boxes_kept"],
        counts["boxes"],
    )
