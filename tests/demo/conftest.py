"""Demo-test fixtures: a small synthetic dataset (generated once), the tiny model with random
weights (``MODEL.ATSS.INFERENCE_TH`` 0 so that it returns boxes) and its predictor."""

import pytest
import torch
from detectron2.modeling import build_model

import fiber_det  # noqa: F401  registers the datasets and the model
from fiber_det.data.synthetic import (
    SyntheticSpec,
    generate_synthetic_dataset,
    register_synthetic_datasets,
)
from fiber_det.predictor import FIBERPredictor
from fiber_det.utils.testing import get_tiny_config

SMALL_SPEC = SyntheticSpec(seed=3, num_train=12, num_val=6, captions_train=2)
PREFIX = "fiber_demo_test"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """``{"paths": ..., "names": ..., "spec": ...}`` of a 12 + 6 image synthetic dataset."""
    root = tmp_path_factory.mktemp("synthetic")
    paths = generate_synthetic_dataset(root, SMALL_SPEC)
    names = register_synthetic_datasets(root, prefix=PREFIX)
    return {"paths": paths, "names": names, "spec": SMALL_SPEC, "root": root}


def tiny_demo_config(tokenizer_dir, opts=()):
    """The tiny config with random weights that returns boxes, on the synthetic tokenizer."""
    return get_tiny_config(
        tokenizer_dir,
        [
            "MODEL.ATSS.INFERENCE_TH", 0.0,
            "MODEL.LANGUAGE.PAD_TO_MAX", False,
            "INPUT.MIN_SIZE_TEST", 128,
            "INPUT.MAX_SIZE_TEST", 192,
            *opts,
        ],
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_cfg_demo(synthetic_data):
    return tiny_demo_config(synthetic_data["paths"]["tokenizer"])


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg_demo):
    torch.manual_seed(0)
    return build_model(tiny_cfg_demo).eval()


@pytest.fixture(scope="session")
def predictor(tiny_cfg_demo, tiny_model):
    return FIBERPredictor(tiny_cfg_demo, model=tiny_model, batch_size=1)
