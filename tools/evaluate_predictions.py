#!/usr/bin/env python
"""Evaluate saved predictions: the same metrics and table as the online evaluation.

    python tools/evaluate_predictions.py --dataset fiber_coco_2017_val \\
        --predictions output/inference/fiber_coco_2017_val/instances_predictions.pth \\
        [--output results.json] [--config-file configs/fiber_b/eval/coco.yaml] [-- KEY VALUE ...]

``instances_predictions.pth`` is what every fiber-det evaluator writes to its output folder (data
contract section 4). The evaluator is chosen by the dataset's ``evaluator_type`` and configured
from ``--config-file`` and the ``KEY VALUE`` overrides after ``--`` (e.g.
``TEST.FIBER.FLICKR_PROTOCOL merged``, ``TEST.FIBER.LVIS_USE_FIXED_AP False``). Several
``--dataset`` / ``--predictions`` pairs are evaluated in order and summarised as in an online run
(ODinW average; COCO-O mean and effective robustness, the clean COCO AP from ``--coco-ap`` or from
a COCO dataset among them). The JSON output maps each dataset to its results (with the counts of
the prediction checks under ``prediction_checks``), plus ``summary``.

Prediction files are read safely (tensors and plain containers, or JSON; never pickled objects).
Records with non-finite boxes or scores, unknown category ids, duplicated images or images of
another dataset are dropped and counted (or refused when nothing of the file fits the dataset).
``--output`` may not be one of the inputs (a predictions file, the config, a dataset's json).
"""

import argparse
import logging
import sys
from collections import OrderedDict
from typing import List, Optional

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

import fiber_det  # noqa: F401  registers the model and the datasets
from fiber_det.config import load_config
from fiber_det.evaluation import (
    build_evaluator,
    format_metric_tables,
    load_predictions,
    summarize_benchmarks,
)
from fiber_det.evaluation.records import atomic_save_json
from fiber_det.utils.io import refuse_overwriting_inputs_or_exit


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", nargs="+", required=True, help="registered dataset name(s)")
    p.add_argument(
        "--predictions", nargs="+", required=True, help="instances_predictions.pth, one per dataset"
    )
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--config-file", default="", help="config of the run (evaluation keys)")
    p.add_argument(
        "--coco-ap",
        type=float,
        default=None,
        help="clean COCO AP of the same model and prompt, for COCO-O effective robustness "
        "(default: TEST.FIBER.COCO_O_CLEAN_AP, or a COCO dataset evaluated here)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if len(args.dataset) != len(args.predictions):
        raise SystemExit(
            f"error: {len(args.dataset)} datasets but {len(args.predictions)} prediction files: "
            "give one --predictions file per --dataset, in the same order, and put KEY VALUE "
            "overrides after '--' (e.g. --predictions p.pth -- TEST.FIBER.FLICKR_PROTOCOL merged)"
        )
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    logger = logging.getLogger("fiber_det.evaluate_predictions")
    cfg = load_config(args.config_file, opts)
    gt_files = [MetadataCatalog.get(n).get("json_file", None) for n in args.dataset]
    refuse_overwriting_inputs_or_exit(
        [*args.predictions, args.config_file, *[f for f in gt_files if isinstance(f, str)]],
        output_files=[args.output],
        fix="give --output a new file, e.g. results.json next to the predictions",
    )
    results = OrderedDict()
    for name, path in zip(args.dataset, args.predictions):
        try:
            records = load_predictions(path)
            logger.info("Loaded %d prediction records for %s from %s", len(records), name, path)
            evaluator = build_evaluator(cfg, name)
            metrics = evaluator.evaluate_predictions(records)
        except (FileNotFoundError, ValueError) as e:  # a bad file or predictions of another set
            raise SystemExit(f"error: {name} with {path}: {e}") from e
        print(f"Evaluation results for {name}:\n{evaluator.format_results(metrics)}")
        results[name] = {**metrics, "prediction_checks": evaluator.prediction_checks}
    coco_ap = args.coco_ap if args.coco_ap is not None else cfg.TEST.FIBER.COCO_O_CLEAN_AP
    summary = summarize_benchmarks(results, coco_clean_ap=coco_ap)
    if summary:
        print(f"Benchmark summary:\n{format_metric_tables(summary)}")
    if args.output:
        atomic_save_json({**results, **({"summary": summary} if summary else {})}, args.output)
        logger.info("Wrote %s", args.output)
    return 0


if __name__ == "__main__":
    setup_logger(name="fiber_det", abbrev_name="fiber_det")  # counts and warnings to stdout
    sys.exit(main())
