"""COCO-style box AP for FIBER's prompt-based detection: COCO, ODinW, COCO-O and D3.

The model labels index the prompt (``pred_classes``); ``label_to_category`` of each input maps
them to contiguous categories and the dataset metadata to dataset category ids. The metrics are
pycocotools' official ``COCOeval`` (bbox), through detectron2's ``COCOEvaluator`` (loading of the
GT json, ``_evaluate_predictions_on_coco``, ``_derive_coco_results``).

Official protocol (microsoft/FIBER
``maskrcnn_benchmark/data/datasets/evaluation/coco/coco_eval.py``): results in xywh with
``w = x2 - x1 + 1`` (``MODEL.FIBER.LEGACY_PLUS_ONE``), 100 detections per image (the model's cap).
COCO-O (Mao et al., ICCV 2023) and D3 (Xie et al., NeurIPS 2023) are standard pycocotools bbox
AP on their own GT files (reference/benchmark-protocols.md).
"""

import contextlib
import io
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .base import RecordEvaluatorMixin
from .records import contiguous_to_dataset_ids, detection_record, records_to_coco_results

__all__ = ["D3_GT_FILE_NAMES", "D3Evaluator", "FIBERCOCOEvaluator"]

logger = logging.getLogger(__name__)

# File names of the D3 GT jsons (shikras/d-cube ``d3_json.zip``, scripts/eval_and_analysis_json.py).
D3_GT_FILE_NAMES = {
    "FULL": "d3_full_annotations.json",
    "PRES": "d3_pres_annotations.json",
    "ABS": "d3_abs_annotations.json",
}


def _load_coco(path: str) -> COCO:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO-format GT json {path} not found")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


class FIBERCOCOEvaluator(RecordEvaluatorMixin, COCOEvaluator):
    """pycocotools box AP (AP, AP50, AP75, APs/m/l and per-category AP) for prompt detection.

    Used for ``evaluator_type`` ``coco``, ``odinw`` and ``coco_o`` (one domain per dataset; the
    six-domain mean and effective robustness are in :mod:`fiber_det.evaluation.summary`).

    Args:
        dataset_name (str): registered dataset with ``json_file`` in its metadata (or
            detectron2-format dicts, converted to COCO json in ``output_dir``).
        distributed (bool): gather from all processes, evaluate on the main one.
        output_dir (str or None): where ``instances_predictions.pth`` and ``results.json`` go.
        plus_one (bool): legacy ``w = x2 - x1 + 1`` (official checkpoints).
        per_category_ap (bool): also report ``AP-<class name>``.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        plus_one: bool = True,
        per_category_ap: bool = True,
    ):
        super().__init__(
            dataset_name,
            tasks=("bbox",),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=False,  # official pycocotools numbers
        )
        self._dataset_name = dataset_name
        self._plus_one = plus_one
        self._per_category_ap = per_category_ap
        self._category_ids: List[int] | None = None
        self._logger = logger
        self.reset()

    def _contiguous_to_dataset_ids(self) -> List[int]:
        # Read at the first image, not in __init__: the dataset loader sets the mapping when the
        # test loader loads the dataset. Without one, the loader's rule: GT category ids sorted.
        if self._category_ids is None:
            self._category_ids = contiguous_to_dataset_ids(self._metadata) or sorted(
                self._coco_api.getCatIds()
            )
        return self._category_ids

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        return detection_record(
            inp, output, category_ids=self._contiguous_to_dataset_ids(), plus_one=self._plus_one
        )

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Args: records (list[dict]): data contract section 4, dataset category ids.

        Returns: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<name>"...}}`` (percent;
        NaN when there is nothing to evaluate).
        """
        records = self._check_detection_records(records)
        self._log_counts(records)
        results = OrderedDict()
        if not self._do_evaluation:
            self._logger.warning(
                "%s: the GT json has no annotations; predictions are saved, nothing is scored",
                self._dataset_name,
            )
            return results
        results["bbox"] = self.box_ap(
            self._coco_api, records_to_coco_results(records), per_category=self._per_category_ap
        )
        return results

    def _check_detection_records(
        self, records: Sequence[Mapping[str, Any]]
    ) -> List[Dict[str, Any]]:
        return self.check_records(
            records,
            known_images=self._coco_api.imgs,
            category_ids=set(self._coco_api.getCatIds()),
            merge_same_image=True,
        )

    def box_ap(
        self, coco_gt: COCO, coco_results: List[Dict[str, Any]], *, per_category: bool
    ) -> Dict[str, float]:
        """pycocotools bbox AP of COCO results against one GT (predictions on images outside
        the GT are dropped with a warning, since ``loadRes`` rejects them)."""
        kept = [r for r in coco_results if r["image_id"] in coco_gt.imgs]
        if len(kept) != len(coco_results):
            dropped = {r["image_id"] for r in coco_results} - set(coco_gt.imgs)
            self._logger.warning(
                "%s: %d predictions on %d images that the GT json does not have were dropped",
                self._dataset_name,
                len(coco_results) - len(kept),
                len(dropped),
            )
        coco_eval = (
            _evaluate_predictions_on_coco(
                coco_gt,
                kept,
                "bbox",
                cocoeval_fn=COCOeval,
                max_dets_per_image=self._max_dets_per_image,
            )
            if kept
            else None  # pycocotools cannot load empty results
        )
        names = None
        if per_category and coco_eval is not None:
            # Names of the GT json (the same online and offline), in COCOeval's category order.
            names = [c["name"] for c in coco_gt.loadCats(coco_eval.params.catIds)]
        return self._derive_coco_results(coco_eval, "bbox", class_names=names)


def d3_gt_files(metadata) -> Dict[str, str]:
    """The D3 GT jsons a dataset is scored on.

    ``metadata.d3_gt_files`` ({"FULL" | "PRES" | "ABS": path}) if set. Otherwise from
    ``metadata.json_file``: the FULL json (``d3_full_annotations.json``) gives FULL and the PRES
    and ABS files found next to it (one run, three numbers, as the D3 toolkit does); a PRES or
    ABS json (whose run queried only those descriptions) gives that subset alone.
    """
    files = metadata.get("d3_gt_files", None)
    if files:
        return dict(files)
    json_file = metadata.get("json_file", None)
    if not json_file:
        return {}
    own = {v: k for k, v in D3_GT_FILE_NAMES.items()}.get(os.path.basename(json_file), "FULL")
    if own != "FULL":
        return {own: json_file}
    root = os.path.dirname(json_file)
    found = {"FULL": json_file}
    for subset in ("PRES", "ABS"):
        path = os.path.join(root, D3_GT_FILE_NAMES[subset])
        if os.path.isfile(path):
            found[subset] = path
    return found


class D3Evaluator(FIBERCOCOEvaluator):
    """D3 (described object detection, Xie et al. NeurIPS 2023): box AP on FULL, PRES and ABS.

    One prediction file is scored against the three GT jsons with pycocotools, whose categories
    are the description ids 1..422 (``thing_dataset_id_to_contiguous_id`` maps them to the
    contiguous ids that ``label_to_category`` uses). Which descriptions each image is queried
    with (intra-scenario: its own group's, one per forward) is decided by the dataset registration
    and the mapper; a box's score is the model's (FIBER's rule: the mean probability over the
    description's tokens, combined with centerness). Official toolkit:
    shikras/d-cube ``scripts/eval_json_example.py``.

    Args:
        gt_files (dict or None): {"FULL" | "PRES" | "ABS": json path}; default
            :func:`d3_gt_files` of the metadata.
        Other args: :class:`FIBERCOCOEvaluator`.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        plus_one: bool = True,
        gt_files: Mapping[str, str] | None = None,
    ):
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            plus_one=plus_one,
            per_category_ap=False,
        )
        self._gt_files = dict(gt_files) if gt_files else d3_gt_files(self._metadata)
        unknown = sorted(set(self._gt_files) - set(D3_GT_FILE_NAMES))
        if unknown or not self._gt_files:
            raise ValueError(
                f"{dataset_name}: D3 GT subsets {sorted(self._gt_files)}; give a json for some of "
                f"{sorted(D3_GT_FILE_NAMES)} (metadata 'd3_gt_files' or 'json_file')"
            )
        self._gt_cache: Dict[str, COCO] = {}

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Returns: ``{"FULL": {...}, "PRES": {...}, "ABS": {...}}`` of AP metrics (percent)."""
        scenario = self._metadata.get("d3_intra_scenario", None)
        scenario = {True: "intra", False: "inter", None: "unknown"}[scenario]
        records = self._check_detection_records(records)
        self._log_counts(records, extra=f"; {scenario}-scenario; GT subsets {list(self._gt_files)}")
        coco_results = records_to_coco_results(records)
        results = OrderedDict()
        for subset in [s for s in D3_GT_FILE_NAMES if s in self._gt_files]:
            path = self._gt_files[subset]
            if subset not in self._gt_cache:
                same = os.path.abspath(path) == os.path.abspath(self._metadata.json_file)
                self._gt_cache[subset] = self._coco_api if same else _load_coco(path)
            results[subset] = self.box_ap(self._gt_cache[subset], coco_results, per_category=False)
        return results
