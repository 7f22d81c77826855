"""Fixtures of the evaluation tests: datasets registered per test and removed afterwards."""

import pytest

from . import cases


@pytest.fixture(autouse=True)
def _unregister_datasets():
    yield
    cases.unregister_all()


@pytest.fixture
def run_online():
    """Feed (inputs, outputs) to an evaluator in batches of one, as ``inference_on_dataset``."""

    def _run(evaluator, inputs, outputs):
        evaluator.reset()
        for inp, out in zip(inputs, outputs):
            evaluator.process([inp], [out])
        return evaluator.evaluate()

    return _run
