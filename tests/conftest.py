"""Shared fixtures: an offline tokenizer, the tiny config and the parity fixtures."""

import sys

import pytest
import torch

from fiber_det.utils.testing import build_test_tokenizer, get_tiny_config, parity_dir


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
