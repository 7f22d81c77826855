"""tools/train_net.py: 2 CPU processes (gloo) through detectron2's launch give the losses of one
process with the same total batch; --eval-only evaluates a checkpoint."""

import importlib.util
import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest

from tests.paths import REPO_ROOT

TRAIN_NET = REPO_ROOT / "tools" / "train_net.py"
CONFIG = REPO_ROOT / "configs" / "tiny" / "fiber_tiny_train.yaml"
ITERS = 4


def _opts(tokenizer_dir, shapes_data, out):
    return [
        "MODEL.LANGUAGE.TOKENIZER",
        str(tokenizer_dir),
        "DATASETS.CUSTOM.TRAIN_JSON",
        shapes_data["det_json"],
        "DATASETS.CUSTOM.TRAIN_IMAGES",
        shapes_data["images"],
        "SOLVER.MAX_ITER",
        str(ITERS),
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "True",
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
        "full_model",
        "OUTPUT_DIR",
        str(out),
    ]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return {r["iteration"]: r["total_loss"] for r in rows if "total_loss" in r}


def _train(num_procs, out, opts):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        str(TRAIN_NET),
        "--num-gpus",
        str(num_procs),
        "--dist-url",
        "auto",
        "--config-file",
        str(CONFIG),
        *opts,
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _losses(out)


def test_two_processes_match_one_process_with_the_same_total_batch(
    tokenizer_dir, shapes_data, tmp_path
):
    one = _train(1, tmp_path / "one", _opts(tokenizer_dir, shapes_data, tmp_path / "one"))
    two = _train(2, tmp_path / "two", _opts(tokenizer_dir, shapes_data, tmp_path / "two"))
    assert sorted(one) == sorted(two) == list(range(ITERS))
    # iteration 0: same weights, same images; later iterations: same averaged gradients
    assert [two[i] for i in range(ITERS)] == pytest.approx([one[i] for i in range(ITERS)], rel=1e-4)
    assert len({round(v, 4) for v in one.values()}) == ITERS  # the model is really training
    assert (tmp_path / "two" / "model_final.pth").is_file()


def _load_train_net():
    spec = importlib.util.spec_from_file_location("fiber_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_only_evaluates_a_checkpoint(tokenizer_dir, shapes_data, tmp_path, monkeypatch):
    train_net = _load_train_net()
    kept = []  # every run of main keeps freed memory for reuse (fiber_det.utils.allocator)
    monkeypatch.setattr(train_net, "keep_freed_memory", lambda: kept.append(True) or True)
    opts = _opts(tokenizer_dir, shapes_data, tmp_path / "train")
    opts[opts.index("SOLVER.MAX_ITER") + 1] = "2"
    args = Namespace(
        config_file=str(CONFIG),
        opts=opts,
        eval_only=False,
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    train_net.main(args)
    assert kept == [True]
    weights = tmp_path / "train" / "model_final.pth"
    eval_opts = _opts(tokenizer_dir, shapes_data, tmp_path / "eval") + [
        "MODEL.WEIGHTS",
        str(weights),
        "DATASETS.CUSTOM.VAL_JSON",
        shapes_data["det_json"],
        "DATASETS.CUSTOM.VAL_IMAGES",
        shapes_data["images"],
        "DATASETS.TEST",
        "('custom_val',)",
    ]
    results = train_net.main(Namespace(**dict(vars(args), opts=eval_opts, eval_only=True)))
    assert "bbox" in results and "AP" in results["bbox"]
