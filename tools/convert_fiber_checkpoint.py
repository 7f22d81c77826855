#!/usr/bin/env python
"""Convert an official FIBER fine-grained checkpoint into a fiber_det checkpoint.

    python tools/convert_fiber_checkpoint.py fiber_coco.pth output/fiber_coco_d2.pth

The input may be a raw state_dict or ``{"model": ...}``, with or without DDP's ``module.``
prefix; fusion v2 or v3 is detected from the keys. The output loads with detectron2's
``DetectionCheckpointer`` (``MODEL.WEIGHTS``) into the FIBER-B model of the matching config. A
report of converted, dropped and missing keys by component is printed; a key that would be lost
is an error. (``MODEL.WEIGHTS`` may also point at the official file directly: the same conversion
runs on load.) The output may not be the input (or the config): that is refused before anything is
read or written; the output is written to a temporary file, then renamed.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from detectron2.modeling import build_model

from fiber_det.checkpoint import CheckpointError, convert_official_state_dict, detect_fusion_version
from fiber_det.checkpoint.official import unwrap_state_dict
from fiber_det.config import load_config
from fiber_det.utils.io import (
    atomic_torch_save,
    load_torch_file,
    refuse_overwriting_inputs_or_exit,
)

NEW_FILE = "write the converted checkpoint to a new file"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", help="official FIBER .pth file")
    p.add_argument("output", help="where to write the fiber_det checkpoint")
    p.add_argument(
        "--config-file",
        default=None,
        help="config of the target model, to check names and shapes and list missing keys "
        "(default: the shipped fiber_b/official_parity_{v2,v3}.yaml by detected fusion version)",
    )
    p.add_argument("--no-model-check", action="store_true", help="skip building the model")
    p.add_argument(
        "--allow-pickle",
        "--trust-pickle",  # the earlier name of the flag
        dest="allow_pickle",
        action="store_true",
        help="read a file holding pickled Python objects: runs code from the file, only for "
        "files from a trusted source",
    )
    return p.parse_args(argv)


def _model_shapes(config_file: str):
    cfg = load_config(config_file, device="cpu")
    model = build_model(cfg)
    return {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }, cfg.MODEL.FIBER.FUSION_VERSION


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.input).is_file():
        print(f"error: input file not found: {args.input}", file=sys.stderr)
        return 2
    refuse_overwriting_inputs_or_exit(
        [args.input, args.config_file], output_files=[args.output], fix=NEW_FILE
    )
    try:
        obj = load_torch_file(
            args.input, allow_pickle=args.allow_pickle, hint="rerun with --allow-pickle."
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    try:
        sd, _ = unwrap_state_dict(obj)
        variant = detect_fusion_version(sd)
        shapes = expected = None
        if not args.no_model_check:
            config = args.config_file or f"fiber_b/official_parity_{variant}.yaml"
            shapes, expected = _model_shapes(config)
        converted, report = convert_official_state_dict(obj, expected, shapes)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format())
    atomic_torch_save(
        {
            "model": converted,
            "__author__": "fiber_det tools/convert_fiber_checkpoint.py",
            "fusion_version": report.variant,
            "source": os.path.basename(args.input),
        },
        args.output,
    )
    print(f"wrote {args.output} ({len(converted)} tensors, fusion {report.variant})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
