"""The configs shipped with fiber-det, found by name wherever the package is installed.

The ``configs/`` folder at the top of the repository is where users read and edit the configs;
``pip install`` ships the same files as package data (``fiber_det.model_zoo.configs``), so that
code outside a source checkout finds them by their path relative to ``configs/``, as detectron2's
``model_zoo.get_config_file`` does::

    from fiber_det import model_zoo
    from fiber_det.config import load_config

    cfg = load_config(model_zoo.get_config_file("fiber_b/eval/coco.yaml"))
"""

import importlib.util
from pathlib import Path
from typing import List

__all__ = ["get_config_file", "list_configs"]

_PACKAGED = "fiber_det.model_zoo.configs"  # setup.py maps the repository's configs/ here
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "configs"  # running from a checkout


def _config_root() -> Path:
    """The folder holding the shipped configs (package data, else the source checkout's)."""
    spec = importlib.util.find_spec(_PACKAGED)  # a namespace package: configs/ has no __init__
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    else:  # not installed: the package is imported from a source tree
        root = _SOURCE_TREE
    if not root.is_dir():
        raise FileNotFoundError(
            f"fiber-det's configs are not where they should be ({root}): reinstall the package "
            "(`pip install .` ships them) or run from a source checkout"
        )
    return root


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, e.g. ``get_config_file("tiny/fiber_tiny.yaml")``.

    Args:
        config_path: path relative to ``configs/`` (a leading ``configs/`` is accepted).
    Raises:
        FileNotFoundError: no such config; the message lists the configs that exist.
    """
    rel = Path(config_path)
    if rel.is_absolute():
        raise ValueError(f"{config_path} is absolute: give a path relative to configs/")
    if rel.parts and rel.parts[0] == "configs":
        rel = Path(*rel.parts[1:])
    root = _config_root()
    path = root / rel
    if not path.is_file():
        known = ", ".join(list_configs()[:8])
        raise FileNotFoundError(
            f"no config {config_path!r} among fiber-det's configs in {root} (e.g. {known}, ...); "
            "see fiber_det.model_zoo.list_configs()"
        )
    return str(path)


def list_configs() -> List[str]:
    """Every shipped config, as paths relative to ``configs/``."""
    root = _config_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
