"""ONNX export of the tiny FIBER: onnxruntime gives PyTorch's detections (same labels, scores
within 1e-4, boxes within 0.01 px), the fixed-vocabulary graph those of the full graph, and
tools/demo.py --onnx the outputs of --weights; wrong sizes and prompts get clear errors."""

import json
import os

import numpy as np
import onnx
import pytest

from fiber_det.config import load_config
from fiber_det.export import OnnxPredictor
from fiber_det.export.exporter import METADATA_KEY
from fiber_det.predictor import FIBERPredictor
from fiber_det.utils.testing import unmatched_instances
from tests.paths import load_tool

from .conftest import HEIGHT, VOCABULARY, WIDTH, tiny_images

pytestmark = pytest.mark.slow

PROMPTS = [
    ["red circle", "blue square", "dog"],
    "a small red circle left of a blue square",
    VOCABULARY,  # 3 prompts of 2 names (TEST.FIBER.CHUNK_SIZE 2): labels merged across chunks
]


@pytest.fixture(scope="module")
def torch_predictor(model_files):
    config, weights = model_files
    return FIBERPredictor(load_config(config, weights=weights, device="cpu"), batch_size=1)


@pytest.fixture(scope="module")
def onnx_predictor(model_files, full_graph):
    config, _ = model_files
    return OnnxPredictor.from_files(config, full_graph, batch_size=1)


def _assert_same(a, b, what):
    assert len(a) > 0, f"{what}: no detections, nothing compared"
    assert a.labels == b.labels or sorted(a.labels) == sorted(b.labels), what
    missing = unmatched_instances(a.to_instances(), b.to_instances(), box_tol=0.01, score_tol=1e-4)
    assert not missing, f"{what}: {len(missing)} detections differ, e.g. {missing[:2]}"


@pytest.mark.parametrize("prompt", PROMPTS, ids=["categories", "caption", "chunked"])
def test_onnxruntime_gives_the_pytorch_detections(torch_predictor, onnx_predictor, prompt):
    for i, image in enumerate(tiny_images(2, seed=1)):
        a, b = torch_predictor(image, prompt), onnx_predictor(image, prompt)
        assert a.label_names == b.label_names
        _assert_same(a, b, f"image {i}")
        assert b.image_size == (HEIGHT, WIDTH)


def test_fixed_vocabulary_graph_gives_the_full_graphs_detections(
    model_files, full_graph, vocabulary_graph
):
    config, _ = model_files
    full = OnnxPredictor.from_files(config, full_graph)
    fixed = OnnxPredictor.from_files(config, vocabulary_graph)
    meta = json.loads(
        {p.key: p.value for p in onnx.load(vocabulary_graph).metadata_props}[METADATA_KEY]
    )
    assert meta["fixed_vocabulary"]["names"] == VOCABULARY
    assert len(meta["fixed_vocabulary"]["captions"]) == 3  # chunks of 2 names
    assert {i.name for i in fixed.model.session.get_inputs()} == {"image", "image_size"}
    for image in tiny_images(2, seed=2):
        a, b = full(image, VOCABULARY), fixed(image)  # no prompt: the stored vocabulary
        _assert_same(a, b, "fixed vs full")
        assert set(b.labels) <= set(VOCABULARY)
    with pytest.raises(ValueError, match="fixed vocabulary"):
        fixed(tiny_images(1)[0], ["red circle", "dog"])


def test_images_of_another_size(onnx_predictor, torch_predictor, model_files, full_graph):
    """Smaller images are zero-padded up to the graph (close to, not exactly, PyTorch's
    numbers); without pad_to_graph, and for larger images, a clear error."""
    small = tiny_images(1)[0][:200, :300]  # resized to 213x320, padded to 224x320 in PyTorch
    pred = onnx_predictor(small, ["red circle", "dog"])
    assert pred.image_size == (200, 300) and len(pred) > 0
    ref = torch_predictor(small, ["red circle", "dog"])
    assert (pred.scores[:10] - ref.scores[:10]).abs().max() < 0.05
    config, _ = model_files
    strict = OnnxPredictor.from_files(config, full_graph, pad_to_graph=False)
    with pytest.raises(ValueError, match=r"--height 224 --width 320"):
        strict(small, ["dog"])
    tall = np.zeros((400, 300, 3), dtype=np.uint8)  # resized to 320x240 > 256 rows
    with pytest.raises(ValueError, match="exported for 256x320"):
        onnx_predictor(tall, ["dog"])


def test_export_refuses_bad_arguments(model_files, tmp_path, capsys):
    config, weights = model_files
    before = os.path.getsize(weights)
    tool = load_tool("export_onnx")
    base = ["--config-file", config, "--weights", weights, "--height", "256", "--width", "320"]
    assert tool.main(base + ["--output", weights]) == 2
    assert "is the --weights file" in capsys.readouterr().err
    assert os.path.getsize(weights) == before
    out = tmp_path / "x.onnx"
    bad = ["--config-file", config, "--weights", weights, "--output", str(out)]
    assert tool.main(bad + ["--height", "250", "--width", "320"]) == 2
    assert "multiples of MODEL.FIBER.SIZE_DIVISIBILITY (32)" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_demo_with_onnx_writes_the_outputs_of_weights(model_files, full_graph, tmp_path):
    from PIL import Image

    config, weights = model_files
    inputs = []
    for i, image in enumerate(tiny_images(2, seed=3)):
        inputs.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(image[:, :, ::-1]).save(inputs[-1])
    demo = load_tool("demo")
    results = {}
    for name, model in (("weights", ["--weights", weights]), ("onnx", ["--onnx", full_graph])):
        out = tmp_path / name
        args = ["--config-file", config, *model, "--input", *inputs, "--output", str(out)]
        args += ["--categories", "red circle", "dog", "--confidence-threshold", "0.0"]
        assert demo.main(args) == 0
        assert sorted(os.listdir(out)) == sorted(
            ["predictions.json", "img0.jpg", "img0.json", "img1.jpg", "img1.json"]
        )
        results[name] = json.loads((out / "predictions.json").read_text())
    a, b = results["weights"], results["onnx"]
    assert a["labels"] == b["labels"] and a["prompt"] == b["prompt"]
    for ia, ib in zip(a["images"], b["images"]):
        assert len(ia["detections"]) == len(ib["detections"]) > 0
        unmatched = list(ib["detections"])
        for x in ia["detections"]:  # one-to-one; near-equal scores may come in either order
            match = next(
                (
                    y
                    for y in unmatched
                    if x["label"] == y["label"]
                    and abs(x["score"] - y["score"]) <= 2e-5  # JSON rounds scores to 5 decimals
                    and np.allclose(x["box"], y["box"], atol=0.011)  # and boxes to 0.01 px
                ),
                None,
            )
            assert match is not None, f"no ONNX detection matches {x}"
            unmatched.remove(match)
    Image.fromarray(np.zeros((400, 300, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    args = ["--config-file", config, "--onnx", full_graph, "--input", str(tmp_path / "tall.png")]
    assert demo.main(args + ["--output", str(tmp_path / "tall"), "--categories", "dog"]) == 2


def test_graph_runs_in_a_bare_onnxruntime_session(full_graph):
    """The graph alone (no fiber_det, no torch): numpy in, dense outputs of the documented
    shapes out."""
    import onnxruntime as ort

    session = ort.InferenceSession(full_graph, providers=["CPUExecutionProvider"])
    ids = np.array([[0, 5, 6, 7, 2]], dtype=np.int64)
    boxes, scores, ctr = session.run(
        None,
        {
            "image": np.zeros((1, 3, HEIGHT, WIDTH), np.float32),
            "image_size": np.array([HEIGHT, WIDTH], np.int64),
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "positive_map": np.array([[0, 1, 1, 0, 0], [0, 0, 0, 1, 0]], np.float32),
        },
    )
    # P3..P7 of 256x320: 32x40 + 16x20 + 8x10 + 4x5 + 2x3 anchors
    assert boxes.shape == (1, 1706, 4) and scores.shape == (1, 1706, 2) and ctr.shape == (1, 1706)
    assert np.isfinite(boxes).all() and ((scores >= 0) & (scores <= 1)).all()


def test_export_where_a_swin_stage_is_one_window(model_files, tmp_path):
    """128x160: the last stage is 4x5 tokens, one 4-token window high, so the first region of
    the shifted-window mask is empty along that axis (FIBER-B has the same at 320x448)."""
    from fiber_det.checkpoint import build_and_load_model
    from fiber_det.export import export_onnx

    config, weights = model_files
    cfg = load_config(config, weights=weights, device="cpu")
    out = tmp_path / "small.onnx"
    report = export_onnx(build_and_load_model(cfg), cfg, str(out), height=128, width=160)
    assert out.is_file() and report.level_sizes[2] == 4 * 5
    assert report.max_abs_diff["label_scores"] < 1e-5 and report.max_abs_diff["boxes"] < 1e-3
