"""The demo pipeline end to end in seconds: a few images, a few iterations (make demo's code path:
tools/demo_synthetic.py -> run_synthetic_demo -> generate, train, evaluate, draw, metrics)."""

import json

import torch
from detectron2.data import MetadataCatalog

from fiber_det import model_zoo
from fiber_det.demo import DEMO_CONFIG
from fiber_det.predictor import FIBERPredictor
from tests.paths import load_tool

FAST = [
    "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.FIBER.LOG_PERIOD", "1",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


def _demo_tool():
    return load_tool("demo_synthetic")


def test_make_demo_pipeline_runs_and_writes_its_outputs(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "synthetic"
    args = [
        "--output", str(out), "--data-root", str(data), "--num-train", "6", "--num-val", "3",
        "--pictures", "2", "--min-ap50", "0", "--min-recall1", "0", *FAST,
    ]  # fmt: skip
    assert _demo_tool().main(args) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "grounding"}
    assert set(metrics["bbox"]) == {"AP", "AP50"}
    assert set(metrics["grounding"]) == {"R@1", "R@5", "R@10"}
    assert all(0 <= v <= 100 for m in metrics.values() for v in m.values())
    pictures = sorted(p.name for p in (out / "pictures").iterdir())
    assert pictures == [
        "000000_detection.jpg",
        "000000_grounding.jpg",
        "000001_detection.jpg",
        "000001_grounding.jpg",
        "overview.jpg",
    ]
    assert (data / "manifest.json").is_file() and (data / "tokenizer").is_dir()
    for name in ("fiber_synthetic_shapes_val", "fiber_synthetic_grounding_val"):
        assert MetadataCatalog.get(name).synthetic_root == str(data)
        assert (out / "inference" / name / "results.json").is_file()

    # the written model and config serve tools/demo.py and the predictor
    predictor = FIBERPredictor.from_files(
        str(out / "config.yaml"), str(out / "model_final.pth"), ["MODEL.ATSS.INFERENCE_TH", 0.0]
    )
    pred = predictor(str(data / "images" / "val" / "000000.png"), ["red circle", "blue star"])
    assert len(pred) > 0 and set(pred.labels) <= {"red circle", "blue star"}
    assert not predictor.model.training and torch.is_grad_enabled()


def test_demo_targets_set_the_exit_status(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "synthetic"
    args = [
        "--output", str(out), "--data-root", str(data), "--num-train", "4", "--num-val", "2",
        "--pictures", "0", "--min-ap50", "101", *FAST, "SOLVER.MAX_ITER", "1",
    ]  # fmt: skip
    assert _demo_tool().main(args) == 1
    assert (out / "metrics.json").is_file() and not (out / "pictures").exists()


def test_demo_config_is_the_tuned_one():
    text = open(model_zoo.get_config_file(DEMO_CONFIG)).read()
    assert "fiber_tiny.yaml" in text and "fiber_synthetic_shapes_train" in text
