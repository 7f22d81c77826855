#!/usr/bin/env python
"""Convert a coarse-grained FIBER checkpoint into the initialisation of the fine-grained model.

    python tools/convert_coarse_checkpoint.py fiber_coarse_init.pt output/fiber_coarse_init_d2.pth
    python tools/convert_coarse_checkpoint.py fiber_coarse_init_for_refexp.pt out.pth \\
        --fusion-version v3

The input is an official coarse-grained file or the output of fiber_det's own stage 1 (a
FIBERCoarse checkpoint, e.g. ``output/coarse/model_final.pth``):

    python tools/convert_coarse_checkpoint.py output/coarse/model_final.pth out.pth \
        --fusion-version v3

Stage 1 -> 2 of FIBER's two-stage training: ``vit_model.*`` -> ``backbone.body.*`` (Swin and its
image-to-text fusion), ``text_transformer.*`` -> ``backbone.language.*`` (RoBERTa and its
text-to-image fusion); the FPN and the head start from scratch. A report of what was loaded, what
was skipped (coarse-only modules, ...) and what starts from scratch is printed. The output loads
with ``MODEL.WEIGHTS`` (so does the coarse file itself: the same conversion runs on load).
Lightning ``.ckpt`` files hold Python objects besides tensors: ``--allow-pickle`` loads them
(only for files you trust). The output may not be the input (or the config): that is refused
before anything is read or written.
"""

import argparse
import logging
import sys

from detectron2.modeling import build_model

from fiber_det.checkpoint.coarse import convert_coarse_state_dict, read_coarse_checkpoint
from fiber_det.config import load_config
from fiber_det.utils.io import atomic_torch_save, refuse_overwriting_inputs_or_exit

NEW_FILE = "write the converted checkpoint to a new file"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "input", help="coarse-grained FIBER checkpoint (.pt / .ckpt, or a FIBERCoarse .pth)"
    )
    p.add_argument("output", help="where to write the fiber_det checkpoint")
    p.add_argument(
        "--config-file",
        default="fiber_b/Base-FIBER-B.yaml",
        help="config of the target model: a yaml file or a shipped config (default: FIBER-B, "
        "%(default)s)",
    )
    p.add_argument(
        "--fusion-version",
        choices=("v2", "v3"),
        default=None,
        help="v2 (fiber_coarse_init.pt -> fiber_coarse_then_fine) or v3 (refexp runs; uses the "
        "i2t query LayerNorm of the coarse model); default: the config's",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a file holding pickled Python objects (Lightning .ckpt files do): runs code "
        "from the file, only for files you trust",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refuse_overwriting_inputs_or_exit(
        [args.input, args.config_file], output_files=[args.output], fix=NEW_FILE
    )
    opts = ["MODEL.DEVICE", "cpu"]
    if args.fusion_version:
        opts += ["MODEL.FIBER.FUSION_VERSION", args.fusion_version]
    cfg = load_config(args.config_file, opts)
    model = build_model(cfg)
    state = read_coarse_checkpoint(args.input, allow_pickle=args.allow_pickle)
    mapped, report = convert_coarse_state_dict(state, model, source=args.input)
    print(report.format())
    atomic_torch_save(
        {"model": mapped, "__author__": "FIBER coarse-grained, converted by fiber_det"},
        args.output,
    )
    print(f"wrote {len(mapped)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
