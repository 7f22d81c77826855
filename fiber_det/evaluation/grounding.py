"""Phrase-grounding Recall@k: the shared core, and an evaluator with GT from the dataset dicts.

Protocol of MDETR (Kamath et al., ICCV 2021, ``flickr_eval.py``), used by FIBER for Flickr30k
Entities: for each phrase, the predicted boxes labelled with that phrase, sorted by score; the
phrase is recalled at k if one of the first k boxes has IoU >= 0.5 with a GT box of the phrase
("any-box" protocol) or with the box enclosing all its GT boxes ("merged" protocol); k = -1 is the
upper bound (all boxes). IoU is continuous (no "+1"). Ties in score keep the model's order.
"""

import logging
from collections import OrderedDict, defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from tabulate import tabulate
from torchvision.ops import box_iou

from .base import FIBEREvaluator
from .records import grounding_record, xywh_to_xyxy

__all__ = [
    "GroundingRecallEvaluator",
    "RecallTally",
    "phrase_predictions",
    "phrase_recall_hits",
    "recall_key",
]

logger = logging.getLogger(__name__)


def recall_key(k: int) -> str:
    return "UB" if k == -1 else f"R@{k}"


def check_topk(topk: Sequence[int]) -> Tuple[int, ...]:
    topk = tuple(int(k) for k in topk)
    if not topk or any(k == 0 or k < -1 for k in topk):
        raise ValueError(f"recall top-k {list(topk)}: each k must be positive, or -1 (all boxes)")
    return topk


def phrase_recall_hits(
    pred_boxes: np.ndarray, gt_boxes: np.ndarray, topk: Sequence[int], iou_threshold: float
) -> Dict[int, bool]:
    """Is the phrase found among the first k predictions, for each k?

    Args:
        pred_boxes (ndarray): (P, 4) xyxy, sorted by decreasing score (P may be 0).
        gt_boxes (ndarray): (G, 4) xyxy GT boxes of the phrase.
        topk (sequence[int]): the k values; -1 means all predictions (upper bound).
        iou_threshold (float): minimum IoU of a hit.
    """
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return {k: False for k in topk}
    iou = box_iou(
        torch.as_tensor(pred_boxes, dtype=torch.float64),
        torch.as_tensor(gt_boxes, dtype=torch.float64),
    )
    best = np.maximum.accumulate(iou.max(dim=1).values.numpy())  # best IoU among the first i+1
    last = len(best) - 1
    return {
        k: bool(best[last if k == -1 else min(k, len(best)) - 1] >= iou_threshold) for k in topk
    }


def phrase_predictions(record: Mapping[str, Any], num_phrases: int) -> List[np.ndarray]:
    """The (P_j, 4) xyxy boxes of each phrase j of a record, sorted by decreasing score (stable)."""
    per_phrase: List[List[List[float]]] = [[] for _ in range(num_phrases)]
    instances = record["instances"]
    for i in sorted(range(len(instances)), key=lambda i: -instances[i]["score"]):
        c = int(instances[i]["category_id"])
        if not 0 <= c < num_phrases:
            raise ValueError(
                f"image {record['image_id']}: a box is labelled phrase {c} but the caption has "
                f"{num_phrases} phrases to evaluate (the predictions do not match the GT)"
            )
        per_phrase[c].append(instances[i]["bbox"])
    return [xywh_to_xyxy(np.asarray(b, dtype=np.float64)) for b in per_phrase]


class RecallTally:
    """Hits and totals per k and per phrase category ("all" and, for Flickr, phrase types)."""

    def __init__(self, topk: Sequence[int]):
        self.topk = tuple(topk)
        self.hits: Dict[int, Dict[str, int]] = {k: defaultdict(int) for k in self.topk}
        self.total: Dict[int, Dict[str, int]] = {k: defaultdict(int) for k in self.topk}

    def add(self, hits: Mapping[int, bool], categories: Iterable[str] = ("all",)) -> None:
        categories = list(categories)
        for k in self.topk:
            for c in categories:
                self.total[k][c] += 1
                self.hits[k][c] += int(hits[k])

    def categories(self) -> List[str]:
        cats = sorted({c for k in self.topk for c in self.total[k]} - {"all"})
        return ["all"] + cats

    def metrics(self) -> "OrderedDict[str, float]":
        """``R@k`` (all phrases) then ``R@k-<category>``, in percent (NaN without phrases)."""
        out = OrderedDict()
        for c in self.categories():
            for k in self.topk:
                total = self.total[k][c]
                value = 100.0 * self.hits[k][c] / total if total else float("nan")
                out[recall_key(k) if c == "all" else f"{recall_key(k)}-{c}"] = value
        return out


def recall_table(metrics: Mapping[str, float], topk: Sequence[int]) -> str:
    """Rows R@k, columns "all" and each category (as the official PrettyTable)."""
    cats = ["all"] + sorted({k.split("-", 1)[1] for k in metrics if "-" in k})
    rows = []
    for k in topk:
        key = recall_key(k)
        rows.append(
            [key] + [metrics.get(key if c == "all" else f"{key}-{c}", float("nan")) for c in cats]
        )
    return tabulate(rows, headers=["Recall@k"] + cats, tablefmt="pipe", floatfmt=".2f")


class GroundingRecallEvaluator(FIBEREvaluator):
    """Phrase-grounding Recall@k with GT from the dataset dicts (``evaluator_type`` ``grounding``).

    For MDETR-format data (and the synthetic demo): phrase j of an image is
    ``tokens_positive_eval[j]``; its GT boxes are the annotations whose ``tokens_positive`` spans
    overlap the phrase's spans. Any-box protocol.

    Args:
        topk (sequence[int]): k values (-1: upper bound).
        iou_threshold (float): IoU of a hit.
        Other args: :class:`FIBEREvaluator`.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        topk: Sequence[int] = (1, 5, 10, -1),
        iou_threshold: float = 0.5,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._topk = check_topk(topk)
        self._iou_threshold = float(iou_threshold)
        self._gt: Dict[Any, List[np.ndarray]] | None = None

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        return grounding_record(inp, output)

    def format_results(self, results: Mapping[str, Mapping[str, float]]) -> str:
        return "\n".join(f"{task}:\n{recall_table(m, self._topk)}" for task, m in results.items())

    def _load_gt(self) -> Dict[Any, List[np.ndarray]]:
        if self._gt is None:
            self._gt = {
                d["image_id"]: _phrase_gt_from_dict(d)
                for d in DatasetCatalog.get(self._dataset_name)
            }
        return self._gt

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Returns: ``{"grounding": {"R@1", ..., "UB"}}`` (percent)."""
        gt = self._load_gt()
        records = self.check_records(records, known_images=gt, phrase_labels=True)
        num_phrases = sum(1 for v in gt.values() for b in v if len(b))
        self._log_counts(records, extra=f"; {num_phrases} GT phrases with boxes")
        tally = RecallTally(self._topk)
        seen = set()
        for r in records:
            if r["image_id"] in seen or r["image_id"] not in gt:
                continue
            seen.add(r["image_id"])
            phrases = gt[r["image_id"]]
            for boxes, preds in zip(phrases, phrase_predictions(r, len(phrases))):
                if len(boxes):  # a phrase without GT box is not evaluated (as MDETR)
                    tally.add(phrase_recall_hits(preds, boxes, self._topk, self._iou_threshold))
        missing = [i for i in gt if i not in seen]
        if missing:
            self._logger.warning(
                "%d images have no predictions: their phrases count as misses", len(missing)
            )
        for i in missing:
            for boxes in gt[i]:
                if len(boxes):
                    tally.add({k: False for k in self._topk})
        return OrderedDict(grounding=tally.metrics())


def _spans_overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _phrase_gt_from_dict(d: Mapping[str, Any]) -> List[np.ndarray]:
    phrases = d.get("tokens_positive_eval")
    if phrases is None:
        raise KeyError(
            f"image {d.get('image_id')}: grounding dataset dicts need 'tokens_positive_eval' "
            "(data contract section 1)"
        )
    out = []
    for spans in phrases:
        boxes = [
            BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
            for a in d.get("annotations", [])
            if _spans_overlap(a.get("tokens_positive", []), spans)
        ]
        out.append(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return out
