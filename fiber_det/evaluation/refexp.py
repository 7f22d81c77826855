"""RefCOCO / RefCOCO+ / RefCOCOg: Precision@1/5/10 with GIoU >= 0.5 (official) and IoU >= 0.5.

Protocol of MDETR's ``RefExpEvaluator`` as kept by microsoft/FIBER (``data/datasets/refexp.py``):
each dataset image is one referring expression with one GT box; all predicted boxes of the image
are sorted by score (ties broken by the larger box coordinates first, as sorting (score, box)
tuples in reverse does there) and the expression counts at k when one of the first k boxes has
generalized IoU >= 0.5 with the GT box. GIoU <= IoU, so the official number is slightly stricter
than the plain-IoU one, reported beside it. Boxes are continuous (no "+1").
"""

from collections import OrderedDict, defaultdict
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from torchvision.ops import box_iou, generalized_box_iou

from .base import FIBEREvaluator
from .grounding import check_topk
from .records import grounding_record, xywh_to_xyxy

__all__ = ["RefExpEvaluator", "refexp_hits"]


def refexp_hits(
    record: Mapping[str, Any], gt_box: np.ndarray, topk: Sequence[int], threshold: float
) -> Tuple[Dict[int, bool], Dict[int, bool]]:
    """(GIoU hits, IoU hits) at each k for one expression.

    Args:
        record (dict): grounding record (all its boxes are candidates, whatever their label).
        gt_box (ndarray): (4,) xyxy GT box.
    """
    inst = record["instances"]
    if not inst:
        miss = {k: False for k in topk}
        return miss, dict(miss)
    boxes = xywh_to_xyxy(np.asarray([d["bbox"] for d in inst], dtype=np.float64))
    order = sorted(range(len(inst)), key=lambda i: (inst[i]["score"], *boxes[i]), reverse=True)
    pred = torch.as_tensor(boxes[order])
    gt = torch.as_tensor(np.asarray(gt_box, dtype=np.float64).reshape(1, 4))
    out = []
    for fn in (generalized_box_iou, box_iou):
        best = np.maximum.accumulate(fn(pred, gt)[:, 0].numpy())
        out.append({k: bool(best[min(k, len(best)) - 1] >= threshold) for k in topk})
    return out[0], out[1]


class RefExpEvaluator(FIBEREvaluator):
    """Referring-expression Precision@k (``evaluator_type`` ``refexp``).

    GT comes from the dataset dicts (MDETR ``finetune_refcoco*_*.json``: one annotation per image,
    ``dataset_name`` "refcoco" / "refcoco+" / "refcocog"), so the offline tool needs the same
    registered dataset.

    Args:
        topk (sequence[int]): k values (1, 5, 10).
        iou_threshold (float): (G)IoU of a hit (0.5).
        Other args: :class:`FIBEREvaluator`.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        topk: Sequence[int] = (1, 5, 10),
        iou_threshold: float = 0.5,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._topk = check_topk(topk)
        if -1 in self._topk:
            raise ValueError("RefExp precision needs positive k values (TEST.FIBER.REFEXP_TOPK)")
        self._threshold = float(iou_threshold)
        self._gt: Dict[Any, Tuple[np.ndarray, str]] | None = None

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        return grounding_record(inp, output)

    def _load_gt(self) -> Dict[Any, Tuple[np.ndarray, str]]:
        if self._gt is not None:
            return self._gt
        gt = {}
        for d in DatasetCatalog.get(self._dataset_name):
            anns = d.get("annotations", [])
            if len(anns) != 1:
                raise ValueError(
                    f"{self._dataset_name} image {d['image_id']} has {len(anns)} annotations; a "
                    "referring-expression image has exactly one (MDETR finetune_refcoco*.json)"
                )
            a = anns[0]
            box = BoxMode.convert(
                list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS
            )
            gt[d["image_id"]] = (
                np.asarray(box, dtype=np.float64),
                str(d.get("dataset_name", self._dataset_name)),
            )
        self._gt = gt
        return gt

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Returns: ``{group: {"P@1", "P@5", "P@10", "P@1_IoU", "P@5_IoU", "P@10_IoU"}}`` (percent;
        group = the images' ``dataset_name``, e.g. "refcoco"). Images without a record count as
        misses (with a warning)."""
        gt = self._load_gt()
        records = self.check_records(
            records,
            known_images=gt,
            groups={i: group for i, (_, group) in gt.items()},
            phrase_labels=True,
        )
        self._log_counts(records, extra=f"; {len(gt)} expressions in the dataset")
        hits = defaultdict(lambda: defaultdict(int))  # group -> metric -> hits
        count = defaultdict(int)
        seen = set()
        for r in records:
            if r["image_id"] in seen or r["image_id"] not in gt:
                continue
            seen.add(r["image_id"])
            box, group = gt[r["image_id"]]
            giou_hits, iou_hits = refexp_hits(r, box, self._topk, self._threshold)
            count[group] += 1
            for k in self._topk:
                hits[group][f"P@{k}"] += int(giou_hits[k])
                hits[group][f"P@{k}_IoU"] += int(iou_hits[k])
        unknown = sum(1 for r in records if r["image_id"] not in gt)
        if unknown:
            self._logger.warning(
                "%d records for images not in %s ignored", unknown, self._dataset_name
            )
        missing = [i for i in gt if i not in seen]
        if missing:
            self._logger.warning(
                "%d expressions have no prediction record: counted as misses", len(missing)
            )
        for i in missing:
            count[gt[i][1]] += 1
        results = OrderedDict()
        for group in sorted(count):
            keys = [f"P@{k}" for k in self._topk] + [f"P@{k}_IoU" for k in self._topk]
            results[group] = OrderedDict(
                (key, 100.0 * hits[group][key] / count[group]) for key in keys
            )
        return results
