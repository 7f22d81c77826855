"""fiber-det installed as a normal (non-editable) package works outside the source tree: the
configs ship as package data and the predictor and the tools find them through the lookup."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fiber_det import model_zoo
from fiber_det.config import load_config
from tests.paths import REPO_ROOT, TOOLS


def test_lookup_finds_every_config_of_the_source_tree():
    shipped = model_zoo.list_configs()
    in_tree = sorted(p.relative_to(REPO_ROOT / "configs").as_posix()
                     for p in (REPO_ROOT / "configs").rglob("*.yaml"))  # fmt: skip
    assert shipped == in_tree and "tiny/fiber_tiny.yaml" in shipped
    assert model_zoo.get_config_file("configs/tiny/demo.yaml").endswith("tiny/demo.yaml")
    with pytest.raises(FileNotFoundError, match="no config 'tiny/nope.yaml'.*e.g. Base-FIBER"):
        model_zoo.get_config_file("tiny/nope.yaml")
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        load_config("tiny/nope.yaml")
    assert load_config("tiny/fiber_tiny.yaml").MODEL.META_ARCHITECTURE == "FIBERDetector"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """fiber-det built as a wheel from a copy of the sources and installed into a folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for part in ("fiber_det", "configs"):
        shutil.copytree(REPO_ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / part, src / part)
    site = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "--target", str(site), str(src)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return site


def _run(site, workdir, args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_installed_package_runs_the_predictor_on_a_shipped_config(
    installed, tmp_path, tokenizer_dir
):
    script = textwrap.dedent(f"""
        import numpy as np, fiber_det
        from fiber_det import model_zoo
        from fiber_det.predictor import FIBERPredictor
        assert fiber_det.__file__.startswith({str(installed)!r}), fiber_det.__file__
        cfg_file = model_zoo.get_config_file("tiny/fiber_tiny.yaml")
        assert cfg_file.startswith({str(installed)!r}), cfg_file
        p = FIBERPredictor.from_files(
            "tiny/fiber_tiny.yaml", None,
            ["MODEL.LANGUAGE.TOKENIZER", {str(tokenizer_dir)!r}, "MODEL.ATSS.INFERENCE_TH", 0.0],
            device="cpu",
        )
        image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
        pred = p(image, ["red circle", "blue square"])
        assert pred.boxes.shape[1] == 4 and len(pred) > 0, pred
        print("OK", cfg_file, len(pred))
    """)
    out = _run(installed, tmp_path, ["-c", script])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK ") and str(installed) in out.stdout


def test_installed_package_runs_the_tools_from_another_folder(installed, tmp_path, tokenizer_dir):
    """tools/demo.py imports the installed package and finds a config by its shipped name."""
    from PIL import Image

    Image.new("RGB", (96, 80), (200, 40, 40)).save(tmp_path / "img.png")
    args = [
        str(TOOLS / "demo.py"), "--config-file", "tiny/fiber_tiny.yaml", "--input", "img.png",
        "--categories", "red circle", "--output", "out", "--cpu",
        "MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir), "MODEL.ATSS.INFERENCE_TH", "0.0",
    ]  # fmt: skip
    out = _run(installed, tmp_path, args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "predictions.json").is_file()
