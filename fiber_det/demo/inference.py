"""The inference CLI (``tools/demo.py``): images in, pictures and JSON of detections out.

Outputs never destroy inputs: the output folder may not be, or hold, an input image, nor be a
folder that the input globs read; each image gets its own output name (``a``, ``a_1``, ...; case
is ignored, ``predictions`` is reserved for the summary). An image that cannot be used (missing,
corrupt, degenerate, oversized, unsupported) is skipped, named and counted; the others go on.
"""

import glob
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..data.utils import read_image
from ..predictor import FIBERPredictor, PromptLike
from ..utils.io import atomic_write_json, refuse_overwriting_inputs
from .visualize import draw_prediction, save_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_demo_outputs",
    "collect_images",
    "output_names",
    "predict_images",
]

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


SUMMARY_FILE = "predictions.json"


def output_names(files: Sequence[str]) -> List[str]:
    """A distinct output stem per input: ``name``, then ``name_1``, ``name_2``, ... when the stem
    is taken (compared ignoring case, for case-insensitive file systems; the summary's stem
    ``predictions`` is reserved)."""
    used = {Path(SUMMARY_FILE).stem.casefold()}
    names = []
    for f in files:
        stem = name = Path(f).stem
        n = 0
        while name.casefold() in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name.casefold())
        names.append(name)
    return names


def _output_files(output_dir: str, names: Sequence[str]) -> List[str]:
    files = [os.path.join(output_dir, f"{n}{ext}") for n in names for ext in (".jpg", ".json")]
    return files + [os.path.join(output_dir, SUMMARY_FILE)]


def check_demo_outputs(
    files: Sequence[str],
    output_dir: str,
    *,
    patterns: Sequence[str] = (),
    protected: Sequence[Optional[str]] = (),
) -> None:
    """Refuse (before anything is written) an output folder that is or holds an input image or
    that a glob of ``patterns`` reads, and outputs that would overwrite a ``protected`` file (the
    config, the weights).

    Raises:
        OutputCollisionError: naming the collision and the fix.
    """
    fix = "give --output a folder of its own, outside the input folders and globs"
    refuse_overwriting_inputs(files, output_dir=output_dir, input_patterns=patterns, fix=fix)
    outputs = _output_files(output_dir, output_names(files))
    refuse_overwriting_inputs(protected, output_files=outputs, fix=fix)


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

    An image that cannot be used (missing, corrupt, degenerate, oversized; see
    :func:`fiber_det.data.utils.read_image`) is skipped and reported; the others go on.

    Returns:
        (records, failures): one record per written image, and ``(file, error)`` pairs.

    Raises:
        OutputCollisionError: ``output_dir`` is or holds an input (nothing is written).
    """
    check_demo_outputs(files, output_dir)
    query_check = predictor.encode_prompt(prompt)  # a bad prompt fails before any image
    os.makedirs(output_dir, exist_ok=True)
    logger.info("prompt: %s; labels: %s", query_check.captions, query_check.names)
    names = output_names(files)
    records, failures = [], []
    bar = tqdm(total=len(files), unit="image", disable=not show_progress)
    for start in range(0, len(files), predictor.batch_size):
        batch = []
        for i in range(start, min(start + predictor.batch_size, len(files))):
            try:
                batch.append((i, read_image(files[i], "RGB")))
            except (OSError, ValueError) as e:  # missing, corrupt, degenerate, oversized
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
    atomic_write_json(summary, os.path.join(output_dir, SUMMARY_FILE))
    return records, failures


def _filtered(pred_dict: Dict, keep: Sequence[int]) -> Dict:
    out = dict(pred_dict)
    out["detections"] = [pred_dict["detections"][i] for i in keep]
    return out
