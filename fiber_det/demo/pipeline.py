"""The synthetic grounding demo (``make demo``): data, training, evaluation, pictures, metrics.

With no weights, no dataset and no GPU, one command shows FIBER learning to detect and ground
phrases: coloured shapes (:mod:`fiber_det.demo.synthetic`) are generated, the tiny model of
``configs/tiny/demo.yaml`` trains on CPU with the FIBER trainer (detection and grounding views
mixed), the real evaluators score the held-out split (COCO box AP with category prompts,
Recall@1/5/10 of the caption phrases), and pictures of predictions next to the ground truth are
written with the metrics::

    output/demo/metrics.json        {"bbox": {"AP", "AP50"}, "grounding": {"R@1", "R@5", "R@10"}}
    output/demo/pictures/*.jpg      ground truth | prediction, detection and grounding
    output/demo/model_final.pth     the trained model, for tools/demo.py
    output/demo/config.yaml         its config
"""

import logging
import os
import time
from typing import Dict, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import HookBase

from ..config import load_config
from ..engine import Trainer
from ..utils.io import atomic_open, atomic_write_json
from .pictures import write_demo_pictures
from .synthetic import (
    SyntheticSpec,
    default_synthetic_root,
    ensure_synthetic_dataset,
    register_synthetic_datasets,
)

__all__ = ["DEMO_CONFIG", "DEMO_SPEC", "DemoProgress", "demo_config", "run_synthetic_demo"]

logger = logging.getLogger(__name__)

DEMO_CONFIG = "tiny/demo.yaml"  # a shipped config (fiber_det.model_zoo), found wherever installed
# The data the demo config is tuned for (see the README section of the demo for its numbers).
DEMO_SPEC = SyntheticSpec(seed=0, num_train=600, num_val=100)
METRIC_KEYS = {"bbox": ("AP", "AP50"), "grounding": ("R@1", "R@5", "R@10")}


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class DemoProgress(HookBase):
    """Logs training progress with an ETA for the training and for the whole demo.

    The evaluation and pictures are estimated to take, per image, the measured time per training
    image (a forward pass is a third of a training step; loading, matching and drawing add about
    as much again).

    Args:
        start_time (float): ``time.time()`` at the start of the demo.
        eval_images (int): images the evaluation will run (both views).
        period (int): iterations between two lines.
    """

    def __init__(self, *, start_time: float, eval_images: int, period: int):
        self.start_time = start_time
        self.eval_images = eval_images
        self.period = max(1, period)
        self._t0: Optional[float] = None

    def before_train(self):
        self._t0 = time.time()

    def after_step(self):
        it, total = self.trainer.iter + 1, self.trainer.max_iter
        if it % self.period and it != total:
            return
        done = it - self.trainer.start_iter
        per_iter = (time.time() - self._t0) / max(done, 1)
        batch = self.trainer.cfg.SOLVER.IMS_PER_BATCH
        train_left = per_iter * (total - it)
        eval_left = self.eval_images * per_iter / batch
        logger.info(
            "[demo] training %3d%% (%d/%d iterations), elapsed %s, ETA training %s, demo %s",
            100 * it // total,
            it,
            total,
            _fmt(time.time() - self.start_time),
            _fmt(train_left),
            _fmt(train_left + eval_left),
        )


def demo_config(
    config_file: str,
    opts: Sequence,
    *,
    paths: Dict[str, str],
    names: Dict[str, str],
    output_dir: str,
) -> CfgNode:
    """The demo's config: ``config_file`` + ``opts``, pointed at the synthetic data, its
    tokenizer and ``output_dir``."""
    cfg = load_config(config_file, opts)
    cfg.defrost()
    cfg.MODEL.LANGUAGE.TOKENIZER = paths["tokenizer"]
    cfg.DATASETS.TRAIN = (names["detection_train"], names["grounding_train"])
    cfg.DATASETS.TEST = (names["detection_val"], names["grounding_val"])
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def _metrics(results: Dict, names: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """``{"bbox": {AP, AP50}, "grounding": {R@1, R@5, R@10}}`` from the trainer's results."""
    by_task = {}
    for key, task in (("detection_val", "bbox"), ("grounding_val", "grounding")):
        found = results.get(names[key], {}).get(task)
        if found is None:
            raise RuntimeError(
                f"the evaluation of {names[key]} returned no {task!r} results: {results}"
            )
        by_task[task] = {k: round(float(found[k]), 2) for k in METRIC_KEYS[task]}
    return by_task


def run_synthetic_demo(
    *,
    output_dir: str = "output/demo",
    data_root: Optional[str] = None,
    config_file: str = DEMO_CONFIG,
    opts: Sequence = (),
    spec: SyntheticSpec = DEMO_SPEC,
    num_pictures: int = 6,
    dataset_prefix: str = "fiber_synthetic",
) -> Dict[str, Dict[str, float]]:
    """Generate, train, evaluate, draw; returns the metrics written to ``metrics.json``.

    Args:
        output_dir: where the model, metrics, pictures and logs go.
        data_root: synthetic data folder (default ``$DETECTRON2_DATASETS/synthetic``); reused
            when it already holds ``spec``.
        config_file, opts: the training / evaluation config and overrides.
        spec: the synthetic data.
        num_pictures: held-out images drawn (each gives a detection and a grounding picture).
        dataset_prefix: prefix of the registered dataset names.
    """
    start = time.time()
    root = data_root or default_synthetic_root()
    logger.info("[demo 1/4] synthetic data in %s", root)
    paths = ensure_synthetic_dataset(root, spec)
    names = register_synthetic_datasets(root, prefix=dataset_prefix)
    cfg = demo_config(config_file, opts, paths=paths, names=names, output_dir=output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with atomic_open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())

    logger.info(
        "[demo 2/4] training the tiny FIBER on CPU: %d iterations of %d images (%s)",
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
        _fmt(time.time() - start),
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    eval_images = spec.num_val * (1 + spec.captions_val)
    period = max(1, cfg.SOLVER.MAX_ITER // 10)
    trainer.register_hooks([DemoProgress(start_time=start, eval_images=eval_images, period=period)])
    logger.info("[demo 3/4] the evaluation runs when the training ends")
    results = trainer.train()
    metrics = _metrics(results or {}, names)
    atomic_write_json(metrics, os.path.join(output_dir, "metrics.json"))

    logger.info("[demo 4/4] pictures of held-out predictions (%s)", _fmt(time.time() - start))
    pictures = write_demo_pictures(
        cfg, trainer.model, names, os.path.join(output_dir, "pictures"), num_pictures
    )
    _log_summary(metrics, output_dir, pictures, time.time() - start)
    return metrics


def _log_summary(metrics: Dict, output_dir: str, pictures: Sequence[str], elapsed: float) -> None:
    rows = [f"  {task:<10} {k:<5} {v:6.2f}" for task, m in metrics.items() for k, v in m.items()]
    logger.info(
        "[demo] done in %s. Held-out metrics (percent):\n%s\nmetrics: %s\npictures: %s",
        _fmt(elapsed),
        "\n".join(rows),
        os.path.join(output_dir, "metrics.json"),
        ", ".join(pictures[:4]) + (" ..." if len(pictures) > 4 else ""),
    )
