"""Safe checkpoint reads (fiber_det.utils.io.load_torch_file) and the tools that use them."""

import argparse
import importlib.util

import pytest
import torch

from fiber_det.utils.io import load_torch_file
from tests.paths import REPO_ROOT, load_tool


@pytest.fixture
def pickled(tmp_path):
    """A checkpoint holding a Python object besides its tensors (as Lightning files do)."""
    path = tmp_path / "with_objects.pth"
    torch.save({"model": {"w": torch.ones(2)}, "hparams": argparse.Namespace(lr=1.0)}, path)
    return path


def test_tensors_only_by_default(pickled, tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.arange(3)}, plain)
    assert torch.equal(load_torch_file(plain)["w"], torch.arange(3))
    with pytest.raises(ValueError, match="besides tensors.*rerun with --x"):
        load_torch_file(pickled, hint="rerun with --x")
    assert load_torch_file(pickled, allow_pickle=True)["hparams"].lr == 1.0
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_torch_file(tmp_path / "missing.pth")


def test_converters_name_their_opt_in_flag(pickled, tmp_path):
    from fiber_det.checkpoint.coarse import read_coarse_checkpoint

    with pytest.raises(ValueError, match="--allow-pickle"):
        read_coarse_checkpoint(pickled)
    tool = load_tool("convert_fiber_checkpoint")
    with pytest.raises(SystemExit, match="--allow-pickle"):
        tool.main([str(pickled), str(tmp_path / "out.pth"), "--no-model-check"])
    assert not (tmp_path / "out.pth").exists()


# -- outputs never destroy inputs ------------------------------------------------------------
def test_an_output_file_that_is_an_input_is_refused(tmp_path):
    from fiber_det.utils.io import OutputCollisionError, refuse_overwriting_inputs

    src = tmp_path / "in.json"
    src.write_text("{}")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(src)
    hard = tmp_path / "hard.json"
    hard.hardlink_to(src)
    for same in (src, tmp_path / "sub" / ".." / "in.json", link, hard):
        with pytest.raises(OutputCollisionError, match=r"the output .* is the input .*use b"):
            refuse_overwriting_inputs([src], output_files=[same], fix="use b")
    refuse_overwriting_inputs([src, None, ""], output_files=[tmp_path / "out.json", None])


def test_an_output_folder_that_is_or_holds_an_input_is_refused(tmp_path):
    from fiber_det.utils.io import OutputCollisionError, refuse_overwriting_inputs

    photo = tmp_path / "photos" / "a.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"x")
    with pytest.raises(OutputCollisionError, match="output folder .*photos holds the input"):
        refuse_overwriting_inputs([photo], output_dir=tmp_path / "photos")
    with pytest.raises(OutputCollisionError, match="holds the input"):
        refuse_overwriting_inputs([photo], output_dir=tmp_path)
    with pytest.raises(OutputCollisionError, match="output folder .* is the input"):
        refuse_overwriting_inputs([photo.parent], output_dir=tmp_path / "photos")
    # beside or below an input folder is fine: nothing there is read
    refuse_overwriting_inputs([photo, photo.parent], output_dir=tmp_path / "photos" / "out")
    refuse_overwriting_inputs([photo], output_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "pattern, out, refused",
    [
        ("photos/*.jpg", "photos", True),
        ("photos/*.jpg", "photos/out", False),
        ("photos/*/*.jpg", "photos/out", True),
        ("photos/*/*.jpg", "photos/out/deeper", False),
        ("photos/**/*.jpg", "photos/out/deeper", True),
        ("ph*/*.jpg", "photos", True),
        ("ph*/*.jpg", "results", False),
        ("photos/a.jpg", "photos", False),  # not a glob: only the file itself matters
    ],
)
def test_an_output_folder_an_input_glob_would_read_is_refused(tmp_path, pattern, out, refused):
    from fiber_det.utils.io import OutputCollisionError, refuse_overwriting_inputs

    pattern, out = str(tmp_path / pattern), tmp_path / out
    if refused:
        with pytest.raises(OutputCollisionError, match="matches files in the output folder"):
            refuse_overwriting_inputs([], output_dir=out, input_patterns=[pattern])
    else:
        refuse_overwriting_inputs([], output_dir=out, input_patterns=[pattern])


def _tool_module(relative):
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f"tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converters_refuse_to_write_over_their_input(tmp_path):
    ckpt = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, ckpt)
    before = ckpt.read_bytes()
    link = tmp_path / "alias.pth"
    link.symlink_to(ckpt)
    for tool, extra in (
        ("tools/convert_fiber_checkpoint.py", ["--no-model-check"]),
        ("tools/convert_coarse_checkpoint.py", []),  # refused before the FIBER-B model is built
    ):
        for out in (ckpt, link):
            with pytest.raises(SystemExit, match="refusing to write: the output"):
                _tool_module(tool).main([str(ckpt), str(out), *extra])
    assert ckpt.read_bytes() == before


def test_benchmark_refuses_to_write_over_its_results(tmp_path):
    saved = tmp_path / "cpu.json"
    saved.write_text("{}")
    tool = _tool_module("tools/benchmark.py")
    with pytest.raises(SystemExit, match="refusing to write: the output .*cpu.json is the input"):
        tool.main(["--from-json", str(saved), "--readme", str(saved)])
    with pytest.raises(SystemExit, match="refusing to write"):
        tool.main(["--quick", "--readme", str(saved), "--output", str(saved)])
    assert saved.read_text() == "{}"


def test_train_net_refuses_checkpoints_over_its_initial_weights(tmp_path):
    from detectron2.config import get_cfg

    from fiber_det import add_fiber_config
    from fiber_det.utils.io import OutputCollisionError

    refuse = _tool_module("tools/train_net.py").refuse_overwriting_weights
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 5000])
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", 1000])
    for name in ("model_final.pth", "model_0000999.pth", "model_0003999.pth"):
        cfg.MODEL.WEIGHTS = str(tmp_path / name)
        with pytest.raises(OutputCollisionError, match=f"{name} is the input"):
            refuse(cfg)
    for name in ("model_0000500.pth", "model_0004999.pth", "other/model_final.pth"):
        cfg.MODEL.WEIGHTS = str(tmp_path / name)
        refuse(cfg)  # never written by this run
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000999.pth")
    refuse(cfg, resume=True)  # resuming continues the run's own checkpoints


def test_demo_synthetic_refuses_to_write_over_its_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("_BASE_: x\n")
    tool = _tool_module("tools/demo_synthetic.py")
    with pytest.raises(SystemExit, match="config.yaml is the input"):
        tool.main(["--output", str(tmp_path), "--config-file", str(config)])
    assert config.read_text() == "_BASE_: x\n"


@pytest.mark.parametrize("script", ["prepare_objects365", "prepare_mixed_no_coco"])
def test_dataset_scripts_refuse_to_write_over_their_input(tmp_path, script):
    src = tmp_path / "ann.json"
    src.write_text('{"images": [], "annotations": [], "categories": []}')
    before = src.read_text()
    argv = ["--json", str(src), "--out", str(src)]
    if script == "prepare_objects365":
        argv += ["--image-root", str(tmp_path)]
    with pytest.raises(SystemExit, match="refusing to write: the output .*ann.json is the input"):
        _tool_module(f"datasets/{script}.py").main(argv)
    assert src.read_text() == before
