#!/usr/bin/env python
"""Export a FIBER detector to ONNX (one graph per padded input size).

    python tools/export_onnx.py --config-file output/demo/config.yaml \\
        --weights output/demo/model_final.pth --output output/fiber.onnx --height 256 --width 320

    # fixed vocabulary: the text side is computed now and stored in the graph
    python tools/export_onnx.py --config-file configs/fiber_b/coco_finetune.yaml \\
        --weights fiber_coco.pth --output output/coco_800x1216.onnx --height 800 --width 1216 \\
        --vocabulary person bicycle car

Graph inputs: ``image`` (1, 3, H, W) float32 in INPUT.FORMAT order 0..255 (the resized image at
the top-left), ``image_size`` (2,) int64 (h, w before padding) and, without --vocabulary,
``input_ids`` / ``attention_mask`` (1, T) int64 and ``positive_map`` (C, T) float32 (T and C
dynamic). Outputs: every anchor's decoded ``boxes`` (P, A, 4), ``label_scores`` (P, A, C) and
``centerness`` (P, A); fiber_det.export.OnnxPredictor (tools/demo.py --onnx, tools/serve.py
--onnx) applies the thresholds, class-wise NMS and the cap. Config overrides (KEY VALUE ...)
come last; with --vocabulary, the first argument that looks like a config key (e.g.
MODEL.ATSS.INFERENCE_TH) starts them.
"""

import argparse
import logging
import os
import re
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

logger = logging.getLogger("fiber_det.export")

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="model config (yaml)")
    p.add_argument("--weights", required=True, help="checkpoint (fiber_det or official FIBER)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--height", type=int, required=True, help="padded input height of the graph")
    p.add_argument("--width", type=int, required=True, help="padded input width of the graph")
    p.add_argument(
        "--vocabulary",
        nargs="+",
        default=None,
        metavar="NAME",
        help="category names of a fixed vocabulary (its text states are stored in the graph)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check run")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    if args.vocabulary:
        cut = next((i for i, v in enumerate(args.vocabulary) if _CONFIG_KEY.match(v)), None)
        if cut is not None:
            args.opts = args.vocabulary[cut:] + list(args.opts)
            args.vocabulary = args.vocabulary[:cut]
        if not args.vocabulary:
            p.error("--vocabulary needs at least one category name")
    return args


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from fiber_det.checkpoint import build_and_load_model
    from fiber_det.config import load_config
    from fiber_det.export import export_onnx

    setup_logger(name="fiber_det", abbrev_name="fiber")
    for name, path in (("--config-file", args.config_file), ("--weights", args.weights)):
        if _same_file(args.output, path):
            print(
                f"error: --output {args.output} is the {name} file: choose another name",
                file=sys.stderr,
            )
            return 2
    try:
        if not os.path.isfile(args.weights):
            raise FileNotFoundError(f"weights {args.weights} not found")
        cfg = load_config(args.config_file, args.opts, weights=args.weights, device="cpu")
        model = build_and_load_model(cfg)
        report = export_onnx(
            model,
            cfg,
            args.output,
            height=args.height,
            width=args.width,
            vocabulary=args.vocabulary,
            check=not args.no_check,
        )
    except (FileNotFoundError, ValueError, TypeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report.max_abs_diff.items())
    logger.info(
        "%s: %dx%d%s, %.1f MB%s",
        report.path,
        report.height,
        report.width,
        f", fixed vocabulary of {len(args.vocabulary)} names" if args.vocabulary else "",
        report.size_mb,
        f"; max |onnxruntime - PyTorch|: {diffs}" if diffs else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
