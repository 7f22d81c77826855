"""Paths that only the tests (and dev/ scripts run from a checkout) use: the source tree and the
official parity fixtures next to it."""

import importlib.util
import os
from pathlib import Path
from types import ModuleType

__all__ = ["REPO_ROOT", "TOOLS", "load_tool", "parity_dir"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT / "tools"


def parity_dir() -> Path:
    """The official parity fixtures: ``$FIBER_PARITY_DIR`` or ``shared/parity`` next to the repo."""
    env = os.environ.get("FIBER_PARITY_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "parity"


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py`` as a module (to call its ``main(argv)`` in-process)."""
    spec = importlib.util.spec_from_file_location(f"fiber_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
