"""Atomic file writes (a crash or a full disk never leaves a half-written output behind) and
safe checkpoint reads."""

import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch
from safetensors.torch import load_file as load_safetensors

__all__ = [
    "PICKLE_SUFFIXES",
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_json",
    "load_torch_file",
]


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


PICKLE_SUFFIXES = (".pkl", ".pickle")


def load_torch_file(path: Union[str, Path], *, allow_pickle: bool = False, hint: str = "") -> Any:
    """Read a checkpoint or any serialized file on CPU, safely unless ``allow_pickle``.

    The one reader behind every weights / predictions / checkpoint file fiber-det opens:

    * ``.safetensors``: tensors (``safetensors.torch.load_file``); never code.
    * ``.pkl`` / ``.pickle`` (detectron2 / Caffe2 model zoo): plain pickles run arbitrary code
      when loaded, so they are refused unless ``allow_pickle``.
    * anything else: ``torch.load(weights_only=True)``: tensors, numbers, strings and containers
      only. ``allow_pickle`` loads with ``weights_only=False``, which runs code from the file.

    Args:
        path: the file.
        allow_pickle: the caller's explicit opt-in for a file it trusts.
        hint: how to opt in from the caller's interface (a flag, a config key); ends the error.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds Python objects a safe load refuses, or is a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    opt_in = hint or "load it with allow_pickle=True"
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle file: loading it runs code from the file. If you trust it, "
                f"{opt_in}; better, convert it once to .pth or .safetensors"
            )
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # detectron2 / Caffe2 model zoo encoding
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001  torch raises several types for pickled objects
        if allow_pickle:
            raise
        raise ValueError(
            f"{path} holds Python objects besides tensors ({type(e).__name__}), which a safe "
            f"load refuses. If you trust the file, {opt_in}"
        ) from e
