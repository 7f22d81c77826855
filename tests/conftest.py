"""Shared fixtures: an offline tokenizer, the tiny config, the parity fixtures, small training
data (shapes) and the synthetic demo data with a tiny model and its predictor."""

import os
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import fiber_det  # noqa: F401  registers the builtin datasets and the model
from fiber_det.data import register_detection_dataset, register_grounding_dataset
from fiber_det.demo.synthetic import generate_synthetic_dataset, register_synthetic_datasets
from fiber_det.predictor import FIBERPredictor
from fiber_det.utils.allocator import KEEP_FREED_MEMORY_ENV
from fiber_det.utils.testing import build_test_tokenizer, get_config, get_tiny_config
from tests.paths import parity_dir
from tests.shapes import write_shapes_dataset
from tests.synthetic_demo import PREFIX, SMALL_SPEC, tiny_demo_config

DET, GRD = "fiber_engine_test_shapes", "fiber_engine_test_shapes_grounding"

# Tools run in-process by the tests (tools/benchmark.py main, ...) would otherwise switch the
# whole pytest process to keep freed memory (fiber_det/utils/allocator.py), changing the RSS
# that later tests measure; tests/utils/test_allocator.py turns it on in its own subprocesses.
os.environ[KEEP_FREED_MEMORY_ENV] = "0"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    build_test_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from fiber_det.text import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture
def tiny_cfg(tokenizer_dir):
    return get_tiny_config(tokenizer_dir)


@pytest.fixture(scope="session")
def parity():
    """The parity module (synth_state_dict) and the fixture files; skipped if absent."""
    d = parity_dir()
    if not (d / "synth_state_dict.py").is_file():
        pytest.skip(f"parity fixtures not found in {d} (set FIBER_PARITY_DIR)")
    sys.path.insert(0, str(d))
    import synth_state_dict  # noqa: E402

    return d, synth_state_dict


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """8 images with a red circle and a blue square: COCO json and MDETR json, registered as
    ``fiber_engine_test_shapes`` (detection) and ``fiber_engine_test_shapes_grounding``."""
    paths = write_shapes_dataset(tmp_path_factory.mktemp("shapes"))
    for name in (DET, GRD):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_detection_dataset(DET, paths["det_json"], paths["images"], "coco", train_prompt="full")
    register_grounding_dataset(GRD, paths["grounding_json"], paths["images"], "grounding")
    paths.update(det=DET, grounding=GRD)
    return paths


@pytest.fixture
def train_cfg(tokenizer_dir, shapes_data, tmp_path):
    """A factory of tiny training configs (configs/tiny/fiber_tiny_train.yaml) on shapes_data."""

    def make(*opts, output_dir=None):
        cfg = get_config(
            "tiny/fiber_tiny_train.yaml",
            [
                "MODEL.LANGUAGE.TOKENIZER",
                str(tokenizer_dir),
                "DATASETS.TRAIN",
                f"('{DET}',)",
                "OUTPUT_DIR",
                str(output_dir or tmp_path / "out"),
                *opts,
            ],
        )
        return cfg

    return make


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """``{"paths": ..., "names": ..., "spec": ...}`` of a 12 + 6 image synthetic dataset."""
    root = tmp_path_factory.mktemp("synthetic")
    paths = generate_synthetic_dataset(root, SMALL_SPEC)
    names = register_synthetic_datasets(root, prefix=PREFIX)
    return {"paths": paths, "names": names, "spec": SMALL_SPEC, "root": root}


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
