"""Atomic file writes (a crash or a full disk never leaves a half-written output behind), safe
checkpoint reads, and the check that a tool's outputs never overwrite its inputs."""

import fnmatch
import glob
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from safetensors.torch import load_file as load_safetensors

__all__ = [
    "PICKLE_SUFFIXES",
    "OutputCollisionError",
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_json",
    "load_torch_file",
    "refuse_overwriting_inputs",
    "refuse_overwriting_inputs_or_exit",
]

PathLike = Union[str, os.PathLike]


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


class OutputCollisionError(ValueError):
    """An output path is, contains or would be read as one of the inputs (nothing was written)."""


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _same_path(a: PathLike, b: PathLike) -> bool:
    if _real(a) == _real(b):
        return True
    try:  # hard links, case-insensitive file systems
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _pattern_matches_dir(pattern: str, folder: PathLike) -> bool:
    """Whether the glob ``pattern`` can match files directly inside ``folder``."""
    pattern_dir = os.path.dirname(os.path.abspath(os.path.expanduser(pattern)))
    if not glob.has_magic(pattern_dir):
        return _same_path(pattern_dir, folder)
    target = Path(os.path.abspath(os.fspath(folder))).parts
    parts = Path(pattern_dir).parts
    if any("**" in p for p in parts):  # any depth below the fixed prefix
        fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
        return target[: len(fixed)] == fixed
    return len(parts) == len(target) and all(
        fnmatch.fnmatchcase(t, p) for t, p in zip(target, parts)
    )


def refuse_overwriting_inputs(
    inputs: Iterable[Optional[PathLike]],
    *,
    output_files: Iterable[Optional[PathLike]] = (),
    output_dir: Optional[PathLike] = None,
    input_patterns: Iterable[str] = (),
    fix: str = "choose another output path",
) -> None:
    """Check, before a tool writes anything, that no output can destroy an input.

    Refused: an output file that is an input (same path after resolving ``~``, ``..`` and
    symbolic links, or the same file on disk); an ``output_dir`` that is an input folder or holds
    an input; an ``output_dir`` where one of ``input_patterns`` (the globs the inputs were
    collected with) would find files, so that a later run would read the outputs as inputs.
    Empty or None entries are ignored.

    Raises:
        OutputCollisionError: naming the output, the input and ``fix``.
    """
    inputs = [i for i in inputs if i]
    problems = []
    for out in (o for o in output_files if o):
        problems += [f"the output {out} is the input {i}" for i in inputs if _same_path(out, i)]
    if output_dir:
        real_dir = _real(output_dir)
        for i in inputs:
            if _same_path(output_dir, i):
                problems.append(f"the output folder {output_dir} is the input {i}")
            elif _real(i).is_relative_to(real_dir):
                problems.append(f"the output folder {output_dir} holds the input {i}")
        problems += [
            f"the input pattern {p!r} matches files in the output folder {output_dir}, so its "
            "outputs would be read as inputs"
            for p in input_patterns
            if glob.has_magic(p) and _pattern_matches_dir(p, output_dir)
        ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise OutputCollisionError(
            f"refusing to write: {'; '.join(problems[:3])}{more}. Nothing was written: {fix}."
        )


def refuse_overwriting_inputs_or_exit(inputs: Iterable[Optional[PathLike]], **kwargs) -> None:
    """:func:`refuse_overwriting_inputs` for command-line tools: a collision exits (status 1)
    with the message, before anything is written."""
    try:
        refuse_overwriting_inputs(inputs, **kwargs)
    except OutputCollisionError as e:
        raise SystemExit(f"error: {e}") from e
