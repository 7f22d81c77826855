"""FIBERCheckpointer: every weights format through one safe reader; files that would run code or
that do not fit the model are refused with the fix in the message."""

import os
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image
from safetensors.torch import save_file

from fiber_det.checkpoint import CheckpointError, FIBERCheckpointer, build_and_load_model
from fiber_det.predictor import FIBERPredictor
from fiber_det.utils.testing import get_tiny_config
from tests.paths import load_tool


class _Payload:
    """Unpickling this object creates ``marker``: the stand-in for code run by a hostile file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return build_model(tiny_cfg)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _hostile_files(tmp_path, model):
    marker = tmp_path / "code_was_run"
    pkl = tmp_path / "hostile.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": _weights(model), "payload": _Payload(marker)}, f)
    pth = tmp_path / "hostile.pth"
    torch.save({"model": _weights(model), "payload": _Payload(marker)}, pth)
    return marker, pkl, pth


def test_files_that_would_run_code_are_refused_and_run_nothing(tmp_path, model):
    marker, pkl, pth = _hostile_files(tmp_path, model)
    for path in (pkl, pth):
        with pytest.raises(
            ValueError, match="MODEL.WEIGHTS_ALLOW_PICKLE True; tools: --allow-pickle"
        ):
            FIBERCheckpointer(model).load(str(path))
        assert not marker.exists(), f"loading {path.name} ran code from the file"


def test_the_named_opt_in_loads_a_trusted_pickle(tmp_path, model, tiny_cfg):
    trusted = tmp_path / "trusted.pkl"
    other = build_model(tiny_cfg)
    with open(trusted, "wb") as f:  # detectron2 model-zoo style: numpy arrays in a pickle
        pickle.dump({"model": {k: v.numpy() for k, v in _weights(other).items()}}, f)
    FIBERCheckpointer(model, allow_pickle=True).load(str(trusted))
    for k, v in other.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_predictor_and_demo_tool_refuse_a_hostile_weights_file(tmp_path, model, tokenizer_dir):
    marker, pkl, pth = _hostile_files(tmp_path, model)
    opts = ["MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir)]
    with pytest.raises(ValueError, match="allow_pickle=True"):
        FIBERPredictor.from_files("tiny/fiber_tiny.yaml", str(pth), opts, device="cpu")
    demo_tool = load_tool("demo")
    image = tmp_path / "img.png"
    Image.new("RGB", (64, 64)).save(image)
    code = demo_tool.main(
        ["--config-file", "tiny/fiber_tiny.yaml", "--weights", str(pkl), "--input", str(image),
         "--categories", "cat", "--output", str(tmp_path / "out"), "--cpu", *opts]
    )  # fmt: skip
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists()


def test_a_file_of_another_model_is_an_error_not_a_random_model(tmp_path, model, tokenizer_dir):
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"fc.weight": torch.randn(3, 3), "fc.bias": torch.randn(3)}}, unrelated)
    with pytest.raises(CheckpointError, match="only 0 of its 2 tensors fit the model"):
        FIBERCheckpointer(model).load(str(unrelated))
    sizes = ["MODEL.SWIN.EMBED_DIM", 48, "MODEL.FPN.OUT_CHANNELS", 48, "MODEL.DYHEAD.CHANNELS", 48]
    wider = get_tiny_config(tokenizer_dir, sizes)
    other = tmp_path / "other_architecture.pth"
    torch.save({"model": build_model(wider).state_dict()}, other)
    with pytest.raises(CheckpointError, match="another model or architecture"):
        FIBERCheckpointer(model).load(str(other))


def test_lightning_and_safetensors_files_of_the_model(tmp_path, model, tiny_cfg):
    source = build_model(tiny_cfg)
    lightning = tmp_path / "run.ckpt"
    torch.save({"state_dict": _weights(source), "epoch": 3, "global_step": 30}, lightning)
    safe = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in _weights(source).items()}, str(safe))
    for path in (lightning, safe):
        torch.manual_seed(1)
        target = build_model(tiny_cfg)
        FIBERCheckpointer(target).load(str(path))
        for k, v in source.state_dict().items():
            assert torch.equal(target.state_dict()[k], v), (path.name, k)


def test_swin_and_roberta_files_load_into_their_encoder_only(tmp_path, model, tiny_cfg):
    donor = build_model(tiny_cfg)
    swin = {**donor.backbone.body.state_dict(), "head.weight": torch.zeros(2, 2)}
    roberta = {"roberta." + k: v for k, v in donor.backbone.language.state_dict().items()}
    before = _weights(model)
    for name, state in (("swin.pth", {"model": swin}), ("roberta.bin", roberta)):
        torch.save(state, tmp_path / name)
        ckpt = FIBERCheckpointer(model)
        ckpt.load(str(tmp_path / name))
        assert ckpt.last_conversion_report.num_loaded > 10
    after = model.state_dict()
    for k, v in after.items():
        prefix = k.split(".")[:2]
        if prefix in (["backbone", "body"], ["backbone", "language"]) and v.is_floating_point():
            assert torch.equal(v, donor.state_dict()[k]), k
        elif k.startswith(("head.", "backbone.fpn.")):
            assert torch.equal(v, before[k]), k  # not in the files: untouched


def test_build_and_load_model_reads_weights_and_names_a_missing_file(tmp_path, tiny_cfg):
    torch.manual_seed(2)
    source = build_model(tiny_cfg)
    path = tmp_path / "model_final.pth"
    torch.save({"model": _weights(source)}, path)
    cfg = tiny_cfg.clone()
    cfg.MODEL.WEIGHTS = str(path)
    loaded = build_and_load_model(cfg)
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_and_load_model(cfg)
    assert not os.path.exists(tmp_path / "missing.pth")
