#!/usr/bin/env python
"""Print the differences that tests/modeling/test_coarse_parity.py measures against the official
coarse-grained fixtures (shared/parity/coarse/*.pt), as the README's stage-1 parity table.

    PYTHONPATH=$PWD python dev/coarse_parity_table.py

Runs that test file under pytest, recording every value its ``_max_diff`` (features, similarities,
weights, logits: max abs diff) and ``_assert_loss`` (losses: relative difference) compare, then
prints one row per compared quantity (the worst over the fixtures). Needs the parity fixtures
(``$FIBER_PARITY_DIR`` or ``../shared/parity``).
"""

import inspect
import re
import sys
from collections import OrderedDict

import pytest

import tests.modeling.test_coarse_parity as parity_test
from tests.paths import REPO_ROOT

RECORDS: "OrderedDict[str, tuple]" = OrderedDict()
_max_diff, _assert_loss = parity_test._max_diff, parity_test._assert_loss


def _label(frame_offset: int = 2) -> str:
    """The compared quantity, from the calling assert: its ``ref[...]`` key (or the line)."""
    frame = inspect.stack()[frame_offset]
    line = (frame.code_context or [""])[0].strip()
    key = re.search(r"ref\[\"(\w+)\"\]", line)
    return key.group(1) if key else line


def _spy_max_diff(a, b) -> float:
    d = _max_diff(a, b)
    label = _label()
    RECORDS[label] = ("max abs diff", max(d, RECORDS.get(label, ("", 0.0))[1]))
    return d


def _spy_assert_loss(ours, ref, name) -> None:
    rel = abs(float(ours) - float(ref)) / max(abs(float(ref)), 1e-12)
    label = f"loss {name}: {float(ref):.6f}"
    RECORDS[label] = ("relative diff", max(rel, RECORDS.get(label, ("", 0.0))[1]))
    _assert_loss(ours, ref, name)


def main() -> int:
    parity_test._max_diff = _spy_max_diff
    parity_test._assert_loss = _spy_assert_loss
    test_file = str(REPO_ROOT / "tests" / "modeling" / "test_coarse_parity.py")
    code = pytest.main([test_file, "-q", "-p", "no:cacheprovider"])
    print(f"\n| quantity | measure | worst over {len(parity_test.FIXTURES)} fixture(s) |")
    print("| --- | --- | --- |")
    for label, (measure, value) in RECORDS.items():
        print(f"| {label} | {measure} | {value:.2e} |")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
