#!/usr/bin/env python
"""Detect or ground with a FIBER model on your images: pictures with boxes and JSON detections.

Detection with category names, phrase grounding with a caption (its noun phrases are found
automatically), on files, folders or globs::

    python tools/demo.py --config-file output/demo/config.yaml \\
        --weights output/demo/model_final.pth --input datasets/synthetic/images/val \\
        --categories "red circle" "blue square" --output output/demo_cli

    python tools/demo.py --config-file configs/fiber_b/coco_finetune.yaml \\
        --weights fiber_coco.pth --input "photos/*.jpg" \\
        --prompt "a man with a red umbrella" --output output/photos --cpu

Writes ``<image>.jpg`` (boxes at or above --confidence-threshold, drawn with detectron2's
Visualizer) and ``<image>.json`` per image, and ``predictions.json`` for all. A vocabulary too
long for one prompt is split into several prompts automatically. ``--onnx model.onnx`` (instead
of ``--weights``) runs a graph from tools/export_onnx.py in onnxruntime, same outputs.

Refused before anything is written: an output folder that is or holds an input image, or that an
input glob reads; outputs that would overwrite the config or the weights. Images with the same
name get distinct outputs (``a.jpg``, ``a_1.jpg``). An image that cannot be used (missing,
corrupt, degenerate, oversized) is skipped and named; the run goes on and exits with status 1.
"""

import argparse
import logging
import sys
import warnings

# detectron2's pure-Python build calls torch.jit.script on import, deprecated in recent torch.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

from detectron2.utils.logger import setup_logger  # noqa: E402

from fiber_det.config import load_config  # noqa: E402
from fiber_det.demo import check_demo_outputs, collect_images, predict_images  # noqa: E402
from fiber_det.predictor import FIBERPredictor  # noqa: E402
from fiber_det.utils.allocator import keep_freed_memory  # noqa: E402

logger = logging.getLogger("fiber_det.demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="model config (yaml)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--weights", default=None, help="checkpoint (overrides MODEL.WEIGHTS)")
    model.add_argument(
        "--onnx", default=None, help="run this exported graph (tools/export_onnx.py) in onnxruntime"
    )
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="a caption: phrase grounding of its noun phrases")
    what.add_argument(
        "--categories",
        nargs="+",
        help='category names: detection ("red circle" "blue square", or "red circle, blue square")',
    )
    p.add_argument("--output", default="output/predictions", help="default %(default)s")
    p.add_argument("--cpu", action="store_true", help="run on CPU (MODEL.DEVICE cpu)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a weights file holding pickled Python objects: runs code from the file, only "
        "for files you trust (MODEL.WEIGHTS_ALLOW_PICKLE)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def _categories(values):
    if len(values) == 1 and "," in values[0]:
        values = values[0].split(",")
    return [v.strip() for v in values if v.strip()] or values


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="fiber_det", abbrev_name="fiber")
    setup_logger(name="detectron2", abbrev_name="d2")
    keep_freed_memory()  # reuse freed tensors' pages (fiber_det/utils/allocator.py)
    prompt = args.prompt if args.prompt is not None else _categories(args.categories)
    try:
        files = collect_images(args.input)
        check_demo_outputs(
            files,
            args.output,
            patterns=args.input,
            protected=[args.config_file, args.weights, args.onnx],
        )
        opts = [*args.opts, "MODEL.WEIGHTS_ALLOW_PICKLE", args.allow_pickle]
        cfg = load_config(
            args.config_file, opts, weights=args.weights, device="cpu" if args.cpu else None
        )
        if args.onnx:
            from fiber_det.export import OnnxPredictor  # onnxruntime is an optional dependency

            predictor = OnnxPredictor(cfg, onnx_file=args.onnx, batch_size=args.batch_size)
        else:
            predictor = FIBERPredictor(cfg, batch_size=args.batch_size)
        predictor.encode_prompt(prompt)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        records, failures = predict_images(
            predictor, files, prompt, args.output, confidence_threshold=args.confidence_threshold
        )
    except ValueError as e:  # e.g. an image larger than the --onnx graph's input size
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info(
        "%d images written to %s (%d detections at >= %.2f)",
        len(records),
        args.output,
        sum(len(r["detections"]) for r in records),
        args.confidence_threshold,
    )
    if failures:
        logger.error(
            "%d of %d images skipped (listed under 'failures' in %s/predictions.json): %s",
            len(failures),
            len(files),
            args.output,
            "; ".join(f"{f}: {e}" for f, e in failures[:5])
            + (f"; ... {len(failures) - 5} more" if len(failures) > 5 else ""),
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
