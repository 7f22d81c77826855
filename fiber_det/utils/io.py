"""Atomic file writes (a crash or a full disk never leaves a half-written output behind) and
safe checkpoint reads."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch

__all__ = ["atomic_open", "atomic_torch_save", "atomic_write_json", "load_torch_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; on success rename it over ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_json(obj: Any, path: Union[str, Path], **kwargs) -> None:
    """``json.dump`` through :func:`atomic_open` (indent 2 by default)."""
    kwargs.setdefault("indent", 2)
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **kwargs)


def load_torch_file(path: Union[str, Path], *, allow_pickle: bool = False, hint: str = "") -> Any:
    """``torch.load`` on CPU, tensors only unless ``allow_pickle`` (``weights_only=False`` runs
    arbitrary code from the file: only for files you trust).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds Python objects a safe load refuses; the message ends with
            ``hint`` (how to opt in from the caller's interface).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001  torch raises several types for pickled objects
        if allow_pickle:
            raise
        raise ValueError(
            f"{path} holds Python objects besides tensors ({type(e).__name__}), which a safe "
            f"load refuses. If you trust the file, {hint or 'load it with allow_pickle=True'}"
        ) from e
