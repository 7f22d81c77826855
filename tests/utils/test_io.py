"""Safe checkpoint reads (fiber_det.utils.io.load_torch_file) and the tools that use them."""

import argparse
import importlib.util

import pytest
import torch

from fiber_det.utils.io import load_torch_file
from tests.paths import REPO_ROOT


@pytest.fixture
def pickled(tmp_path):
    """A checkpoint holding a Python object besides its tensors (as Lightning files do)."""
    path = tmp_path / "with_objects.pth"
    torch.save({"model": {"w": torch.ones(2)}, "hparams": argparse.Namespace(lr=1.0)}, path)
    return path


def test_tensors_only_by_default(pickled, tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.arange(3)}, plain)
    assert torch.equal(load_torch_file(plain)["w"], torch.arange(3))
    with pytest.raises(ValueError, match="besides tensors.*rerun with --x"):
        load_torch_file(pickled, hint="rerun with --x")
    assert load_torch_file(pickled, allow_pickle=True)["hparams"].lr == 1.0
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_torch_file(tmp_path / "missing.pth")


def test_converters_name_their_opt_in_flag(pickled, tmp_path):
    from fiber_det.checkpoint.coarse import read_coarse_checkpoint

    with pytest.raises(ValueError, match="--allow-pickle"):
        read_coarse_checkpoint(pickled)
    spec = importlib.util.spec_from_file_location(
        "convert_fiber", REPO_ROOT / "tools/convert_fiber_checkpoint.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit, match="--allow-pickle"):
        tool.main([str(pickled), str(tmp_path / "out.pth"), "--no-model-check"])
    assert not (tmp_path / "out.pth").exists()
