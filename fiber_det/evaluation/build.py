"""``build_evaluator``: the fiber-det evaluator of a dataset, from its ``evaluator_type``."""

import os
from typing import Callable, Dict

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from ..data.pair_mapper import PairDatasetMapper
from .coco import D3Evaluator, FIBERCOCOEvaluator
from .flickr import FlickrEvaluator
from .grounding import GroundingRecallEvaluator
from .lvis import LVISEvaluator
from .refexp import RefExpEvaluator
from .retrieval_evaluator import RetrievalEvaluator

__all__ = ["EVALUATOR_TYPES", "build_evaluator"]


def _coco(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    return FIBERCOCOEvaluator(name, output_dir=out, plus_one=cfg.MODEL.FIBER.LEGACY_PLUS_ONE)


def _d3(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    return D3Evaluator(name, output_dir=out, plus_one=cfg.MODEL.FIBER.LEGACY_PLUS_ONE)


def _lvis(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    t = cfg.TEST.FIBER
    return LVISEvaluator(
        name,
        output_dir=out,
        use_fixed_ap=t.LVIS_USE_FIXED_AP,
        topk_per_category=t.LVIS_FIXED_AP_TOPK,
        max_dets_per_image=t.LVIS_MAX_DETS_PER_IMAGE,
    )


def _flickr(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    t = cfg.TEST.FIBER
    return FlickrEvaluator(
        name,
        output_dir=out,
        protocol=t.FLICKR_PROTOCOL,
        topk=t.FLICKR_TOPK,
        iou_threshold=t.GROUNDING_IOU_THRESHOLD,
    )


def _refexp(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    t = cfg.TEST.FIBER
    return RefExpEvaluator(
        name, output_dir=out, topk=t.REFEXP_TOPK, iou_threshold=t.GROUNDING_IOU_THRESHOLD
    )


def _grounding(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    t = cfg.TEST.FIBER
    return GroundingRecallEvaluator(
        name, output_dir=out, topk=t.FLICKR_TOPK, iou_threshold=t.GROUNDING_IOU_THRESHOLD
    )


def _retrieval(cfg: CfgNode, name: str, out: str | None) -> DatasetEvaluator:
    return RetrievalEvaluator(
        name,
        mapper=PairDatasetMapper(cfg, False),
        output_dir=out,
        batch_size=cfg.TEST.COARSE.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        rerank_topk=cfg.MODEL.COARSE.RERANK_TOPK,
    )


# evaluator_type (dataset metadata, data contract section 1) -> builder.
EVALUATOR_TYPES: Dict[str, Callable[[CfgNode, str, str | None], DatasetEvaluator]] = {
    "coco": _coco,
    "odinw": _coco,
    "coco_o": _coco,
    "d3": _d3,
    "lvis": _lvis,
    "flickr30k": _flickr,
    "refexp": _refexp,
    "grounding": _grounding,
    "retrieval": _retrieval,  # stage 1: runs its own loop (RetrievalEvaluator.evaluate_model)
}


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluator of ``dataset_name``, chosen by its metadata ``evaluator_type``.

    Args:
        cfg (CfgNode): config with the FIBER keys (``TEST.FIBER.*``,
            ``MODEL.FIBER.LEGACY_PLUS_ONE``).
        dataset_name (str): a registered dataset.
        output_folder (str or None): where the predictions and results are written; default
            ``OUTPUT_DIR/inference/<dataset_name>``.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise NotImplementedError(
            f"no fiber-det evaluator for dataset {dataset_name!r} (evaluator_type "
            f"{evaluator_type!r}); known types: {sorted(EVALUATOR_TYPES)}. Register the dataset "
            "with one of them in its metadata (importing fiber_det registers the built-in ones)"
        )
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return EVALUATOR_TYPES[evaluator_type](cfg, dataset_name, output_folder)
