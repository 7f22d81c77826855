"""The coarse training-step benchmark row (tools/benchmark.py --coarse-train-configs)."""

import pytest
import torch

from fiber_det.engine.benchmark import (
    coarse_pair_batch,
    coarse_training_step_row,
    format_coarse_train_rows,
)
from fiber_det.utils.testing import get_config


def test_the_benchmark_inputs_follow_the_contract():
    cfg = get_config("tiny/coarse_tiny.yaml")
    batch = coarse_pair_batch(cfg, 3)
    for x in batch:
        assert x["image"].shape == (3, 64, 64) and x["input_ids"].shape == (16,)
        masked = x["mlm_labels"] != -100
        assert masked.any() and (x["mlm_input_ids"][masked] == 4).all()
        assert torch.equal(x["mlm_input_ids"][~masked], x["input_ids"][~masked])


def test_training_step_row_on_the_tiny_model():
    row = coarse_training_step_row("tiny/coarse_tiny.yaml", batch_size=4, repeats=1, accumulate=2)
    assert row["batch"] == 4 and row["size"] == 64 and row["median_s"] > 0
    assert row["accumulate"] == 2 and row["accumulation_ratio"] > 0
    table = format_coarse_train_rows([row])
    assert "tiny/coarse_tiny.yaml" in table and "(k=2)" in table
    with pytest.raises(ValueError, match="multiple of accumulate"):
        coarse_training_step_row("tiny/coarse_tiny.yaml", batch_size=3, accumulate=2)
