"""The inference CLI (``tools/demo.py``): images in, pictures and JSON of detections out."""

import glob
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..data.utils import read_image
from ..predictor import FIBERPredictor, PromptLike
from ..utils.io import atomic_write_json
from .visualize import draw_prediction, save_image

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "predict_images"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image files named by ``inputs``: files, folders (their images, sorted) and globs.

    Raises:
        FileNotFoundError: an input matches nothing, or no image is found at all.
    """
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f))
            )
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(f for f in glob.glob(os.path.expanduser(item)) if os.path.isfile(f))
        if not found:
            raise FileNotFoundError(
                f"--input {item!r} is not an image file, a folder with images or a glob that "
                f"matches files (image extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        files.extend(found)
    unique = list(dict.fromkeys(os.path.normpath(f) for f in files))
    return unique


def _output_names(files: Sequence[str]) -> List[str]:
    """A distinct output stem per input (``name``, then ``name_1``, ... on collisions)."""
    seen: Dict[str, int] = {}
    names = []
    for f in files:
        stem = Path(f).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(stem if n == 0 else f"{stem}_{n}")
    return names


def predict_images(
    predictor: FIBERPredictor,
    files: Sequence[str],
    prompt: PromptLike,
    output_dir: str,
    *,
    confidence_threshold: float = 0.5,
    show_progress: bool = True,
) -> Tuple[List[Dict], List[Tuple[str, str]]]:
    """Run ``predictor`` on image files and write, per image, ``<name>.jpg`` (boxes drawn) and
    ``<name>.json`` (detections at or above ``confidence_threshold``), plus
    ``predictions.json`` for all images.

    An image that cannot be read is skipped and reported; the others go on.

    Returns:
        (records, failures): one record per written image, and ``(file, error)`` pairs.
    """
    os.makedirs(output_dir, exist_ok=True)
    query_check = predictor.encode_prompt(prompt)  # a bad prompt fails before any image
    logger.info("prompt: %s; labels: %s", query_check.captions, query_check.names)
    names = _output_names(files)
    records, failures = [], []
    bar = tqdm(total=len(files), unit="image", disable=not show_progress)
    for start in range(0, len(files), predictor.batch_size):
        batch = []
        for i in range(start, min(start + predictor.batch_size, len(files))):
            try:
                batch.append((i, read_image(files[i], "RGB")))
            except OSError as e:  # includes FileNotFoundError / IsADirectoryError
                failures.append((files[i], str(e)))
                logger.error("skipped %s: %s", files[i], e)
                bar.update(1)
        if not batch:
            continue
        preds = predictor([np.ascontiguousarray(rgb[:, :, ::-1]) for _, rgb in batch], prompt)
        for (i, rgb), pred in zip(batch, preds):
            keep = (pred.scores >= confidence_threshold).nonzero().flatten()
            record = {"file_name": files[i], **_filtered(pred.to_dict(), keep.tolist())}
            picture = draw_prediction(rgb, pred, threshold=confidence_threshold)
            save_image(picture, os.path.join(output_dir, f"{names[i]}.jpg"))
            atomic_write_json(record, os.path.join(output_dir, f"{names[i]}.json"))
            records.append(record)
            bar.update(1)
    bar.close()
    summary = {"prompt": query_check.captions, "labels": query_check.names, "images": records}
    summary["failures"] = [{"file_name": f, "error": e} for f, e in failures]
    atomic_write_json(summary, os.path.join(output_dir, "predictions.json"))
    return records, failures


def _filtered(pred_dict: Dict, keep: Sequence[int]) -> Dict:
    out = dict(pred_dict)
    out["detections"] = [pred_dict["detections"][i] for i in keep]
    return out
