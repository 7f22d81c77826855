"""The two-stage demo end to end in seconds (make demo-two-stage's code path: tools/
demo_two_stage.py -> run_two_stage_demo -> pairs, stage 1, stage 2 twice, metrics)."""

import json

from tests.paths import load_tool

from .test_demo_smoke import FAST


def test_two_stage_demo_runs_and_compares_both_initialisations(tmp_path):
    out, data = tmp_path / "two_stage", tmp_path / "synthetic"
    args = [
        "--output", str(out), "--data-root", str(data), "--num-train", "6", "--num-val", "3",
        "--stage1-iters", "3", "--stage2-iters", "2",
        "--stage1-opt", "SOLVER.IMS_PER_BATCH", "4", *FAST,
    ]  # fmt: skip
    assert load_tool("demo_two_stage").main(args) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"stage1", "from_stage1", "from_init", "total_minutes"}
    for key in ("from_stage1", "from_init"):
        assert set(metrics[key]["bbox"]) == {"AP", "AP50"}
        assert set(metrics[key]["grounding"]) == {"R@1", "R@5", "R@10"}
    pairs = [json.loads(line) for line in (out / "pairs_train.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and all(len(p["captions"]) >= 2 for p in pairs)
    for name in ("model_init.pth", "model_final.pth"):
        assert (out / "stage1" / name).is_file()
    # both stage-2 runs started from a coarse checkpoint, loaded the same tensors
    reports = [(out / k / "initialization.txt").read_text() for k in ("from_stage1", "from_init")]
    assert all("loaded" in r for r in reports)
    assert reports[0].split("tensors")[0].split()[-1] == reports[1].split("tensors")[0].split()[-1]
    assert load_tool("demo_two_stage").main(args) == 2  # the output folder is not overwritten
