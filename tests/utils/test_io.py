"""Safe checkpoint reads (fiber_det.utils.io.load_torch_file) and the tools that use them."""

import argparse
import importlib.util

import pytest
import torch

from fiber_det.utils.io import load_torch_file
from fiber_det.utils.testing import REPO_ROOT


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
    spec = importlib.util.spec_from_file_location(
        "convert_fiber", REPO_ROOT / "tools/convert_fiber_checkpoint.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit, match="--trust-pickle"):
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
