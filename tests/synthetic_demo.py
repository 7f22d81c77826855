"""The small synthetic demo dataset of the tests and the tiny config that returns boxes."""

from fiber_det.demo.synthetic import SyntheticSpec
from fiber_det.utils.testing import get_tiny_config

SMALL_SPEC = SyntheticSpec(seed=3, num_train=12, num_val=6, captions_train=2)
PREFIX = "fiber_demo_test"


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
