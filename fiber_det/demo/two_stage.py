"""The two-stage demo (``make demo-two-stage``): stage 1 then stage 2 on synthetic data, on CPU.

FIBER is trained coarse-to-fine (Dou et al. 2022): stage 1 pre-trains the fused backbone on
image-text pairs (ITC, ITM, MLM: :class:`~fiber_det.modeling.FIBERCoarse`), stage 2 trains the
detector from that checkpoint. The demo shows the whole path on the synthetic shapes
(:mod:`.synthetic`), and what stage 1 changes for stage 2:

1. the synthetic training images with their captions (the grounding captions and a list of the
   shapes) become an image-text pair dataset (JSON lines, :func:`write_caption_pairs`);
2. stage 1: the tiny coarse model of ``configs/tiny/two_stage_coarse.yaml`` trains on them; its
   initial weights are saved too (``stage1/model_init.pth``: the encoders' starting weights,
   what "uni-modal initialisation" is here, without public weights to start from);
3. stage 2, twice with the same budget (``configs/tiny/demo.yaml``, ``SOLVER.MAX_ITER`` of the
   demo): the detector initialised from the stage-1 checkpoint, and from the initial weights,
   both through ``MODEL.WEIGHTS`` (the same tensors loaded, the same seed for the rest);
4. both are evaluated on the held-out split (box AP, grounding Recall@k) and compared::

    output/two_stage/metrics.json   {"stage1": {...}, "from_stage1": {...}, "from_init": {...}}
"""

import json
import logging
import os
import time
from collections import defaultdict
from typing import Dict, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import load_config
from ..data import register_pair_dataset
from ..engine import Trainer
from ..utils.io import atomic_open, atomic_write_json
from .pipeline import DEMO_CONFIG, DEMO_SPEC, DemoProgress, _fmt, _metrics, demo_config
from .synthetic import (
    SyntheticSpec,
    default_synthetic_root,
    ensure_synthetic_dataset,
    register_synthetic_datasets,
)

__all__ = [
    "STAGE1_CONFIG",
    "STAGE2_ITERS",
    "format_table",
    "run_two_stage_demo",
    "write_caption_pairs",
]

logger = logging.getLogger(__name__)

STAGE1_CONFIG = "tiny/two_stage_coarse.yaml"
STAGE2_ITERS = 1000  # each stage-2 run (the full demo trains 3000)


def write_caption_pairs(grounding_json: str, detection_json: str, image_root: str, out: str) -> int:
    """The synthetic training split as image-text pairs (JSON lines).

    Each image gets its grounding captions and one sentence listing its shapes ("a red circle and
    a blue square"). Returns the number of images.
    """
    with open(grounding_json) as f:
        grounding = json.load(f)
    with open(detection_json) as f:
        detection = json.load(f)
    captions = defaultdict(list)
    for entry in grounding["images"]:
        captions[entry["file_name"]].append(entry["caption"])
    names = {c["id"]: c["name"] for c in detection["categories"]}
    shapes = defaultdict(list)
    by_id = {im["id"]: im["file_name"] for im in detection["images"]}
    for ann in detection["annotations"]:
        name = names[ann["category_id"]]
        if name not in shapes[by_id[ann["image_id"]]]:
            shapes[by_id[ann["image_id"]]].append(name)
    with atomic_open(out, "w") as f:
        for image in detection["images"]:
            file_name = image["file_name"]
            listing = " and ".join(f"a {n}" for n in shapes[file_name])
            record = {
                "image": os.path.abspath(os.path.join(image_root, file_name)),
                "captions": captions[file_name] + ([listing] if listing else []),
                "image_id": image["id"],
            }
            f.write(json.dumps(record) + "\n")
    return len(detection["images"])


def _train(cfg, start: float, *, save_init: bool = False) -> Dict:
    """Train ``cfg`` with the demo's progress lines; returns the last evaluation results."""
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    if save_init:
        trainer.checkpointer.save("model_init")
    period = max(1, cfg.SOLVER.MAX_ITER // 5)
    trainer.register_hooks([DemoProgress(start_time=start, eval_images=0, period=period)])
    results = trainer.train() or {}
    history = trainer.storage.history("total_loss").values()
    losses = [v for v, _ in history]
    window = max(1, min(20, len(losses) // 4))
    return {
        "results": results,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "init": [r.format() for r in trainer.init_reports],
    }


def run_two_stage_demo(
    *,
    output_dir: str = "output/two_stage",
    data_root: Optional[str] = None,
    spec: SyntheticSpec = DEMO_SPEC,
    stage1_config: str = STAGE1_CONFIG,
    stage1_opts: Sequence = (),
    stage2_config: str = DEMO_CONFIG,
    stage2_opts: Sequence = (),
    stage2_iters: int = STAGE2_ITERS,
    dataset_prefix: str = "fiber_synthetic",
) -> Dict[str, Dict]:
    """Stage 1, then stage 2 from it and from the initial weights; returns the metrics written
    to ``metrics.json`` (see the module docstring).

    Args:
        output_dir: ``stage1/``, ``from_stage1/``, ``from_init/`` and ``metrics.json`` go here.
        data_root: synthetic data folder (default ``$DETECTRON2_DATASETS/synthetic``).
        spec: the synthetic data (the demo's by default).
        stage1_config, stage1_opts: the coarse-grained config and overrides.
        stage2_config, stage2_opts: the detector config and overrides (both stage-2 runs).
        stage2_iters: iterations of each stage-2 run (``SOLVER.MAX_ITER``).
        dataset_prefix: prefix of the registered synthetic dataset names.
    """
    start = time.time()
    root = data_root or default_synthetic_root()
    logger.info("[two-stage 1/4] synthetic data in %s", root)
    paths = ensure_synthetic_dataset(root, spec)
    names = register_synthetic_datasets(root, prefix=dataset_prefix)
    os.makedirs(output_dir, exist_ok=True)
    pairs = os.path.join(output_dir, "pairs_train.jsonl")
    n = write_caption_pairs(
        paths["grounding_train"], paths["detection_train"], paths["image_root"], pairs
    )
    pairs_name = f"{dataset_prefix}_pairs_train"
    _replace_pair_dataset(pairs_name, pairs)
    logger.info("[two-stage] %d image-text pairs in %s", n, pairs)

    stage1_dir = os.path.join(output_dir, "stage1")
    cfg1 = load_config(stage1_config, stage1_opts)
    cfg1.defrost()
    cfg1.MODEL.LANGUAGE.TOKENIZER = paths["tokenizer"]
    cfg1.DATASETS.TRAIN = (pairs_name,)
    cfg1.OUTPUT_DIR = stage1_dir
    cfg1.freeze()
    logger.info(
        "[two-stage 2/4] stage 1 (ITC, ITM, MLM): %d iterations of %d pairs (%s)",
        cfg1.SOLVER.MAX_ITER,
        cfg1.SOLVER.IMS_PER_BATCH,
        _fmt(time.time() - start),
    )
    t = time.time()
    stage1 = _train(cfg1, start, save_init=True)
    metrics: Dict[str, Dict] = {
        "stage1": {
            "iterations": cfg1.SOLVER.MAX_ITER,
            "loss_first": round(stage1["loss_first"], 3),
            "loss_last": round(stage1["loss_last"], 3),
            "minutes": round((time.time() - t) / 60, 2),
        }
    }
    for step, (key, weights) in enumerate(
        (("from_stage1", "model_final.pth"), ("from_init", "model_init.pth")), start=3
    ):
        opts = list(stage2_opts) + ["SOLVER.MAX_ITER", stage2_iters]
        opts += ["MODEL.WEIGHTS", os.path.join(stage1_dir, weights)]
        cfg2 = demo_config(
            stage2_config, opts, paths=paths, names=names, output_dir=os.path.join(output_dir, key)
        )
        logger.info(
            "[two-stage %d/4] stage 2 %s: %d iterations (%s)",
            step,
            key.replace("_", " "),
            stage2_iters,
            _fmt(time.time() - start),
        )
        t = time.time()
        run = _train(cfg2, start)
        metrics[key] = dict(
            _metrics(run["results"], names),
            minutes=round((time.time() - t) / 60, 2),
            loss_last=round(run["loss_last"], 3),
        )
    metrics["total_minutes"] = round((time.time() - start) / 60, 2)
    atomic_write_json(metrics, os.path.join(output_dir, "metrics.json"))
    logger.info("[two-stage] done in %s:\n%s", _fmt(time.time() - start), format_table(metrics))
    return metrics


def format_table(metrics: Dict) -> str:
    """The two stage-2 runs side by side (Markdown)."""
    rows = ["| stage 2 from | box AP | AP50 | R@1 | R@5 | R@10 | minutes |", "|---" * 7 + "|"]
    for key, label in (("from_stage1", "stage 1 checkpoint"), ("from_init", "initial weights")):
        m = metrics[key]
        b, g = m["bbox"], m["grounding"]
        rows.append(
            f"| {label} | {b['AP']:.1f} | {b['AP50']:.1f} | {g['R@1']:.1f} | {g['R@5']:.1f} | "
            f"{g['R@10']:.1f} | {m['minutes']:.1f} |"
        )
    return "\n".join(rows)


def _replace_pair_dataset(name: str, jsonl: str) -> None:
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pair_dataset(name, jsonl)
