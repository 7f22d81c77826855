"""Stage 1 -> stage 2: a FIBERCoarse checkpoint written by tools/train_net.py initialises the
detector through MODEL.WEIGHTS with every backbone tensor it can give (counted per component);
only the detection parts (Swin output norms feeding the FPN, the FPN, the head) start from
scratch."""

import re
from collections import Counter

import torch
from detectron2.engine import default_argument_parser

from fiber_det.checkpoint.coarse import to_official_coarse_state_dict
from fiber_det.engine import Trainer
from fiber_det.utils.testing import get_config
from tests.paths import REPO_ROOT, load_tool

from .coarse_data import write_colour_pairs

NAME = "fiber_test_handoff_pairs"
DETECTION_ONLY = {"swin output norms (detection)", "fpn", "head"}


def _component(key: str) -> str:
    """The detector's parts, named independently of the converter's own classification."""
    if re.match(r"backbone\.body\.norm\d+\.", key):
        return "swin output norms (detection)"
    if key.startswith("backbone.body."):
        return "swin i2t fusion" if "_i2t" in key else "swin"
    if key.startswith("backbone.language."):
        return "roberta t2i fusion" if "_t2i" in key else "roberta"
    return "fpn" if key.startswith("backbone.fpn.") else "head"


def _stage1(tmp_path, tokenizer_dir):
    write_colour_pairs(tmp_path / "pairs", NAME)
    out = tmp_path / "stage1"
    opts = [
        "MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir), "DATASETS.TRAIN", f"('{NAME}',)",
        "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    config = str(REPO_ROOT / "configs/tiny/coarse_tiny_train.yaml")
    args = default_argument_parser().parse_args(["--config-file", config, *opts])
    load_tool("train_net").main(args)
    return out / "model_final.pth"


def test_a_stage1_checkpoint_initialises_every_backbone_tensor_of_stage2(
    tmp_path, tokenizer_dir, shapes_data
):
    weights = _stage1(tmp_path, tokenizer_dir)
    stage1 = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    assert any(k.startswith("cross_modal_") for k in stage1)  # a FIBERCoarse checkpoint

    # stage 2 through the Trainer: train_net.py ... MODEL.WEIGHTS <stage 1>/model_final.pth
    cfg = get_config(
        "tiny/fiber_tiny_train.yaml",
        ["MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir), "MODEL.WEIGHTS", str(weights),
         "DATASETS.TRAIN", f"('{shapes_data['det']}',)", "OUTPUT_DIR", str(tmp_path / "stage2")],
    )  # fmt: skip
    trainer = Trainer(cfg)
    model = trainer.model
    scratch = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    (report,) = trainer.init_reports
    own = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    # what the detector can get from stage 1: its Swin (i2t fusion included; the coarse v3
    # query norms exist in the detector only when it is v3) and RoBERTa (t2i fusion included)
    expected = Counter(_component(k) for k in own if _component(k) not in DETECTION_ONLY)
    assert report.loaded == expected, report.format()
    written = (tmp_path / "stage2" / "initialization.txt").read_text()
    assert f"loaded {sum(expected.values())} tensors" in written
    assert min(expected.values()) > 0 and set(expected) == {
        "swin",
        "swin i2t fusion",
        "roberta",
        "roberta t2i fusion",
    }
    # nothing the detector should get from stage 1 starts from scratch
    assert set(report.missing) == DETECTION_ONLY, report.format()
    # the values are stage 1's (window-resized position tables aside), not the initial ones
    official = to_official_coarse_state_dict(stage1)
    loaded = 0
    for key, value in own.items():
        if _component(key) in DETECTION_ONLY:
            assert torch.equal(value, scratch[key]), key
            continue
        src = (
            ("vit_model." + key[len("backbone.body.") :])
            if key.startswith("backbone.body.")
            else ("text_transformer." + key[len("backbone.language.") :])
        )
        if key in report.resized:
            assert value.shape != official[src].shape
            continue
        assert torch.equal(value, official[src]), key
        loaded += 1
    assert loaded + len(report.resized) == sum(expected.values())
    assert report.resized  # the tiny coarse window (2) is not the detector's (4)
    # the coarse-only heads are reported as skipped, not silently lost
    skipped = " ".join(report.skipped)
    assert "coarse-only modules" in skipped
