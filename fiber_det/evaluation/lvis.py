"""LVIS box AP: Fixed AP (default) and standard LVIS AP, working with numpy 2.

Fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details", 2021): keep the top ``topk`` (10,000) detections of each category over the whole dataset
and put no cap on detections per image; the official FIBER LVIS protocol
(``LvisEvaluatorFixedAP(topk=10000)`` in microsoft/FIBER ``evaluation/lvis/lvis_eval.py``). The
standard LVIS AP keeps the top 300 detections per image. With chunked prompts (LVIS in 31 prompts of
40 names) the outputs of all chunks of an image are merged before either rule is applied. Boxes are
converted to xywh without "+1", as the official LVIS path does.

``lvis`` 0.5.3 (its latest release) calls ``np.float`` in ``LVISEval.accumulate``, removed in numpy
1.24; :func:`lvis_eval_class` replaces that method with a vectorised implementation of the same
computation (detectron2's ``LVISEvaluator`` fails the same way, so it is not used).
"""

import datetime
import functools
import logging
import math
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog

from .base import FIBEREvaluator, ungroup
from .records import contiguous_to_dataset_ids, detection_record, records_to_coco_results

__all__ = [
    "LVIS_METRICS",
    "LVISEvaluator",
    "evaluate_lvis_boxes",
    "lvis_eval_class",
    "merge_records_by_image",
    "prune_top_k_per_category",
    "top_k_per_category",
]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _lvis():
    try:
        import lvis
    except ImportError as e:
        raise ImportError("LVIS evaluation needs the 'lvis' package: pip install lvis") from e
    return lvis


def _precision_at_recalls(
    tp: np.ndarray, fp: np.ndarray, num_gt: int, rec_thrs: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at fixed recalls, COCO / LVIS style.

    Args:
        tp, fp (ndarray): (T, N) cumulative true / false positives over detections sorted by score
            (T IoU thresholds).
        num_gt (int): non-ignored GT boxes.
        rec_thrs (ndarray): (R,) recall levels.

    Returns:
        precision (T, R) (0 beyond the highest recall reached) and recall (T,).
    """
    num_thrs, num_dets = tp.shape
    if num_dets == 0:
        return np.zeros((num_thrs, len(rec_thrs))), np.zeros(num_thrs)
    rc = tp / num_gt
    pr = tp / (fp + tp + np.spacing(1))
    # Precision envelope: the best precision at any recall >= this one.
    pr = np.flip(np.maximum.accumulate(np.flip(pr, axis=1), axis=1), axis=1)
    precision = np.zeros((num_thrs, len(rec_thrs)))
    for t in range(num_thrs):
        idx = np.searchsorted(rc[t], rec_thrs, side="left")
        valid = idx < num_dets
        precision[t, valid] = pr[t, idx[valid]]
    return precision, rc[:, -1]


@functools.cache
def lvis_eval_class():
    """``LVISEvalNumpy2``, built on first use (importing ``lvis`` configures the root logger, and
    ``lvis`` is an optional dependency)."""
    lvis = _lvis()

    class LVISEvalNumpy2(lvis.LVISEval):
        """``lvis.LVISEval`` with an ``accumulate`` that works with numpy >= 1.24.

        Same computation as lvis 0.5.3 (per category and area range: detections of all images
        sorted by score, cumulative TP/FP over non-ignored detections, precision envelope, precision
        at 101 recall levels), without the removed ``np.float`` alias.
        """

        def accumulate(self) -> None:
            p = self.params
            cat_ids = p.cat_ids if p.use_cats else [-1]
            num_thrs, num_rec = len(p.iou_thrs), len(p.rec_thrs)
            num_cats, num_areas, num_imgs = len(cat_ids), len(p.area_rng), len(p.img_ids)
            precision = -np.ones((num_thrs, num_rec, num_cats, num_areas))
            recall = -np.ones((num_thrs, num_cats, num_areas))
            for k in range(num_cats):
                for a in range(num_areas):
                    start = (k * num_areas + a) * num_imgs
                    evals = [e for e in self.eval_imgs[start : start + num_imgs] if e is not None]
                    if not evals:
                        continue
                    gt_ignore = np.concatenate([e["gt_ignore"] for e in evals])
                    num_gt = int(np.count_nonzero(gt_ignore == 0))
                    if num_gt == 0:
                        continue
                    scores = np.concatenate([np.asarray(e["dt_scores"], float) for e in evals])
                    order = np.argsort(-scores, kind="mergesort")
                    matched = np.concatenate([e["dt_matches"] for e in evals], 1)[:, order] != 0
                    ignored = np.concatenate([e["dt_ignore"] for e in evals], 1)[:, order] != 0
                    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
                    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
                    prec, rec = _precision_at_recalls(tp, fp, num_gt, p.rec_thrs)
                    precision[:, :, k, a] = prec
                    recall[:, k, a] = rec
            self.eval = {
                "params": p,
                "counts": [num_thrs, num_rec, num_cats, num_areas],
                "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                "precision": precision,
                "recall": recall,
            }

    return LVISEvalNumpy2


def top_k_per_category(results: Sequence[Dict[str, Any]], topk: int) -> List[Dict[str, Any]]:
    """The ``topk`` highest-scoring results of each category over the whole dataset (ties keep
    the input order, as the official stable sort does)."""
    by_cat: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_cat[r["category_id"]].append(r)
    kept = []
    for anns in by_cat.values():
        kept.extend(sorted(anns, key=lambda r: -r["score"])[:topk])
    return kept


def _top_by_score(instances: List[Dict[str, Any]], k: int) -> List[Dict[str, Any]]:
    if len(instances) <= k:
        return instances
    keep = set(sorted(range(len(instances)), key=lambda i: -instances[i]["score"])[:k])
    return [d for i, d in enumerate(instances) if i in keep]


def prune_top_k_per_category(records: List[Dict[str, Any]], topk: int) -> int:
    """Keep, in place, only the ``topk`` best-scoring instances of each category over ``records``
    (ties: earlier first; the kept instances keep their order). Returns the instances kept.

    Fixed AP of the pruned records equals that of the full ones: a detection in the top k of all
    records is in the top k of any subset holding it, so pruning per process, and again after
    gathering, loses nothing.
    """
    by_cat: Dict[int, List[Tuple[float, int, int]]] = defaultdict(list)
    for r, rec in enumerate(records):
        for i, d in enumerate(rec["instances"]):
            by_cat[d["category_id"]].append((-d["score"], r, i))
    keep = set()
    for entries in by_cat.values():
        entries.sort()  # (-score, record, index): stable in record order
        keep.update((r, i) for _, r, i in entries[:topk])
    for r, rec in enumerate(records):
        rec["instances"] = [d for i, d in enumerate(rec["instances"]) if (r, i) in keep]
    return len(keep)


def merge_records_by_image(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One record per image: the instances of records with the same ``image_id`` (e.g. one
    record per prompt chunk) are concatenated, in order."""
    merged: Dict[Any, Dict[str, Any]] = OrderedDict()
    for r in records:
        m = merged.setdefault(
            r["image_id"], {"image_id": r["image_id"], "instances": [], "num_prompts": 0}
        )
        m["instances"].extend(r["instances"])
        m["num_prompts"] += int(r.get("num_prompts", 1))
    return list(merged.values())


def evaluate_lvis_boxes(
    lvis_gt,
    results: List[Dict[str, Any]],
    *,
    fixed_ap: bool = True,
    topk_per_category: int = 10000,
    max_dets_per_image: int = 300,
) -> Dict[str, float]:
    """LVIS box AP of LVIS results (``image_id``, ``category_id``, xywh ``bbox``, ``score``).

    Args:
        lvis_gt (lvis.LVIS): GT.
        results (list[dict]): detections (fresh dicts: lvis mutates them).
        fixed_ap (bool): Fixed AP (top ``topk_per_category`` per category, no per-image cap);
            False: standard LVIS AP (top ``max_dets_per_image`` per image).

    Returns: {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"} in percent; NaN for
    a metric with no GT (e.g. no rare category) or when there are no detections.
    """
    lvis = _lvis()
    if fixed_ap:
        results = top_k_per_category(results, topk_per_category)
        max_dets = -1
    else:
        max_dets = max_dets_per_image
    if not results:
        logger.warning("No LVIS detections to evaluate: every metric is NaN")
        return {m: float("nan") for m in LVIS_METRICS}
    unknown = {r["image_id"] for r in results} - set(lvis_gt.imgs)
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted image ids are not in the LVIS GT json (e.g. "
            f"{sorted(unknown)[:5]}): the predictions and the dataset's json_file do not match"
        )
    lvis_dt = lvis.LVISResults(lvis_gt, results, max_dets=max_dets)
    lvis_eval = lvis_eval_class()(lvis_gt, lvis_dt, iou_type="bbox")
    lvis_eval.params.max_dets = max_dets
    lvis_eval.run()
    out = {}
    for m in LVIS_METRICS:
        v = float(lvis_eval.results[m])
        out[m] = v * 100 if v >= 0 else math.nan
    return out


class LVISEvaluator(FIBEREvaluator):
    """LVIS box AP for chunked-prompt detection (``evaluator_type`` ``lvis``).

    Args:
        dataset_name (str): registered LVIS dataset with ``json_file`` (LVIS v1 format: images
            with ``neg_category_ids`` / ``not_exhaustive_category_ids``, categories with
            ``frequency``) in its metadata.
        use_fixed_ap (bool): Fixed AP (default, official); False: standard LVIS AP.
        topk_per_category (int): Fixed-AP detections kept per category (10,000).
        max_dets_per_image (int): standard-AP cap per image (300).
        Other args: :class:`FIBEREvaluator`.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        use_fixed_ap: bool = True,
        topk_per_category: int = 10000,
        max_dets_per_image: int = 300,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        if topk_per_category <= 0 or max_dets_per_image <= 0:
            raise ValueError(
                f"LVIS topk_per_category ({topk_per_category}) and max_dets_per_image "
                f"({max_dets_per_image}) must be positive (TEST.FIBER.LVIS_*)"
            )
        self._metadata = MetadataCatalog.get(dataset_name)
        if not self._metadata.get("json_file", None):
            raise ValueError(
                f"LVIS dataset {dataset_name} has no json_file in its metadata: register it with "
                "the LVIS annotation json (fiber_det.data)"
            )
        self._use_fixed_ap = use_fixed_ap
        self._topk = topk_per_category
        self._max_dets = max_dets_per_image
        self._category_ids: List[int] | None = None
        self._lvis_gt = None

    # Buffered instances that trigger a Fixed-AP pruning (then twice what the pruning kept).
    _PRUNE_MIN = 2_000_000

    def reset(self) -> None:
        super().reset()
        self._buffered = 0
        self._prune_at = self._PRUNE_MIN

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]):
        """Records as the other evaluators, bounded in memory without changing the metric:
        standard AP keeps each record's top ``max_dets_per_image`` (an image's top 300 are in the
        top 300 of the record holding them); Fixed AP prunes to the top ``topk_per_category`` per
        category whenever the buffer grows large (:func:`prune_top_k_per_category`). The saved
        predictions are the pruned ones: enough to recompute the same mode offline."""
        for inp, out in ungroup(inputs, outputs):
            rec = self.to_record(inp, out)
            if not self._use_fixed_ap:
                rec["instances"] = _top_by_score(rec["instances"], self._max_dets)
            self._records.append(rec)
            self._buffered += len(rec["instances"])
        if self._use_fixed_ap and self._buffered > self._prune_at:
            self._buffered = prune_top_k_per_category(self._records, self._topk)
            self._prune_at = max(2 * self._buffered, self._PRUNE_MIN)

    def _gather_records(self) -> List[Dict[str, Any]] | None:
        # Fixed AP: prune before gathering (less to send) and after (the saved file).
        if self._use_fixed_ap:
            prune_top_k_per_category(self._records, self._topk)
        records = super()._gather_records()
        if records is not None and self._use_fixed_ap:
            prune_top_k_per_category(records, self._topk)
        return records

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        # The mapping is set in the metadata when the dataset is loaded (after __init__); without
        # one, detectron2's LVIS convention: dataset id = contiguous id + 1.
        if self._category_ids is None:
            self._category_ids = contiguous_to_dataset_ids(self._metadata)
        return detection_record(
            inp, output, category_ids=self._category_ids, plus_one=False, default_offset=1
        )

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Returns: ``{"bbox": {AP, AP50, AP75, APs, APm, APl, APr, APc, APf}}`` (percent)."""
        if self._lvis_gt is None:
            self._lvis_gt = _lvis().LVIS(self._metadata.json_file)
        records = self.check_records(
            records,
            known_images=self._lvis_gt.imgs,
            category_ids=self._lvis_gt.cats,
            merge_same_image=True,
        )
        merged = merge_records_by_image(records)
        mode = (
            f"Fixed AP, top {self._topk} per category"
            if self._use_fixed_ap
            else f"standard AP, top {self._max_dets} per image"
        )
        self._log_counts(merged, extra=f"; {mode}")
        results = records_to_coco_results(merged)
        if self._use_fixed_ap:
            counts = defaultdict(int)
            for r in results:
                counts[r["category_id"]] += 1
            short = sum(1 for c in self._lvis_gt.cats if counts[c] < self._topk)
            self._logger.info(
                "%d of %d categories have fewer than %d detections (more detections per category "
                "can only raise Fixed AP)",
                short,
                len(self._lvis_gt.cats),
                self._topk,
            )
        box = evaluate_lvis_boxes(
            self._lvis_gt,
            results,
            fixed_ap=self._use_fixed_ap,
            topk_per_category=self._topk,
            max_dets_per_image=self._max_dets,
        )
        return OrderedDict(bbox=box)
