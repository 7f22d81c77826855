"""Image-text pair datasets (FIBER stage 1: ITC, ITM, MLM pre-training and retrieval).

Two file formats, one kind of dataset dict (``fiber_det/data/CONTRACT.md`` section 6):

- **Arrow** (the official format): the ViLT / METER ``write_*.py`` scripts (``coarse_grained/
  fiber/utils/`` of microsoft/FIBER) write one Arrow IPC file per split or shard with the columns
  ``image`` (encoded image bytes), ``caption`` (list of strings), ``image_id`` (file name, or the
  VG id) and ``split`` (not in ``vg.arrow``, which has region boxes instead). The files are
  memory-mapped: loading reads the captions only; the mapper reads an image's bytes when it needs
  them (:class:`ArrowImageReader`).
- **JSON lines** for your own pairs: one ``{"image": path, "captions": [str, ...]}`` per line
  (optional ``"image_id"``); relative paths are resolved against the folder of the file.

One dict per image::

    {"arrow_file": str, "arrow_row": int}  or  {"file_name": str},
    "image_id": str | int, "captions": [str, ...], "caption_ids": [int, ...]

``caption_ids`` number the captions of the dataset 0..T-1 in order (text j of a retrieval score
matrix is caption id j). As the official loader (``BaseDataset``, ``remove_duplicate=True``),
repeated captions of an image are kept once (here in first-occurrence order; the official
``list(set(...))`` order changes with Python's hash seed). Rows without a usable caption or without
image bytes are dropped, counted and logged; malformed files (missing columns or keys, wrong
types, an Arrow split that is not the expected one) are errors that name the file and the fix.

Any pair dataset is one call away::

    register_pair_dataset("my_pairs_train", "path/to/pairs.jsonl")
"""

import glob
import json
import logging
import os
import re
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils import README_HINT, require_file

__all__ = [
    "ArrowImageReader",
    "expand_pair_files",
    "load_arrow_pairs",
    "load_jsonl_pairs",
    "load_pair_files",
    "pair_repeat_factors",
    "read_arrow_table",
    "register_pair_dataset",
    "retrieval_texts",
]

logger = logging.getLogger(__name__)

PAIR_FORMATS = ("arrow", "jsonl")
SAMPLE_BY = ("caption", "image")
# Columns every ViLT/METER caption file has (write_coco_karpathy.py, write_vg.py, ...).
ARROW_IMAGE_COLUMN = "image"
ARROW_CAPTION_COLUMN = "caption"
_FIRST_N_LOGGED = 3  # bad rows described individually before only counting


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401  submodules used below
        import pyarrow.ipc  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "Arrow pair datasets (ViLT/METER *.arrow files) need pyarrow: pip install pyarrow"
        ) from e
    return pyarrow


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def expand_pair_files(files: Sequence[str]) -> List[str]:
    """Paths of a pair dataset: glob patterns expanded in natural order (``sbu_2`` before
    ``sbu_10``); a pattern that matches nothing and a missing file are errors."""
    out = []
    for pattern in files:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern), key=_natural_key)
            if not matches:
                root = os.getenv("DETECTRON2_DATASETS", "datasets")
                raise FileNotFoundError(
                    f"no file matches {pattern} ($DETECTRON2_DATASETS={root!r}); {README_HINT}"
                )
            out.extend(matches)
        else:
            out.append(require_file(pattern, "pairs file"))
    return out


class _Cleaner:
    """Cleans caption lists, counts dropped rows / captions, logs the first few of each kind."""

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter = Counter()

    def drop(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _FIRST_N_LOGGED:
            logger.warning("%s: %s: %s (dropped)", self.what, where, kind.replace("_", " "))

    def captions(self, captions: Any, where: str) -> List[str]:
        if not isinstance(captions, (list, tuple)):
            return []
        kept: Dict[str, None] = {}  # insertion-ordered set
        for c in captions:
            if not isinstance(c, str) or not c.strip():
                self.drop("empty_caption", where)
            elif c in kept:
                self.counts["duplicate_caption"] += 1  # the official loader removes them too
            else:
                kept[c] = None
        return list(kept)

    def report(self, num_images: int, num_captions: int) -> None:
        dropped = {k: v for k, v in self.counts.items() if k != "duplicate_caption"}
        if dropped:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
            logger.warning("%s: dropped %s", self.what, summary)
        logger.info(
            "Loaded %d images, %d captions from %s (%d repeated captions of an image kept once)",
            num_images,
            num_captions,
            self.what,
            self.counts["duplicate_caption"],
        )


def read_arrow_table(path: str):
    """The Arrow IPC file at ``path``, memory-mapped (no column is copied into memory).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an Arrow IPC file.
    """
    pa = _pyarrow()
    require_file(path, "Arrow file")
    try:
        return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    except pa.ArrowInvalid as e:
        raise ValueError(
            f"{path} is not an Arrow IPC file ({e}); the ViLT/METER write_*.py scripts write them "
            "with pyarrow's RecordBatchFileWriter (see datasets/README.md)"
        ) from e


def _check_columns(table, path: str) -> None:
    pa = _pyarrow()
    missing = [c for c in (ARROW_IMAGE_COLUMN, ARROW_CAPTION_COLUMN) if c not in table.schema.names]
    if missing:
        raise ValueError(
            f"{path} has no column {missing} (columns: {table.schema.names}); an image-text pair "
            "file needs 'image' (encoded bytes) and 'caption' (list of strings), as written by "
            "the ViLT/METER write_*.py scripts"
        )
    image_type = table.schema.field(ARROW_IMAGE_COLUMN).type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
        raise ValueError(f"{path}: column 'image' must hold bytes, not {image_type}")
    caption_type = table.schema.field(ARROW_CAPTION_COLUMN).type
    is_list = pa.types.is_list(caption_type) or pa.types.is_large_list(caption_type)
    value_type = caption_type.value_type if is_list else None
    if not is_list or not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
        raise ValueError(
            f"{path}: column 'caption' must be a list of strings per image, not {caption_type}"
        )


def _check_split(table, path: str, expected_split: Optional[str]) -> None:
    if expected_split is None or "split" not in table.schema.names:
        return
    splits = Counter(table.column("split").to_pylist())
    wrong = {s: n for s, n in splits.items() if s != expected_split}
    if wrong:
        raise ValueError(
            f"{path}: {sum(wrong.values())} of {table.num_rows} rows belong to split(s) "
            f"{sorted(map(str, wrong))}, not {expected_split!r}: the file is not the expected "
            "split (check its name against the write_*.py output)"
        )


def load_arrow_pairs(
    arrow_files: Union[str, Sequence[str]],
    dataset_name: Optional[str] = None,
    *,
    expected_split: Optional[str] = None,
) -> List[Dict]:
    """Load ViLT/METER Arrow caption files as pair dicts (module docstring), captions only.

    Args:
        arrow_files: files or glob patterns (``sbu_*.arrow``), concatenated in order.
        dataset_name: used in log messages.
        expected_split: if given, every row's ``split`` column must equal it (Karpathy files).
    """
    pa = _pyarrow()
    files = expand_pair_files([arrow_files] if isinstance(arrow_files, str) else arrow_files)
    cleaner = _Cleaner(dataset_name or ", ".join(files))
    dicts: List[Dict] = []
    next_caption_id = 0
    for path in files:
        table = read_arrow_table(path)
        _check_columns(table, path)
        _check_split(table, path, expected_split)
        images = table.column(ARROW_IMAGE_COLUMN)
        has_bytes = pa.compute.fill_null(pa.compute.binary_length(images), 0).to_pylist()
        captions = table.column(ARROW_CAPTION_COLUMN).to_pylist()
        stem = os.path.splitext(os.path.basename(path))[0]
        if "image_id" in table.schema.names:
            image_ids = table.column("image_id").to_pylist()
        else:
            image_ids = [f"{stem}:{row}" for row in range(table.num_rows)]
        for row in range(table.num_rows):
            where = f"{path} row {row} (image_id {image_ids[row]!r})"
            if not has_bytes[row]:
                cleaner.drop("row_without_image_bytes", where)
                continue
            kept = cleaner.captions(captions[row], where)
            if not kept:
                cleaner.drop("row_without_captions", where)
                continue
            ids = list(range(next_caption_id, next_caption_id + len(kept)))
            next_caption_id += len(kept)
            dicts.append(
                {
                    "arrow_file": path,
                    "arrow_row": row,
                    "image_id": image_ids[row],
                    "captions": kept,
                    "caption_ids": ids,
                }
            )
    return _finish(dicts, cleaner, next_caption_id)


def _finish(dicts: List[Dict], cleaner: _Cleaner, num_captions: int) -> List[Dict]:
    if not dicts:
        raise ValueError(f"{cleaner.what}: no image with a caption (see the warnings above)")
    cleaner.report(len(dicts), num_captions)
    return dicts


def _jsonl_records(path: str) -> Iterable[Tuple[int, Dict]]:
    with open(require_file(path, "pairs file"), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {record!r:.80}")
            yield lineno, record


def load_jsonl_pairs(jsonl_files: Union[str, Sequence[str]], dataset_name: Optional[str] = None):
    """Load JSON-lines pair files (``{"image": path, "captions": [...]}`` per line).

    Relative image paths are resolved against the folder of their file. Lines without captions
    (empty list, only empty strings) are dropped and counted; a line without ``image`` or
    ``captions``, or with the wrong types, is an error. The first image must exist (a wrong image
    folder is reported at once; a missing image later is skipped in training, see the mapper).
    """
    files = expand_pair_files([jsonl_files] if isinstance(jsonl_files, str) else jsonl_files)
    cleaner = _Cleaner(dataset_name or ", ".join(files))
    dicts: List[Dict] = []
    next_caption_id = 0
    for path in files:
        folder = os.path.dirname(os.path.abspath(path))
        for lineno, record in _jsonl_records(path):
            missing = [k for k in ("image", "captions") if k not in record]
            if missing:
                raise ValueError(
                    f"{path}:{lineno}: no {missing}; each line must be "
                    '{"image": "path/to/image.jpg", "captions": ["a caption", ...]}'
                )
            image, captions = record["image"], record["captions"]
            if not isinstance(image, str) or not image:
                raise ValueError(f"{path}:{lineno}: 'image' must be a non-empty path string")
            if not isinstance(captions, list):
                raise ValueError(
                    f"{path}:{lineno}: 'captions' must be a list of strings, e.g. "
                    f'["a dog on a sofa"], not {type(captions).__name__}'
                )
            kept = cleaner.captions(captions, f"{path}:{lineno}")
            if not kept:
                cleaner.drop("line_without_captions", f"{path}:{lineno}")
                continue
            file_name = os.path.normpath(os.path.join(folder, image))
            if not dicts and not os.path.isfile(file_name):
                raise FileNotFoundError(
                    f"{path}:{lineno}: image not found: {file_name} (relative paths are resolved "
                    "against the folder of the .jsonl file)"
                )
            ids = list(range(next_caption_id, next_caption_id + len(kept)))
            next_caption_id += len(kept)
            dicts.append(
                {
                    "file_name": file_name,
                    "image_id": record.get("image_id", image),
                    "captions": kept,
                    "caption_ids": ids,
                }
            )
    return _finish(dicts, cleaner, next_caption_id)


def _infer_format(files: Sequence[str]) -> str:
    exts = {os.path.splitext(f)[1].lower() for f in files}
    if exts == {".arrow"}:
        return "arrow"
    if exts <= {".jsonl", ".json"} and exts:
        return "jsonl"
    raise ValueError(
        f"cannot tell the format of {list(files)} from their extensions: pass "
        f"file_format= one of {PAIR_FORMATS}"
    )


def load_pair_files(
    files: Sequence[str],
    file_format: str,
    dataset_name: Optional[str] = None,
    *,
    expected_split: Optional[str] = None,
) -> List[Dict]:
    """Load pair dicts from Arrow (``file_format="arrow"``) or JSON-lines (``"jsonl"``) files."""
    if file_format == "arrow":
        return load_arrow_pairs(files, dataset_name, expected_split=expected_split)
    if file_format == "jsonl":
        return load_jsonl_pairs(files, dataset_name)
    raise ValueError(f"pair file format must be one of {PAIR_FORMATS}, got {file_format!r}")


def register_pair_dataset(
    name: str,
    files: Union[str, Sequence[str]],
    *,
    file_format: Optional[str] = None,
    evaluator_type: str = "retrieval",
    expected_split: Optional[str] = None,
    **extra_metadata,
) -> None:
    """Register an image-text pair dataset (registration reads no file).

    Registering a name again with the same files does nothing; with other files it is an error
    (two datasets under one name would silently train or evaluate on the wrong one).

    Args:
        name: dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        files: Arrow or JSON-lines file(s); glob patterns are expanded when loading.
        file_format: "arrow" or "jsonl"; default from the extension (.arrow / .jsonl, .json).
        evaluator_type: "retrieval" (image-text retrieval R@k).
        expected_split: Arrow files only: the value every row's ``split`` column must have.
        extra_metadata: stored in the metadata as is.
    """
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise ValueError(f"dataset {name!r}: no file given")
    file_format = file_format or _infer_format(files)
    if file_format not in PAIR_FORMATS:
        raise ValueError(f"file_format must be one of {PAIR_FORMATS}, got {file_format!r}")
    spec = {"pair_files": files, "pair_format": file_format, "expected_split": expected_split}
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        old = {k: meta.get(k, None) for k in spec}
        if old == spec:
            return
        raise ValueError(
            f"dataset {name!r} is already registered with {old['pair_files'] or 'other data'} "
            f"({old['pair_format'] or meta.get('data_format', '?')}); registering it with {files} "
            "would replace it silently. Use another name, or DatasetCatalog.remove(name) and "
            "MetadataCatalog.remove(name) first (builtin datasets: set $DETECTRON2_DATASETS "
            "before importing fiber_det)"
        )
    DatasetCatalog.register(
        name,
        lambda: load_pair_files(files, file_format, name, expected_split=expected_split),
    )
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type, data_format="pairs", **spec, **extra_metadata
    )


class ArrowImageReader:
    """Reads one image's encoded bytes from a memory-mapped Arrow file.

    Each file is opened once per process (memory maps are not shared across DataLoader workers:
    pickling the reader drops its open files).
    """

    def __init__(self):
        self._columns: Dict[str, Any] = {}

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._columns = {}

    def read(self, path: str, row: int) -> bytes:
        column = self._columns.get(path)
        if column is None:
            table = read_arrow_table(path)
            _check_columns(table, path)
            column = self._columns[path] = table.column(ARROW_IMAGE_COLUMN)
        if not 0 <= row < len(column):
            raise IndexError(f"{path} has {len(column)} rows, no row {row}: was the file replaced?")
        value = column[row].as_py()
        return value or b""


def pair_repeat_factors(dataset_dicts: Sequence[Dict], sample_by: str = "caption") -> torch.Tensor:
    """Per-image repeat factors for detectron2's ``RepeatFactorTrainingSampler``.

    ``"caption"`` (official): an epoch visits every image once per caption, as the official
    datasets enumerate (image, caption) pairs; with a caption drawn per visit this weights the
    sources like the official mix (VG's many region descriptions make it about half of the
    pre-training pairs). ``"image"``: every image once (factor 1).

    Returns:
        (N,) float32 tensor, one factor per dict.
    """
    if sample_by == "image":
        return torch.ones(len(dataset_dicts), dtype=torch.float32)
    if sample_by == "caption":
        return torch.tensor([float(len(d["captions"])) for d in dataset_dicts])
    raise ValueError(f"DATASETS.COARSE.SAMPLE_BY must be one of {SAMPLE_BY}, got {sample_by!r}")


def retrieval_texts(dataset_dicts: Sequence[Dict]) -> Tuple[List[str], List[int]]:
    """Every caption of a retrieval dataset and the index of its image.

    Returns:
        (captions, txt2img): text j is caption id j; ``txt2img[j]`` is the position of its image
        in ``dataset_dicts`` (the row of the score matrix).
    """
    captions: List[str] = []
    txt2img: List[int] = []
    for i, d in enumerate(dataset_dicts):
        for caption, cid in zip(d["captions"], d["caption_ids"]):
            if cid != len(captions):
                raise ValueError(
                    f"caption ids of image {d.get('image_id')!r} are not consecutive ({cid} after "
                    f"{len(captions)} captions): pass the dicts of one dataset, in order"
                )
            captions.append(caption)
            txt2img.append(i)
    return captions, txt2img
