"""Evaluators of fiber-det: COCO / ODinW / COCO-O / D3 box AP, LVIS Fixed AP, Flickr30k Entities
Recall@k, RefCOCO/+/g Precision@k, and the benchmark summaries (ODinW average, COCO-O effective
robustness). Every evaluator is a detectron2 ``DatasetEvaluator`` whose metrics come from saved
prediction records, so ``tools/evaluate_predictions.py`` reproduces an online run exactly.
Stage 1: image-text retrieval Recall@k from a score matrix (``retrieval``, offline with
``tools/evaluate_retrieval.py``), online with ``RetrievalEvaluator``.
"""

from .base import FIBEREvaluator, RecordEvaluatorMixin, format_metric_tables
from .build import EVALUATOR_TYPES, build_evaluator
from .coco import D3Evaluator, FIBERCOCOEvaluator
from .flickr import FlickrEvaluator
from .flickr_entities import load_flickr_entities, parse_annotation_xml, parse_sentences_file
from .grounding import GroundingRecallEvaluator
from .lvis import LVISEvaluator, evaluate_lvis_boxes
from .records import PREDICTIONS_FILE, RESULTS_FILE, load_predictions
from .refexp import RefExpEvaluator
from .retrieval import (
    RETRIEVAL_KEYS,
    load_retrieval_scores,
    retrieval_ranks,
    retrieval_recall,
    save_retrieval_scores,
)
from .retrieval_evaluator import RetrievalEvaluator
from .summary import (
    coco_o_summary,
    effective_robustness,
    log_benchmark_summary,
    odinw_summary,
    summarize_benchmarks,
)

__all__ = [
    "D3Evaluator",
    "EVALUATOR_TYPES",
    "FIBERCOCOEvaluator",
    "FIBEREvaluator",
    "FlickrEvaluator",
    "GroundingRecallEvaluator",
    "LVISEvaluator",
    "PREDICTIONS_FILE",
    "RESULTS_FILE",
    "RETRIEVAL_KEYS",
    "RecordEvaluatorMixin",
    "RefExpEvaluator",
    "RetrievalEvaluator",
    "build_evaluator",
    "coco_o_summary",
    "effective_robustness",
    "evaluate_lvis_boxes",
    "format_metric_tables",
    "load_flickr_entities",
    "load_predictions",
    "load_retrieval_scores",
    "log_benchmark_summary",
    "odinw_summary",
    "parse_annotation_xml",
    "parse_sentences_file",
    "retrieval_ranks",
    "retrieval_recall",
    "save_retrieval_scores",
    "summarize_benchmarks",
]
