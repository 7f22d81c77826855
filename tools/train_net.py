#!/usr/bin/env python
"""Train or evaluate FIBER with detectron2 (every published recipe is one command).

Both stages of FIBER, one command each (configs/fiber_b/coarse/*.yaml give the commands of
stage 1: pre-training and retrieval fine-tuning). Stage 1, coarse-grained pre-training (ITC, ITM,
MLM on image-text pairs), then stage 2 initialised from its checkpoint:

    python tools/train_net.py --num-gpus 8 --config-file configs/fiber_b/coarse/pretrain.yaml \
        OUTPUT_DIR output/coarse
    python tools/train_net.py --num-gpus 16 --num-machines 4 ... \
        --config-file configs/fiber_b/pretrain_o365_goldg_flickr.yaml \
        MODEL.WEIGHTS output/coarse/model_final.pth

Fine-grained pre-training on 64 GPUs (16 per node, 4 nodes), from the coarse-grained checkpoint:

    python tools/train_net.py --num-gpus 16 --num-machines 4 --machine-rank R --dist-url URL \\
        --config-file configs/fiber_b/pretrain_o365_goldg_flickr.yaml \\
        MODEL.WEIGHTS fiber_coarse_init.pt

Fine-tuning (configs/fiber_b/*_finetune.yaml give the command of each recipe), e.g. COCO:

    python tools/train_net.py --num-gpus 16 --config-file configs/fiber_b/coco_finetune.yaml \\
        MODEL.WEIGHTS fiber_coarse_then_fine.pth

Your own COCO-format data on one GPU: configs/fiber_b/custom_finetune.yaml. Evaluation only:

    python tools/train_net.py --eval-only --config-file configs/fiber_b/coco_finetune.yaml \\
        MODEL.WEIGHTS fiber_coco.pth

``--resume`` continues from ``OUTPUT_DIR/last_checkpoint`` at the next iteration. On CPU, use
``MODEL.DEVICE cpu`` (``--num-gpus N`` then starts N processes with the gloo backend). A training
run whose checkpoints (``OUTPUT_DIR/model_final.pth``, ``model_<iter>.pth``) would overwrite the
``MODEL.WEIGHTS`` it starts from is refused before anything is written.

Each process keeps the memory it frees for reuse (``fiber_det.utils.allocator``: no page
zero-filled again by the OS in every step; FIBER-B on 2 CPU cores: about 10% faster steps at the
same peak memory). ``FIBER_DET_KEEP_FREED_MEMORY=0`` leaves glibc's defaults instead.
"""

import logging
import os

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fiber_det.checkpoint import build_and_load_model
from fiber_det.config import load_config
from fiber_det.engine import Trainer
from fiber_det.evaluation import log_benchmark_summary
from fiber_det.utils.allocator import keep_freed_memory
from fiber_det.utils.io import refuse_overwriting_inputs

logger = logging.getLogger("fiber_det")


def refuse_overwriting_weights(cfg, resume: bool = False) -> None:
    """Refuse a training run whose checkpoints would overwrite the ``MODEL.WEIGHTS`` it starts
    from (e.g. fine-tuning ``OUTPUT_DIR/model_final.pth`` into the same ``OUTPUT_DIR``). With
    ``resume`` and a ``last_checkpoint``, the run continues its own checkpoints (as meant)."""
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    period, last = cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER - 1
    names = [f"model_{i:07d}.pth" for i in range(period - 1, last, period)] + ["model_final.pth"]
    refuse_overwriting_inputs(
        [cfg.MODEL.WEIGHTS],
        output_files=[os.path.join(cfg.OUTPUT_DIR, n) for n in names],
        fix="copy the weights elsewhere or set another OUTPUT_DIR",
    )


def setup(args):
    """Config from the file and the command line (``DATASETS.CUSTOM`` registered), logging,
    output folder."""
    cfg = load_config(args.config_file, args.opts)
    if not args.eval_only:
        refuse_overwriting_weights(cfg, args.resume)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fiber_det")
    return cfg


def main(args):
    keep_freed_memory()  # in every launched process; results unchanged (see the docstring)
    cfg = setup(args)
    if args.eval_only:
        model = build_and_load_model(cfg, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            log_benchmark_summary(cfg, res)  # ODinW-13 mean, COCO-O mean and robustness
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
