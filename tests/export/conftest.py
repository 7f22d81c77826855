"""Export-test fixtures: the tiny model with weights on disk, its graphs, images at graph size.

The tiny model has random weights with the fusion gates opened (so that the prompt matters) and
``MODEL.ATSS.INFERENCE_TH`` 0 (so that it returns boxes). Its test resize keeps a 256x320 image
as it is, so images of that size run at the graphs' padded size: the exact PyTorch numbers.
"""

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fiber_det.utils.testing import get_tiny_config
from tests.paths import load_tool

HEIGHT, WIDTH = 256, 320
VOCABULARY = ["red circle", "blue square", "dog", "green star", "cat"]


def tiny_images(count: int, seed: int = 0):
    """(HEIGHT, WIDTH, 3) uint8 BGR images: noise with a coloured rectangle."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        img = (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
        y, x = rng.integers(0, 100), rng.integers(0, 120)
        img[y : y + 120, x : x + 150] = rng.integers(0, 256, 3)
        images.append(img)
    return images


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, tokenizer_dir):
    """(config.yaml, weights.pth) of the tiny model; the config chunks 2 names per prompt."""
    cfg = get_tiny_config(
        tokenizer_dir, ["MODEL.ATSS.INFERENCE_TH", 0.0, "TEST.FIBER.CHUNK_SIZE", 2]
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.5)
    out = tmp_path_factory.mktemp("tiny_model")
    DetectionCheckpointer(model, save_dir=str(out)).save("tiny")
    config = out / "config.yaml"
    config.write_text(cfg.dump())
    return str(config), str(out / "tiny.pth")


@pytest.fixture(scope="session")
def full_graph(model_files, tmp_path_factory):
    """The tiny model exported for free prompts (through tools/export_onnx.py)."""
    config, weights = model_files
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    args = ["--config-file", config, "--weights", weights, "--output", str(path)]
    args += ["--height", str(HEIGHT), "--width", str(WIDTH)]
    assert load_tool("export_onnx").main(args) == 0
    return str(path)


@pytest.fixture(scope="session")
def vocabulary_graph(model_files, tmp_path_factory):
    """The tiny model with VOCABULARY fixed (3 prompts of 2 names); a config override follows
    the names, as the contract's ``[--vocabulary NAME ...] [KEY VALUE ...]`` allows."""
    config, weights = model_files
    path = tmp_path_factory.mktemp("onnx") / "tiny_vocab.onnx"
    args = ["--config-file", config, "--weights", weights, "--output", str(path)]
    args += ["--height", str(HEIGHT), "--width", str(WIDTH), "--vocabulary", *VOCABULARY]
    assert load_tool("export_onnx").main(args + ["MODEL.DEVICE", "cpu"]) == 0
    return str(path)
