#!/usr/bin/env python
"""The two-stage demo (``make demo-two-stage``): FIBER's stage 1 then stage 2 on synthetic data.

Stage 1 (coarse-grained: ITC, ITM, MLM) trains the tiny model on the synthetic shapes and their
captions as image-text pairs; stage 2 (the detector, ``configs/tiny/demo.yaml``) then trains
twice with the same budget, from the stage-1 checkpoint and from stage 1's initial weights, and
both are evaluated on the held-out split (fiber_det/demo/two_stage.py)::

    python tools/demo_two_stage.py --output output/two_stage
    python tools/demo_two_stage.py --output output/two_stage_long --stage2-iters 3000

Writes ``metrics.json`` and the three runs (``stage1/``, ``from_stage1/``, ``from_init/``) to
``--output``, and prints the comparison table. An output folder that already holds a
``metrics.json`` is refused (give a new folder).
"""

import argparse
import dataclasses
import logging
import os
import sys
import warnings

# detectron2's pure-Python build calls torch.jit.script, deprecated in recent torch.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

from detectron2.utils.logger import setup_logger  # noqa: E402

from fiber_det.demo import DEMO_SPEC  # noqa: E402
from fiber_det.demo.two_stage import STAGE2_ITERS, format_table, run_two_stage_demo  # noqa: E402

logger = logging.getLogger("fiber_det.demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/two_stage", help="output folder (%(default)s)")
    p.add_argument(
        "--data-root", default=None, help="synthetic data folder ($DETECTRON2_DATASETS/synthetic)"
    )
    p.add_argument("--num-train", type=int, default=DEMO_SPEC.num_train, help="training images")
    p.add_argument("--num-val", type=int, default=DEMO_SPEC.num_val, help="held-out images")
    p.add_argument("--stage1-iters", type=int, default=None, help="stage-1 iterations (config)")
    p.add_argument(
        "--stage2-iters", type=int, default=STAGE2_ITERS, help="each stage-2 run (%(default)s)"
    )
    p.add_argument(
        "--stage1-opt", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="a stage-1 config override (repeatable)",
    )  # fmt: skip
    p.add_argument("opts", nargs=argparse.REMAINDER, help="stage-2 config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.path.exists(os.path.join(args.output, "metrics.json")):
        logger.error("%s already holds a two-stage run: give --output a new folder", args.output)
        return 2
    setup_logger(output=args.output, name="fiber_det", abbrev_name="fiber")
    setup_logger(output=args.output, name="detectron2", abbrev_name="d2")
    spec = dataclasses.replace(DEMO_SPEC, num_train=args.num_train, num_val=args.num_val)
    stage1_opts = [v for pair in args.stage1_opt for v in pair]
    if args.stage1_iters is not None:
        stage1_opts += ["SOLVER.MAX_ITER", args.stage1_iters]
    metrics = run_two_stage_demo(
        output_dir=args.output,
        data_root=args.data_root,
        spec=spec,
        stage1_opts=stage1_opts,
        stage2_opts=args.opts,
        stage2_iters=args.stage2_iters,
    )
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
