"""What the annotation loaders rely on, checked: bad records are refused or dropped and counted.

Every loader (COCO / ODinW / COCO-O / D3 / LVIS detection json, MDETR grounding json) reads its
file through these checks. The rule of thumb: a fault that makes the file ambiguous or means it
is not the format we think (a missing key, a wrong type, two images or two categories with one
id, ids that do not match by type) is **refused** with an :class:`AnnotationError` naming the
file, the record and the fix, because any guess would train or evaluate on wrong labels. A fault
confined to one box (a non-finite or absurd box, a box of an image or a category the file does
not have) **drops** that box, counted per reason; the first few are logged with their record and
a summary is logged at the end. ``datasets/README.md`` lists the rules.

:func:`check_registration` makes registering a dataset name twice either a no-op (same files and
settings) or an error (anything else), never a silent "first registration wins".
"""

import logging
import math
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "AnnotationError",
    "AnnotationIssues",
    "MAX_BOX_TO_IMAGE",
    "check_registration",
    "check_top_level",
    "group_annotations",
    "index_categories",
    "index_images",
    "require_keys",
]

logger = logging.getLogger(__name__)

# A box wider (taller) than this many image widths (heights) is absurd: annotated at another
# resolution, or garbage. Boxes only slightly outside the image are clipped by the mapper.
MAX_BOX_TO_IMAGE = 2.0
_FORMAT_HINT = "see datasets/README.md for the expected format"


class AnnotationError(ValueError):
    """An annotation file that cannot be loaded as is; the message names the record and the fix."""


def _describe(kind: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, Mapping) else None
    return f"{kind} #{index}" + (f" (id {rid!r})" if rid is not None else "")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_registration(name: str, metadata: Mapping[str, Any]) -> bool:
    """Whether ``name`` is already registered with this ``metadata`` (files and settings): True
    means registering it again is a no-op, False that it is not registered yet.

    Raises:
        ValueError: ``name`` is registered with other files or settings (or by another loader).
    """
    if name not in DatasetCatalog:
        return False
    meta = MetadataCatalog.get(name)
    differ = {k: v for k, v in metadata.items() if meta.get(k, None) != v}
    if not differ:
        return True
    before = {k: meta.get(k, None) for k in differ}
    raise ValueError(
        f"dataset {name!r} is already registered with {before}; registering it again with "
        f"{differ} would be ignored. Use another name, or remove the first registration "
        f"(DatasetCatalog.remove({name!r}); MetadataCatalog.remove({name!r}))"
    )


class AnnotationIssues:
    """Counts of dropped records per reason for one file; logs the first ``first_n`` of each
    reason with their record and, with :meth:`log_summary`, all counts."""

    def __init__(self, json_file: str, first_n: int = 5):
        self.json_file = json_file
        self.first_n = first_n
        self.counts: Counter = Counter()

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= self.first_n:
            logger.warning("%s: %s: %s: dropped", self.json_file, where, reason.replace("_", " "))

    def log_summary(self, what: str) -> None:
        if self.counts:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            logger.warning("%s: dropped %s (%s)", self.json_file, summary, what)


def require_keys(
    record: Any, keys: Iterable[str], json_file: str, where: str, fix: str = _FORMAT_HINT
) -> None:
    """Refuse a record that is not a dict or lacks one of ``keys``."""
    if not isinstance(record, Mapping):
        raise AnnotationError(
            f"{json_file}: {where} is a {type(record).__name__}, not an object; {fix}"
        )
    missing = [k for k in keys if k not in record]
    if missing:
        raise AnnotationError(
            f"{json_file}: {where} has no {', '.join(repr(k) for k in missing)} (keys: "
            f"{sorted(record)[:10]}); {fix}"
        )


def check_top_level(
    data: Any, json_file: str, required: Sequence[str], optional: Sequence[str] = ()
) -> None:
    """Refuse a file that is not an object with the ``required`` lists (``optional`` lists, when
    present, must be lists too)."""
    fix = f"is it the right file? {_FORMAT_HINT}"
    require_keys(data, required, json_file, "the file", fix)
    for key in (*required, *optional):
        if key in data and not isinstance(data[key], list):
            raise AnnotationError(
                f"{json_file}: '{key}' is a {type(data[key]).__name__}, not a list; {fix}"
            )


def _check_id(value: Any, json_file: str, where: str, key: str = "id") -> None:
    if not (_is_int(value) or (isinstance(value, str) and value)):
        raise AnnotationError(
            f"{json_file}: {where} has {key} {value!r} of type {type(value).__name__}: image ids "
            "must be integers (or non-empty strings); fix the file"
        )


def _note_id(seen: Dict[Any, int], value: Any, k: int, json_file: str, kind: str, why: str) -> None:
    """Remember that record #k of ``kind`` has id ``value``; refuse a second record with it."""
    if value in seen:
        plural = {"category": "categories"}.get(kind, f"{kind}s")
        raise AnnotationError(
            f"{json_file}: {plural} #{seen[value]} and #{k} have the same id {value!r}: {why}; "
            f"give each {kind} its own id"
        )
    seen[value] = k


def _check_size(img: Mapping, json_file: str, where: str) -> None:
    for key in ("height", "width"):
        v = img[key]
        if not (_is_number(v) and math.isfinite(v) and v == int(v) and v > 0):
            raise AnnotationError(
                f"{json_file}: {where} has {key} {v!r}: image sizes must be positive integers "
                "(pixels); fix the file, e.g. from the image itself"
            )


def index_images(
    images: Sequence[Any],
    json_file: str,
    *,
    required: Sequence[str] = ("id", "file_name", "height", "width"),
) -> Dict[Any, Dict]:
    """``{id: image}`` in file order, refusing missing keys, wrong types and duplicate ids."""
    out: Dict[Any, Dict] = {}
    first: Dict[Any, int] = {}
    for k, img in enumerate(images):
        where = _describe("image", k, img)
        require_keys(img, required, json_file, where)
        _check_id(img["id"], json_file, where)
        if "height" in required:
            _check_size(img, json_file, where)
        name = img.get("file_name")
        if "file_name" in img and not (isinstance(name, str) and name):
            raise AnnotationError(
                f"{json_file}: {where} has file_name {name!r}: give the image's path relative to "
                "the image root"
            )
        _note_id(first, img["id"], k, json_file, "image", "their annotations cannot be told apart")
        out[img["id"]] = img
    if len({type(i) for i in out}) > 1:
        raise AnnotationError(
            f"{json_file}: image ids mix integers and strings (e.g. "
            f"{[next(i for i in out if isinstance(i, t)) for t in (int, str)]}): write every id "
            "with one type (integers); fix the file"
        )
    return out


def index_categories(categories: Sequence[Any], json_file: str) -> List[Dict]:
    """Categories sorted by id, refusing an empty list, missing keys, wrong types and duplicate
    ids."""
    if not categories:
        raise AnnotationError(
            f"{json_file}: 'categories' is empty: a detection file needs its categories "
            "({'id': int, 'name': str}); fix the file"
        )
    seen: Dict[int, int] = {}
    for k, cat in enumerate(categories):
        where = _describe("category", k, cat)
        require_keys(cat, ("id", "name"), json_file, where)
        if not _is_int(cat["id"]):
            raise AnnotationError(
                f"{json_file}: {where} has id {cat['id']!r} of type {type(cat['id']).__name__}: "
                "category ids must be integers; fix the file"
            )
        if not isinstance(cat["name"], str) or not cat["name"].strip():
            raise AnnotationError(
                f"{json_file}: {where} has name {cat['name']!r}: a category needs a non-empty "
                "name (it becomes the text prompt); fix the file"
            )
        _note_id(seen, cat["id"], k, json_file, "category", "their boxes would get one label")
    return sorted(categories, key=lambda c: c["id"])


def _twin(value: Any, ids: Mapping) -> Optional[Any]:
    """The id of ``ids`` that ``value`` equals after an int <-> str conversion, if any."""
    if _is_int(value):
        alt: Any = str(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        alt = int(value)
    else:
        return None
    return alt if alt in ids else None


def _box_problem(bbox: Any, img: Mapping, json_file: str, where: str) -> Optional[str]:
    """Refuse a bbox that is not 4 numbers; the reason to drop it, or None if it is usable."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise AnnotationError(
            f"{json_file}: {where} has bbox {bbox!r}: a box is 4 numbers [x, y, width, height] "
            "in pixels; fix the file"
        )
    if not all(math.isfinite(v) for v in bbox):
        return "non_finite_box"
    if bbox[2] < 0 or bbox[3] < 0:
        return "negative_box_size"
    height, width = img.get("height"), img.get("width")
    too_wide = width and bbox[2] > MAX_BOX_TO_IMAGE * width
    if too_wide or (height and bbox[3] > MAX_BOX_TO_IMAGE * height):
        return "box_larger_than_twice_its_image"
    return None


def _check_category(ann: Mapping, category_ids: Set[int], json_file: str, where: str) -> bool:
    """Refuse a wrongly typed category_id; False if it is not a category of the file."""
    cid = ann["category_id"]
    if not _is_int(cid):
        twin = _twin(cid, dict.fromkeys(category_ids))
        hint = f" (the file has category {twin!r})" if twin is not None else ""
        raise AnnotationError(
            f"{json_file}: {where} has category_id {cid!r} of type {type(cid).__name__}{hint}: "
            "category ids must be integers, as in 'categories'; fix the file"
        )
    return cid in category_ids


def _check_crowd(ann: Mapping, json_file: str, where: str) -> None:
    if ann.get("iscrowd", 0) not in (0, 1):  # True / False compare equal to 1 / 0
        raise AnnotationError(
            f"{json_file}: {where} has iscrowd {ann['iscrowd']!r}: it must be 0 or 1; fix the file"
        )


def group_annotations(
    annotations: Sequence[Any],
    images: Mapping[Any, Mapping],
    json_file: str,
    issues: AnnotationIssues,
    *,
    category_ids: Optional[Set[int]] = None,
) -> Dict[Any, List[Dict]]:
    """``{image id: [annotation, ...]}`` (file order) of the usable annotations.

    Refused: a record without ``image_id`` / ``bbox`` (and ``category_id`` when ``category_ids``
    is given), a bbox that is not 4 numbers, a wrongly typed ``category_id`` or ``iscrowd``, an
    ``image_id`` that matches an image only as "1" vs 1, two annotations with one ``id``, a file
    none of whose annotations belong to its images. Dropped and counted in ``issues``: boxes of an
    unknown image or category, non-finite boxes, negative sizes, boxes over MAX_BOX_TO_IMAGE
    times their image.
    """
    required = ("image_id", "bbox") + (("category_id",) if category_ids is not None else ())
    out: Dict[Any, List[Dict]] = {}
    ann_ids: Dict[Any, int] = {}
    for k, ann in enumerate(annotations):
        where = _describe("annotation", k, ann)
        require_keys(ann, required, json_file, where)
        if ann.get("id") is not None:
            why = "pycocotools would evaluate one of them twice and lose the other"
            _note_id(ann_ids, ann["id"], k, json_file, "annotation", why)
        _check_id(ann["image_id"], json_file, where, "image_id")
        img = images.get(ann["image_id"])
        if img is None:
            twin = _twin(ann["image_id"], images)
            if twin is not None:
                raise AnnotationError(
                    f"{json_file}: {where} has image_id {ann['image_id']!r} "
                    f"({type(ann['image_id']).__name__}) but the image's id is {twin!r} "
                    f"({type(twin).__name__}): write every id with one type (integers); fix "
                    "the file"
                )
            issues.add("annotation_of_unknown_image", f"{where}, image_id {ann['image_id']!r}")
            continue
        reason = _box_problem(ann["bbox"], img, json_file, where)
        _check_crowd(ann, json_file, where)
        known = category_ids is None or _check_category(ann, category_ids, json_file, where)
        reason = reason or (None if known else "unknown_category_id")
        if reason is not None:
            issues.add(reason, f"{where}, bbox {ann['bbox']}")
            continue
        out.setdefault(ann["image_id"], []).append(ann)
    if annotations and issues.counts["annotation_of_unknown_image"] == len(annotations):
        raise AnnotationError(
            f"{json_file}: none of its {len(annotations)} annotations has the image_id of one of "
            f"its {len(images)} images: the annotations belong to another file; fix the file"
        )
    return out
