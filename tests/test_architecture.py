"""The import rules of docs/ARCHITECTURE.md: each room of the package imports only from the rooms
its row allows, so dependencies point one way."""

import ast
from pathlib import Path

import fiber_det

PACKAGE = Path(fiber_det.__file__).parent

# room -> rooms it may import (docs/ARCHITECTURE.md)
ALLOWED = {
    "utils.io": set(),
    "utils.benchmark": set(),
    "utils.flops": {"modeling"},
    "utils.benchmark_coarse": {"modeling", "utils.benchmark", "utils.flops", "utils.testing"},
    "utils.testing": {"config", "text"},
    "_C": set(),
    "model_zoo": set(),
    "modeling": {"utils.io", "_C"},
    "text": {"utils.io"},
    "data": {"text", "utils.io"},
    "evaluation": {"data", "text", "utils.io"},
    "checkpoint": {"modeling", "utils.io"},
    "solver": set(),
    "config": {"model_zoo", "data"},
    "predictor": {"checkpoint", "config", "data", "text", "utils.io"},
    "export": {
        "modeling",
        "predictor",
        "config",
        "text",
        "utils.io",
        "utils.benchmark",
        "utils.testing",
    },
    "serve": {"predictor", "text", "utils.io", "export"},
}


def _room(module: str) -> str:
    parts = module.split(".")[1:]  # without "fiber_det"
    if not parts:
        return "fiber_det"
    if parts[0] == "utils" and len(parts) > 1:
        return f"utils.{parts[1]}"
    return parts[0]


def _imports(path: Path):
    module = "fiber_det." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [a.name for a in node.names]
        else:
            continue
        for name in names if target in ("fiber_det", "") else [None]:
            full = f"{target}.{name}".lstrip(".") if name else target
            if full.startswith("fiber_det."):
                yield module, full


def test_rooms_import_only_what_architecture_md_allows():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, target in _imports(path):
            src, dst = _room(module), _room(target)
            if src in ALLOWED and src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{module} imports {target} ({src} -> {dst})")
    assert not wrong, "\n".join(wrong)


def test_the_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checker is not vacuous: a modeling module importing the data room is reported."""
    fake = PACKAGE / "modeling" / "_architecture_probe.py"
    assert not fake.exists()
    text = "from ..data import build_fiber_train_loader\n"
    found = list(_imports_from_text(fake, text))
    assert ("fiber_det.modeling._architecture_probe", "fiber_det.data") in found
    assert "data" not in ALLOWED["modeling"]


def _imports_from_text(path: Path, text: str):
    orig = Path.read_text
    try:
        Path.read_text = lambda self, *a, **k: text if self == path else orig(self, *a, **k)
        yield from _imports(path)
    finally:
        Path.read_text = orig
