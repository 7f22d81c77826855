"""Engine-test settings: one intra-op thread."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP threads spinning against other
    processes make some training steps 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
