"""keep_freed_memory: freed tensors' pages are reused instead of zero-filled again by the OS."""

import json
import os
import subprocess
import sys

import pytest

from fiber_det.utils.allocator import KEEP_FREED_MEMORY_ENV

PAGES = 32 * 2**20 // 4096  # 4 kB pages of the probe's 32 MB tensor
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")

# An op on a 32 MB tensor (just above glibc's largest dynamic mmap threshold), repeated: with
# glibc's defaults every output is a fresh mapping (8,192 faults of 4 kB each time); with freed
# memory kept, outputs reuse the pages of earlier ones. Not every time: now and then an output
# still lands on fresh heap pages (2 of about 15 runs here, half the repeats faulting), so
# the probe reports the fewest faults of one repeat, and the control must fault in every repeat.
_PROBE = """
import json, resource, sys
import torch
from fiber_det.utils.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.ones(2**23)  # 32 MB of fp32
y = torch.relu(x)
del y
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.relu(x)
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": min(faults)}))
"""


def _probe(mode: str, env=None) -> dict:
    # on unless the test says otherwise (tests/conftest.py turns it off for the test process)
    env = env or {**os.environ, KEEP_FREED_MEMORY_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_reuses_pages():
    default = _probe("default")
    kept = _probe("keep")
    assert kept["applied"] is True
    # the control shows the cost being removed (else this test could not fail)
    assert default["faults"] >= PAGES // 2, default
    assert kept["faults"] < PAGES // 16, kept


def test_keep_freed_memory_can_be_turned_off():
    env = {**os.environ, KEEP_FREED_MEMORY_ENV: "0"}
    off = _probe("keep", env=env)
    assert off["applied"] is False
    assert off["faults"] >= PAGES // 2, off
