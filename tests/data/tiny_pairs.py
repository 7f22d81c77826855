"""Tiny image-text pair files in the real formats: ViLT/METER Arrow files and JSON lines.

The Arrow files have the column layout of the official ``write_*.py`` scripts
(microsoft/FIBER ``coarse_grained/fiber/utils/``): Karpathy / SBU / CC3M files ``image``
(encoded bytes), ``caption`` (list of strings), ``image_id`` (file name), ``split``; ``vg.arrow``
``image``, ``caption``, ``width``, ``height``, ``x``, ``y`` (lists of ints, one per region) and
``image_id`` (the VG id as a string). Written with pyarrow's ``RecordBatchFileWriter``, as there.
"""

import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

# Captions in the test tokenizer's vocabulary (fiber_det.utils.testing.TEST_VOCABULARY).
CAPTIONS = [
    ["a red circle left of a blue square", "a small red circle", "a red circle"],
    ["a man wearing a red shirt", "a man holding a cup"],
    ["a dog on a bench", "a brown dog sitting on a bench", "a dog", "a dog near a bench"],
]


def image_bytes(width: int = 40, height: int = 30, seed: int = 0, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write_arrow(path, columns: Dict[str, pa.Array]) -> str:
    """Write one Arrow IPC file (RecordBatchFileWriter, as the official scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink:
        with pa.RecordBatchFileWriter(sink, table.schema) as writer:
            writer.write_table(table)
    return str(path)


def caption_columns(
    captions: Sequence[Optional[List[str]]],
    split: str = "test",
    *,
    images: Optional[Sequence[Optional[bytes]]] = None,
    prefix: str = "COCO_val2014_",
) -> Dict[str, pa.Array]:
    """Columns of a Karpathy / SBU / CC3M file: image, caption, image_id, split."""
    n = len(captions)
    if images is None:
        images = [image_bytes(seed=i) for i in range(n)]
    return {
        "image": pa.array(images, type=pa.binary()),
        "caption": pa.array(captions, type=pa.list_(pa.string())),
        "image_id": pa.array([f"{prefix}{i:012d}.jpg" for i in range(n)], type=pa.string()),
        "split": pa.array([split] * n, type=pa.string()),
    }


def write_caption_arrow(path, captions=CAPTIONS, split: str = "test", **kwargs) -> str:
    return write_arrow(path, caption_columns(captions, split, **kwargs))


def write_vg_arrow(path, captions=CAPTIONS) -> str:
    """``vg.arrow``: region descriptions with their boxes, no split column."""
    n = len(captions)
    boxes = [[i + 1] * len(c) for i, c in enumerate(captions)]
    ints = pa.list_(pa.int64())
    return write_arrow(
        path,
        {
            "image": pa.array([image_bytes(seed=i) for i in range(n)], type=pa.binary()),
            "caption": pa.array(captions, type=pa.list_(pa.string())),
            "width": pa.array(boxes, type=ints),
            "height": pa.array(boxes, type=ints),
            "x": pa.array(boxes, type=ints),
            "y": pa.array(boxes, type=ints),
            "image_id": pa.array([str(10 + i) for i in range(n)], type=pa.string()),
        },
    )


def write_image(path, seed: int = 0, size=(40, 30)) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(*size, seed=seed))
    return str(path)


def write_jsonl(path, records: Sequence) -> str:
    """One JSON value per line (records may be dicts, or raw strings written as they are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return str(path)
