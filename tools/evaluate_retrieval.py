#!/usr/bin/env python
"""Image-text retrieval Recall@k from a saved score matrix (offline, no model).

    python tools/evaluate_retrieval.py --scores output/inference/NAME/scores_itm.safetensors \\
        [--ir-scores output/inference/NAME/scores_itm_ir.safetensors] [--output results.json] \\
        [--ks 1 5 10]

The score file is what ``fiber_det.evaluation.save_retrieval_scores`` writes (a safetensors file:
the (num_images, num_texts) matrix, the image of each text, metadata). Prints the IR / TR table
(``fiber_det.evaluation.retrieval``: the official FIBER recall) and optionally writes the metrics
as JSON (atomically; never over the score file). ITM re-ranking of the ITC top-k
(``MODEL.COARSE.RERANK_TOPK``) gives two files: ``scores_itm`` ranks the texts (TR) and
``scores_itm_ir`` the images (IR); pass the second as ``--ir-scores``.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

import torch
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from fiber_det.evaluation.records import atomic_save_json
from fiber_det.evaluation.retrieval import load_retrieval_scores, retrieval_recall

logger = logging.getLogger("fiber_det.evaluate_retrieval")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scores", required=True, help="retrieval score file (.safetensors)")
    p.add_argument(
        "--ir-scores",
        default=None,
        help="separate score file for IR (re-ranked ITM: scores_itm_ir.safetensors)",
    )
    p.add_argument("--output", default=None, help="write the metrics (and metadata) as JSON here")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="k of Recall@k")
    return p


def format_table(metrics: Dict[str, float], ks: List[int]) -> str:
    """IR and TR rows, one column per R@k and the mean."""
    rows = []
    for task, label in (("ir", "IR (text -> image)"), ("tr", "TR (image -> text)")):
        rows.append([label] + [metrics[f"{task}_r{k}"] for k in ks] + [metrics[f"{task}_mean"]])
    headers = ["task"] + [f"R@{k}" for k in ks] + ["mean"]
    table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f")
    return f"{table}\nr_mean: {metrics['r_mean']:.2f}"


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _load_ir_scores(args, meta: Dict, txt2img) -> Optional[torch.Tensor]:
    """The --ir-scores matrix (checked against the main file), or None. A main file that only
    ranks texts (re-ranked ITM) is refused without it."""
    if args.ir_scores is None:
        if meta.get("ranks") == "tr":
            companion = os.path.join(os.path.dirname(args.scores), meta.get("ir_scores", "?"))
            raise SystemExit(
                f"error: {args.scores} holds re-ranked ITM scores that only rank the texts of "
                f"each image (TR); pass the IR file too: --ir-scores {companion}"
            )
        return None
    ir_scores, ir_txt2img, ir_meta = load_retrieval_scores(args.ir_scores)
    if not torch.equal(ir_txt2img, txt2img) or ir_meta.get("dataset") != meta.get("dataset"):
        raise SystemExit(
            f"error: --ir-scores {args.ir_scores} is not from the evaluation of {args.scores} "
            "(other dataset or texts)"
        )
    return ir_scores


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.output and os.path.exists(args.scores) and _same_file(args.scores, args.output):
        raise SystemExit(
            f"error: --output {args.output} is the score file itself: choose another path "
            "(e.g. results.json)"
        )
    for given in filter(None, [args.ir_scores]):
        if args.output and os.path.exists(given) and _same_file(given, args.output):
            raise SystemExit(f"error: --output {args.output} is --ir-scores itself")
    scores, txt2img, meta = load_retrieval_scores(args.scores)
    logger.info(
        "Loaded %d x %d scores from %s (%s)", *scores.shape, args.scores, meta or "no metadata"
    )
    ir_scores = _load_ir_scores(args, meta, txt2img)
    metrics = retrieval_recall(scores, txt2img, ks=args.ks, ir_scores=ir_scores)
    name = meta.get("dataset", os.path.basename(args.scores))
    print(
        f"Retrieval results for {name} ({scores.shape[0]} images, {scores.shape[1]} texts):\n"
        f"{format_table(metrics, args.ks)}"
    )
    if args.output:
        atomic_save_json({"metrics": metrics, "meta": meta}, args.output)
        logger.info("Wrote %s", args.output)
    return 0


if __name__ == "__main__":
    setup_logger(name="fiber_det", abbrev_name="fiber_det")
    sys.exit(main())
