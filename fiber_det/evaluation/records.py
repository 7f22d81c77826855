"""Prediction records (data contract, section 4), box conversions and atomic output files.

Every fiber-det evaluator turns the model's ``Instances`` into *records* in ``process`` and computes
its metrics from records only, so that evaluation online (``evaluate``) and offline
(``tools/evaluate_predictions.py`` on a saved ``instances_predictions.pth``) is one code path.

A record is ``{"image_id", "instances": [{"bbox": [x, y, w, h], "score", "category_id"}],
"num_prompts", ...}``:

* detection data: ``category_id`` is the dataset's category id (as in a COCO results json);
* grounding data: ``category_id`` is the 0-based phrase index in the image's caption, and the record
  also carries ``num_phrases`` and the grounding fields of the input (``sentence_id``,
  ``original_img_id``, ``dataset_name``).
"""

import json
import math
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

from ..utils.io import atomic_torch_save, atomic_write_json, load_torch_file

__all__ = [
    "GROUNDING_FIELDS",
    "PREDICTIONS_FILE",
    "RESULTS_FILE",
    "atomic_save_json",
    "atomic_torch_save",
    "contiguous_to_dataset_ids",
    "detection_record",
    "grounding_record",
    "load_predictions",
    "num_prompts",
    "records_to_coco_results",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

PREDICTIONS_FILE = "instances_predictions.pth"
RESULTS_FILE = "results.json"
# Fields of a grounding input that travel with its record (the evaluators key GT on them).
GROUNDING_FIELDS = ("sentence_id", "original_img_id", "dataset_name")


def xyxy_to_xywh(boxes: torch.Tensor, *, plus_one: bool) -> torch.Tensor:
    """(N, 4) xyxy -> (N, 4) xywh; ``w = x2 - x1 + 1`` with the legacy "+1" convention.

    The "+1" is what maskrcnn_benchmark's ``BoxList.convert("xywh")`` does for COCO results
    (``MODEL.FIBER.LEGACY_PLUS_ONE``, data contract section 5). Boxes are not clipped.
    """
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2] + (1.0 if plus_one else 0.0)
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xywh -> (N, 4) xyxy, continuous convention (``x2 = x + w``), float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def num_prompts(inp: Mapping[str, Any]) -> int:
    """Number of forwards the model ran for one input: ``len(prompts)`` or 1."""
    prompts = inp.get("prompts")
    return len(prompts) if prompts else 1


def contiguous_to_dataset_ids(metadata, *, default_offset: int = 0) -> List[int] | None:
    """Contiguous category index -> dataset category id, from ``thing_dataset_id_to_contiguous_id``.

    Returns None when the metadata has no mapping: ids are then ``contiguous + default_offset``
    (0 for COCO-style data, 1 for LVIS, whose detectron2 loader uses ``id - 1``).
    """
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return None
    ids = [0] * len(mapping)
    for dataset_id, contiguous in mapping.items():
        if not 0 <= contiguous < len(mapping):
            raise ValueError(
                f"thing_dataset_id_to_contiguous_id maps {dataset_id} to {contiguous}, outside "
                f"[0, {len(mapping)}): the contiguous ids of a dataset must be 0..N-1"
            )
        ids[contiguous] = int(dataset_id)
    return ids


def _instances_fields(output: Mapping[str, Any]):
    inst = output["instances"].to("cpu")
    return inst.pred_boxes.tensor.float(), inst.scores.float(), inst.pred_classes.long()


def detection_record(
    inp: Mapping[str, Any],
    output: Mapping[str, Any],
    *,
    category_ids: Sequence[int] | None,
    plus_one: bool,
    default_offset: int = 0,
) -> Dict[str, Any]:
    """One image of detection data -> record with dataset category ids.

    Args:
        inp (dict): model input; needs ``image_id`` and ``label_to_category`` (list[int], one
            contiguous category id per label of the prompt, or of all prompts concatenated).
        output (dict): model output with ``instances`` (``pred_boxes`` (N, 4) xyxy at the original
            size, ``scores`` (N,), ``pred_classes`` (N,) label indices).
        category_ids (list[int] or None): contiguous id -> dataset id
            (:func:`contiguous_to_dataset_ids`); None: ``contiguous + default_offset``.
        plus_one (bool): legacy "+1" xyxy -> xywh conversion (COCO path of official checkpoints).
    """
    boxes, scores, labels = _instances_fields(output)
    label_to_category = inp.get("label_to_category")
    if label_to_category is None:
        raise KeyError(
            f"image {inp.get('image_id')}: the input has no 'label_to_category' (one contiguous "
            "category id per prompt label); the evaluation mapper must provide it (data contract "
            "section 2)"
        )
    l2c = torch.as_tensor(list(label_to_category), dtype=torch.long)
    if len(labels) and int(labels.max()) >= len(l2c):
        raise ValueError(
            f"image {inp.get('image_id')}: predicted label {int(labels.max())} but "
            f"label_to_category has {len(l2c)} entries: the prompt(s) and label_to_category "
            "disagree (data contract section 2)"
        )
    contiguous = l2c[labels].tolist()
    if category_ids is None:
        cats = [c + default_offset for c in contiguous]
    else:
        if contiguous and max(contiguous) >= len(category_ids):
            raise ValueError(
                f"image {inp.get('image_id')}: contiguous category {max(contiguous)} but the "
                f"dataset has {len(category_ids)} categories (check label_to_category)"
            )
        cats = [category_ids[c] for c in contiguous]
    xywh = xyxy_to_xywh(boxes, plus_one=plus_one).tolist()
    instances = [
        {"bbox": b, "score": s, "category_id": c} for b, s, c in zip(xywh, scores.tolist(), cats)
    ]
    return {"image_id": inp["image_id"], "instances": instances, "num_prompts": num_prompts(inp)}


def grounding_record(inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
    """One caption of grounding data -> record; ``category_id`` is the 0-based phrase index.

    Boxes are converted without "+1" (the Flickr and RefCOCO evaluators never use it).
    ``num_phrases`` is ``len(tokens_positive_eval)`` (or the rows of ``positive_map``).
    """
    boxes, scores, labels = _instances_fields(output)
    if "tokens_positive_eval" in inp:
        phrases = len(inp["tokens_positive_eval"])
    elif "positive_map" in inp:
        phrases = int(inp["positive_map"].shape[0])
    else:
        raise KeyError(
            f"image {inp.get('image_id')}: a grounding input needs 'tokens_positive_eval' (one "
            "entry per phrase to evaluate) or 'positive_map' (data contract section 2)"
        )
    xywh = xyxy_to_xywh(boxes, plus_one=False).tolist()
    instances = [
        {"bbox": b, "score": s, "category_id": c}
        for b, s, c in zip(xywh, scores.tolist(), labels.tolist())
    ]
    record = {
        "image_id": inp["image_id"],
        "instances": instances,
        "num_prompts": num_prompts(inp),
        "num_phrases": phrases,
    }
    for key in GROUNDING_FIELDS:
        if key in inp:
            record[key] = inp[key]
    return record


def records_to_coco_results(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Records -> COCO results json entries (fresh dicts: pycocotools / lvis mutate them)."""
    return [
        {
            "image_id": r["image_id"],
            "category_id": d["category_id"],
            "bbox": list(d["bbox"]),
            "score": d["score"],
        }
        for r in records
        for d in r["instances"]
    ]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def atomic_save_json(obj: Any, path: str) -> None:
    """Strict JSON (NaN written as null), written atomically."""
    atomic_write_json(_json_safe(obj), path, allow_nan=False)


def _records_from_coco_results(results: List[Any]) -> List[Dict[str, Any]]:
    """A COCO results json (one entry per box) as records, one per image, in first-seen order."""
    records: Dict[Any, Dict[str, Any]] = {}
    for k, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "bbox", "score", "category_id"} <= set(r):
            raise ValueError(
                f"entry #{k} of the COCO results list is not {{'image_id', 'category_id', 'bbox', "
                "'score'}"
            )
        rec = records.setdefault(
            r["image_id"], {"image_id": r["image_id"], "instances": [], "num_prompts": 1}
        )
        rec["instances"].append({f: r[f] for f in ("bbox", "score", "category_id")})
    return list(records.values())


def load_predictions(path: str) -> List[Dict[str, Any]]:
    """Read saved predictions safely and check their shape.

    ``instances_predictions.pth`` (a list of records, data contract section 4) is read with
    ``torch.load(weights_only=True)``: plain containers, numbers, strings and tensors only, never
    pickled objects (there is no opt-in: fiber-det never writes any). A ``.json`` file may hold
    the same list of records, or a COCO results list (``image_id``, ``category_id``, ``bbox``,
    ``score`` per box; detection datasets).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"predictions file {path} not found: it is written by the evaluators as "
            f"<output folder>/{PREDICTIONS_FILE}"
        )
    if path.lower().endswith(".json"):
        with open(path) as f:
            records = json.load(f)
        if isinstance(records, list) and records and "instances" not in records[0]:
            records = _records_from_coco_results(records)
    else:
        try:
            records = load_torch_file(path)
        except ValueError as e:
            raise ValueError(
                f"{path} holds objects other than lists, dicts, numbers, strings and tensors, so "
                f"it is not a fiber-det predictions file (data contract section 4) and is not "
                f"unpickled: {e.__cause__!r}"
            ) from e
    if not isinstance(records, list) or any(
        not isinstance(r, dict) or "image_id" not in r or "instances" not in r for r in records
    ):
        raise ValueError(
            f"{path} is not a list of {{'image_id', 'instances'}} records (data contract section "
            "4); detectron2's own COCOEvaluator writes contiguous ids: re-run the evaluation with "
            "fiber_det.evaluation"
        )
    return records
