"""Pictures of the demo: held-out images, ground truth next to the trained model's predictions.

Per image, two pictures: *detection* (the prompt is every category; boxes scoring at least
``DETECTION_THRESHOLD``, and of boxes that overlap, only the best-scoring label, for legibility:
the evaluation keeps them all) and *grounding* (the image's caption with its phrases; the best
box of each phrase, the one Recall@1 scores). ``overview.jpg`` has both pictures of the first
image.
"""

import logging
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from torchvision.ops import nms

from ..data.utils import read_image
from ..predictor import FIBERPrediction, FIBERPredictor
from ..text import Prompt, span_text
from .visualize import draw_boxes, draw_prediction, save_image, side_by_side, stack_rows

__all__ = ["DETECTION_THRESHOLD", "best_box_per_label", "best_label_per_box", "write_demo_pictures"]

logger = logging.getLogger(__name__)

DETECTION_THRESHOLD = 0.4
SCALE = 2.0  # the synthetic images are small: draw at twice their size


def best_box_per_label(prediction: FIBERPrediction) -> FIBERPrediction:
    """The highest-scoring box of each label (the box Recall@1 looks at)."""
    keep = []
    for label in range(len(prediction.label_names)):
        idx = (prediction.label_ids == label).nonzero().flatten()
        if len(idx):
            keep.append(int(idx[prediction.scores[idx].argmax()]))
    return _subset(prediction, keep)


def best_label_per_box(
    prediction: FIBERPrediction, threshold: float, iou: float = 0.6
) -> FIBERPrediction:
    """Boxes scoring at least ``threshold``; of overlapping boxes (IoU > ``iou``, any label), the
    best-scoring one (class-agnostic NMS, for pictures)."""
    above = (prediction.scores >= threshold).nonzero().flatten()
    keep = nms(prediction.boxes[above].float(), prediction.scores[above].float(), iou)
    return _subset(prediction, above[keep].tolist())


def _subset(prediction: FIBERPrediction, keep: Sequence[int]) -> FIBERPrediction:
    keep_t = torch.as_tensor(list(keep), dtype=torch.long)
    return FIBERPrediction(
        boxes=prediction.boxes[keep_t],
        scores=prediction.scores[keep_t],
        label_ids=prediction.label_ids[keep_t],
        labels=[prediction.labels[i] for i in keep_t.tolist()],
        label_names=prediction.label_names,
        captions=prediction.captions,
        image_size=prediction.image_size,
    )


def _xyxy(annotations: Sequence[Dict]) -> np.ndarray:
    boxes = [
        BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
        for a in annotations
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _detection_picture(predictor, rgb, record, classes) -> np.ndarray:
    annos = record.get("annotations", [])
    gt = draw_boxes(
        rgb,
        _xyxy(annos),
        [classes[a["category_id"]] for a in annos],
        [a["category_id"] for a in annos],
        title="ground truth",
        scale=SCALE,
    )
    pred = predictor(np.ascontiguousarray(rgb[:, :, ::-1]), list(classes))
    pred = best_label_per_box(pred, DETECTION_THRESHOLD)
    shown = draw_prediction(rgb, pred, title="prediction", scale=SCALE)
    return side_by_side(
        [gt, shown],
        caption=f"prompt: the {len(classes)} categories; best label per box, score >= "
        f"{DETECTION_THRESHOLD}",
    )


def _phrase_of(annotation: Dict, phrases: Sequence[Sequence[Sequence[int]]]) -> int:
    spans = annotation.get("tokens_positive", [])
    for j, group in enumerate(phrases):
        if any(s1 < e2 and s2 < e1 for s1, e1 in spans for s2, e2 in group):
            return j
    return -1


def _grounding_picture(predictor, rgb, entry) -> np.ndarray:
    caption, phrases = entry["caption"], entry["tokens_positive_eval"]
    names = [span_text(caption, g) for g in phrases]
    annos = [a for a in entry.get("annotations", []) if _phrase_of(a, phrases) >= 0]
    ids = [_phrase_of(a, phrases) for a in annos]
    gt = draw_boxes(
        rgb, _xyxy(annos), [names[j] for j in ids], ids, title="ground truth", scale=SCALE
    )
    prompt = Prompt(caption=caption, spans=[[tuple(s) for s in g] for g in phrases], names=names)
    pred = best_box_per_label(predictor(np.ascontiguousarray(rgb[:, :, ::-1]), prompt))
    shown = draw_prediction(rgb, pred, title="prediction: best box per phrase", scale=SCALE)
    return side_by_side([gt, shown], caption=f'caption: "{caption}"')


def write_demo_pictures(
    cfg, model: torch.nn.Module, names: Dict[str, str], out_dir: str, num_images: int
) -> List[str]:
    """Draw the first ``num_images`` held-out images; returns the files written.

    Args:
        cfg: the demo config (tokenizer, resize, prompt settings).
        model: the trained ``FIBERDetector``.
        names: registered synthetic dataset names (:func:`synthetic_dataset_names`).
        out_dir: output folder.
        num_images: images to draw.
    """
    if num_images <= 0:
        return []
    os.makedirs(out_dir, exist_ok=True)
    was_training = model.training
    predictor = FIBERPredictor(cfg, model=model, batch_size=1)
    records = DatasetCatalog.get(names["detection_val"])[:num_images]  # sets thing_classes
    classes = MetadataCatalog.get(names["detection_val"]).thing_classes
    grounding = {}
    for entry in DatasetCatalog.get(names["grounding_val"]):
        grounding.setdefault(entry.get("original_img_id", entry["image_id"]), entry)
    written, overview = [], []
    for k, record in enumerate(records):
        rgb = read_image(record["file_name"], "RGB")
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        pictures = [("detection", _detection_picture(predictor, rgb, record, classes))]
        entry = grounding.get(record["image_id"])
        if entry is not None:
            pictures.append(("grounding", _grounding_picture(predictor, rgb, entry)))
        for kind, picture in pictures:
            path = os.path.join(out_dir, f"{stem}_{kind}.jpg")
            save_image(picture, path)
            written.append(path)
            if k == 0:
                overview.append(picture)
    if overview:
        path = os.path.join(out_dir, "overview.jpg")
        save_image(stack_rows(overview), path, quality=85)
        written.append(path)
    model.train(was_training)
    logger.info("wrote %d pictures to %s", len(written), out_dir)
    return written
