"""tools/demo.py: inputs from files, folders and globs; a picture and a JSON per image whose
detections are the predictor's; unreadable images skipped and reported; clear errors."""

import json
import logging
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from PIL import Image

from fiber_det.demo import collect_images
from tests.paths import load_tool


def _tool(name):
    return load_tool(name)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_cfg_demo, tiny_model):
    """The tiny model's config (yaml) and weights (.pth) on disk."""
    out = tmp_path_factory.mktemp("tiny_model")
    DetectionCheckpointer(tiny_model, save_dir=str(out)).save("tiny")
    config = out / "config.yaml"
    config.write_text(tiny_cfg_demo.dump())
    return str(config), str(out / "tiny.pth")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, synthetic_data):
    """Two synthetic images in a folder."""
    out = tmp_path_factory.mktemp("images")
    records = DatasetCatalog.get(synthetic_data["names"]["detection_val"])[:2]
    for r in records:
        Image.open(r["file_name"]).save(out / os.path.basename(r["file_name"]))
    return out


def test_collect_images_from_files_folders_and_globs(image_dir, tmp_path):
    files = sorted(str(p) for p in image_dir.iterdir())
    (image_dir / "readme.txt").write_text("not an image")
    assert collect_images([str(image_dir)]) == files
    assert collect_images([str(image_dir / "*.png"), files[0]]) == files  # no duplicates
    assert collect_images([files[1]]) == [files[1]]
    with pytest.raises(FileNotFoundError, match="--input .*missing"):
        collect_images([str(tmp_path / "missing")])
    (image_dir / "readme.txt").unlink()


def test_cli_writes_pictures_and_the_predictors_detections(
    model_files, image_dir, tmp_path, predictor
):
    config, weights = model_files
    out = tmp_path / "out"
    files = sorted(image_dir.iterdir())
    names = ["red circle", "blue square"]
    expected = {f: predictor(str(f), names) for f in files}
    threshold = float(expected[files[0]].scores.median())  # random weights: low scores
    code = _tool("demo").main(
        [
            "--config-file", config, "--weights", weights, "--input", str(image_dir),
            "--categories", "red circle, blue square", "--output", str(out), "--cpu",
            "--confidence-threshold", str(threshold), "--batch-size", "1",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["labels"] == ["red circle", "blue square"] and not summary["failures"]
    for f, record in zip(files, summary["images"]):
        assert (out / f"{f.stem}.jpg").is_file()
        assert json.loads((out / f"{f.stem}.json").read_text()) == record
        pred = expected[f]
        keep = (pred.scores >= threshold).nonzero().flatten().tolist()
        assert 0 < len(record["detections"]) == len(keep) < len(pred)
        for det, i in zip(record["detections"], keep):
            assert det["label"] == pred.labels[i]
            assert det["score"] == pytest.approx(float(pred.scores[i]), abs=1e-4)
            assert det["box"] == pytest.approx(pred.boxes[i].tolist(), abs=0.02)
        with Image.open(out / f"{f.stem}.jpg") as pic:
            assert pic.size == Image.open(f).size


def test_cli_grounding_prompt_and_unreadable_images(model_files, image_dir, tmp_path):
    config, weights = model_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code = _tool("demo").main(
        [
            "--config-file", config, "--weights", weights, "--output", str(out),
            "--input", str(image_dir / "*.png"), str(bad),
            "--prompt", "a red circle above a blue star",
        ]
    )  # fmt: skip
    assert code == 1  # one image could not be read; the others are written
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["labels"] == ["red circle", "blue star"]
    assert len(summary["images"]) == 2 and not (out / "broken.jpg").exists()
    assert summary["failures"][0]["file_name"] == str(bad)
    assert "cannot read" in summary["failures"][0]["error"]


def test_cli_reports_bad_arguments(model_files, image_dir, tmp_path, capsys):
    config, weights = model_files
    common = ["--config-file", config, "--weights", weights, "--output", str(tmp_path / "o")]
    assert _tool("demo").main([*common, "--input", str(image_dir), "--prompt", " "]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert _tool("demo").main([*common, "--input", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert "--input" in capsys.readouterr().err
    missing = ["--weights", str(tmp_path / "none.pth")]
    args = ["--config-file", config, *missing, "--input", str(image_dir), "--prompt", "a"]
    assert _tool("demo").main([*args, "--output", str(tmp_path / "o")]) == 2
    assert "none.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --prompt and --categories together
        _tool("demo").parse_args([*common, "--input", "x", "--prompt", "a", "--categories", "b"])
    assert torch.is_grad_enabled()


def test_output_names_are_distinct_whatever_the_inputs():
    from fiber_det.demo import output_names

    files = ["a/x.png", "b/x.png", "a/x_1.png", "c/X.PNG", "d/predictions.jpg", "e/y.jpg"]
    assert output_names(files) == ["x", "x_1", "x_1_1", "X_2", "predictions_1", "y"]


def test_cli_refuses_an_output_folder_that_is_or_holds_its_inputs(
    model_files, image_dir, tmp_path, capsys
):
    config, weights = model_files
    common = ["--config-file", config, "--weights", weights, "--prompt", "a red circle"]
    before = sorted(p.name for p in image_dir.iterdir())
    for inputs, output, message in [
        ([str(image_dir)], image_dir, "output folder .* holds the input"),
        ([str(image_dir / "*.png")], image_dir, "holds the input"),
        ([str(image_dir.parent / "*" / "*.png")], image_dir.parent / "out", "matches files"),
    ]:
        code = _tool("demo").main([*common, "--input", *inputs, "--output", str(output)])
        assert code == 2
        err = capsys.readouterr().err
        assert "refusing to write" in err and message.split(".*")[-1] in err
    assert sorted(p.name for p in image_dir.iterdir()) == before  # nothing written
    assert not (image_dir.parent / "out").exists()


def test_outputs_never_overwrite_the_config_or_the_weights(image_dir, tmp_path):
    from fiber_det.demo import check_demo_outputs
    from fiber_det.utils.io import OutputCollisionError

    files = sorted(str(p) for p in image_dir.iterdir())
    clash = tmp_path / "out" / f"{os.path.splitext(os.path.basename(files[0]))[0]}.json"
    with pytest.raises(OutputCollisionError, match=r"the output .*\.json is the input"):
        check_demo_outputs(files, str(tmp_path / "out"), protected=[str(clash)])
    check_demo_outputs(files, str(tmp_path / "out"), protected=[str(tmp_path / "config.yaml")])


def test_cli_same_names_get_distinct_outputs(model_files, image_dir, tmp_path):
    config, weights = model_files
    src = sorted(image_dir.iterdir())[0]
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(src.read_bytes())
    (tmp_path / "one" / "x_1.png").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    inputs = [str(tmp_path / "one"), str(tmp_path / "two")]
    args = ["--config-file", config, "--weights", weights, "--prompt", "a red circle"]
    assert _tool("demo").main([*args, "--input", *inputs, "--output", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    written = {
        json.loads((out / f"{n}.json").read_text())["file_name"] for n in ("x", "x_1", "x_2")
    }
    assert written == {r["file_name"] for r in summary["images"]} and len(written) == 3
    assert all((out / f"{n}.jpg").is_file() for n in ("x", "x_1", "x_2"))


def test_cli_skips_degenerate_and_oversized_images_and_says_so(
    model_files, image_dir, tmp_path, caplog, monkeypatch
):
    config, weights = model_files
    good = sorted(image_dir.iterdir())
    width, height = Image.open(good[0]).size
    Image.new("RGB", (1, 40)).save(tmp_path / "thin.png")
    Image.new("RGB", (3 * width, 3 * height)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", width * height)  # huge: 9x, over 2x the limit
    out = tmp_path / "out"
    inputs = [*map(str, good), str(tmp_path / "thin.png"), str(tmp_path / "huge.png")]
    args = ["--config-file", config, "--weights", weights, "--prompt", "a red circle"]
    with caplog.at_level(logging.INFO, logger="fiber_det"):
        code = _tool("demo").main([*args, "--input", *inputs, "--output", str(out)])
    assert code == 1
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["images"]) == len(good)
    failures = {os.path.basename(f["file_name"]): f["error"] for f in summary["failures"]}
    assert "degenerate" in failures["thin.png"] and "too large" in failures["huge.png"]
    assert f"2 of {len(good) + 2} images skipped" in caplog.text and "thin.png" in caplog.text
