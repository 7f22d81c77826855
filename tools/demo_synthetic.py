#!/usr/bin/env python
"""The synthetic grounding demo (``make demo``): no weights, no dataset, no GPU needed.

Generates coloured shapes with referring captions (``$DETECTRON2_DATASETS/synthetic``), trains the
tiny FIBER of ``configs/tiny/demo.yaml`` on CPU, evaluates it on the held-out split with the real
evaluators (COCO box AP with category prompts, Recall@1/5/10 of the caption phrases), and writes
``metrics.json``, pictures and the model to ``--output``::

    python tools/demo_synthetic.py --output output/demo
    python tools/demo_synthetic.py --output output/demo_long SOLVER.MAX_ITER 6000

Then run the trained model on any image (tools/demo.py)::

    python tools/demo.py --config-file output/demo/config.yaml \\
        --weights output/demo/model_final.pth --input datasets/synthetic/images/val \\
        --prompt "the small red circle left of a blue square" --output output/demo_cli

Exit status 1 when a held-out metric is below its target (--min-ap50, --min-recall1). A config
or weights file that the run would overwrite (``--output``'s config.yaml, metrics.json,
model_final.pth) is refused before anything is written.
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

from fiber_det.demo import DEMO_CONFIG, DEMO_SPEC, run_synthetic_demo  # noqa: E402
from fiber_det.utils.io import refuse_overwriting_inputs_or_exit  # noqa: E402

logger = logging.getLogger("fiber_det.demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/demo", help="output folder (default %(default)s)")
    p.add_argument(
        "--data-root", default=None, help="synthetic data folder ($DETECTRON2_DATASETS/synthetic)"
    )
    p.add_argument(
        "--config-file", default=DEMO_CONFIG, help="a yaml file or a shipped config (%(default)s)"
    )
    p.add_argument("--num-train", type=int, default=DEMO_SPEC.num_train, help="training images")
    p.add_argument("--num-val", type=int, default=DEMO_SPEC.num_val, help="held-out images")
    p.add_argument("--seed", type=int, default=DEMO_SPEC.seed, help="data seed")
    p.add_argument("--pictures", type=int, default=6, help="held-out images to draw")
    p.add_argument("--min-ap50", type=float, default=50.0, help="target box AP50 (percent)")
    p.add_argument("--min-recall1", type=float, default=60.0, help="target Recall@1 (percent)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    weights = [v for k, v in zip(args.opts[::2], args.opts[1::2]) if k == "MODEL.WEIGHTS"]
    outputs = ("config.yaml", "metrics.json", "model_final.pth")
    refuse_overwriting_inputs_or_exit(
        [args.config_file, *weights],
        output_files=[os.path.join(args.output, n) for n in outputs],
        fix="give --output a new folder",
    )
    setup_logger(output=args.output, name="fiber_det", abbrev_name="fiber")
    setup_logger(output=args.output, name="detectron2", abbrev_name="d2")
    spec = dataclasses.replace(
        DEMO_SPEC, num_train=args.num_train, num_val=args.num_val, seed=args.seed
    )
    metrics = run_synthetic_demo(
        output_dir=args.output,
        data_root=args.data_root,
        config_file=args.config_file,
        opts=args.opts,
        spec=spec,
        num_pictures=args.pictures,
    )
    ap50, r1 = metrics["bbox"]["AP50"], metrics["grounding"]["R@1"]
    if ap50 < args.min_ap50 or r1 < args.min_recall1:
        logger.error(
            "below the demo's targets: AP50 %.1f (target %.1f), R@1 %.1f (target %.1f)",
            ap50,
            args.min_ap50,
            r1,
            args.min_recall1,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
