"""Engine-test fixtures: synthetic shapes data (registered once) and tiny training configs."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import fiber_det  # noqa: F401  registers the builtin datasets
from fiber_det.data import register_detection_dataset, register_grounding_dataset
from fiber_det.utils.testing import get_config

from .synthetic import write_shapes_dataset

DET, GRD = "fiber_engine_test_shapes", "fiber_engine_test_shapes_grounding"


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


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP threads spinning against other
    processes make some training steps 20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
