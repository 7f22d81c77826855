"""Write a FIBER detector as an ONNX file (``tools/export_onnx.py``).

The graph (:mod:`.graph`) is traced with ``torch.onnx.export(..., dynamo=False)``, the
TorchScript-based exporter: with torch 2.14 the default ``torch.export`` path stops at the
data-dependent input checks of the text encoder (an empty-prompt check reads the mask's values),
while the traced graph is exact. The traced graph has a **fixed padded image size** (the Swin
shift masks, the window padding, the DyHead's official offset reinterpretation and the text's
attention to padded image tokens all depend on it); the prompt length ``T`` and the number of
labels ``C`` are dynamic.

The file carries its settings as ONNX metadata (``metadata_props``, :data:`METADATA_KEY`, JSON):
input size, anchors per level, channel order, and, for a fixed vocabulary, the names, captions
and token ids it was made for. After writing, the graph is run once in onnxruntime on a random
image and compared with PyTorch (:class:`ExportReport`).
"""

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..predictor import FIBERPredictor
from ..utils.io import atomic_open
from .graph import OUTPUT_NAMES, ExportableFIBER, whole_image_dcn_tiles

__all__ = [
    "ExportReport",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "check_onnx_output",
    "export_graph",
    "export_onnx",
]

logger = logging.getLogger(__name__)

#: Name of the metadata entry (JSON) that :class:`~fiber_det.export.OnnxDetector` reads.
METADATA_KEY = "fiber_det"
#: Version of that metadata layout.
FORMAT_VERSION = 1
#: ONNX opset of the export (GridSample needs >= 16).
OPSET = 17
#: Seed of the random check image.
_CHECK_SEED = 0


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how close onnxruntime came to PyTorch.

    Attributes:
        path (str): the ONNX file.
        height, width (int): padded input size.
        level_sizes (list[int]): anchors per pyramid level.
        fixed_vocabulary (bool): the graph holds the text side of a vocabulary.
        max_abs_diff (dict): output name -> max |onnxruntime - PyTorch| on the check input
            (empty when the check was skipped).
        size_mb (float): file size.
    """

    path: str
    height: int
    width: int
    level_sizes: List[int]
    fixed_vocabulary: bool
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    size_mb: float = 0.0


def _check_size(model: nn.Module, height: int, width: int) -> None:
    d = int(model.backbone.size_divisibility) or 1
    if height <= 0 or width <= 0 or height % d or width % d:
        raise ValueError(
            f"--height {height} --width {width}: the graph's input size must be positive "
            f"multiples of MODEL.FIBER.SIZE_DIVISIBILITY ({d}), e.g. --height "
            f"{max(d, -(-abs(height) // d) * d)} --width {max(d, -(-abs(width) // d) * d)}"
        )


def _example_inputs(wrapper: ExportableFIBER, prompt: Dict[str, torch.Tensor]) -> tuple:
    gen = torch.Generator().manual_seed(_CHECK_SEED)
    image = torch.rand(1, 3, wrapper.height, wrapper.width, generator=gen) * 255.0
    size = torch.tensor([wrapper.height, wrapper.width], dtype=torch.long)
    if wrapper.fixed_vocabulary:
        return image, size
    return (
        image,
        size,
        prompt["input_ids"].reshape(1, -1).long(),
        prompt["attention_mask"].reshape(1, -1).long(),
        prompt["positive_map"].float(),
    )


def _trace(wrapper: ExportableFIBER, args: tuple, opset: int) -> bytes:
    dynamic = (
        {}
        if wrapper.fixed_vocabulary
        else {
            "input_ids": {1: "text_length"},
            "attention_mask": {1: "text_length"},
            "positive_map": {0: "num_labels", 1: "text_length"},
            "label_scores": {2: "num_labels"},
        }
    )
    buffer = io.BytesIO()
    with torch.no_grad(), whole_image_dcn_tiles(), warnings.catch_warnings():
        # Shapes are fixed by design: the tracer's notes on constant shapes are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        torch.onnx.export(
            wrapper,
            args,
            buffer,
            input_names=wrapper.input_names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def check_onnx_output(
    model_bytes_or_path: Any, feeds: Dict[str, np.ndarray], reference: Sequence[torch.Tensor]
) -> Dict[str, float]:
    """Run the graph once in onnxruntime (CPU) and return max |diff| per output."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes_or_path, providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), feeds)
    return {
        name: float(np.abs(out - ref.numpy()).max()) if out.size else 0.0
        for name, out, ref in zip(OUTPUT_NAMES, outputs, reference)
    }


def _wrapper(
    model: nn.Module, height: int, width: int, prompts: Sequence[Dict], fixed: bool
) -> ExportableFIBER:
    """The traceable module; with ``fixed``, the prompts' pre-fusion text states inside."""
    states = maps = None
    if fixed:
        with torch.no_grad():
            states = [
                model.backbone.encode_text(
                    p["input_ids"].reshape(1, -1).long(), p["attention_mask"].reshape(1, -1).long()
                )
                for p in prompts
            ]
        maps = [p["positive_map"] for p in prompts]
    return ExportableFIBER(model, height, width, states, maps).eval()


def _reference_run(wrapper: ExportableFIBER, args: tuple) -> Tuple[tuple, List[int]]:
    """Eager outputs on the example, and the anchors per pyramid level (from the FPN)."""
    shapes: List[tuple] = []
    hook = wrapper.model.backbone.fpn.register_forward_hook(
        lambda mod, inp, out: shapes.extend(tuple(f.shape[-2:]) for f in out)
    )
    try:
        with torch.no_grad():
            reference = wrapper(*args)
    finally:
        hook.remove()
    return reference, [h * w for h, w in shapes]


def export_onnx(
    model: nn.Module,
    cfg,
    output: str,
    *,
    height: int,
    width: int,
    vocabulary: Optional[Sequence[str]] = None,
    check: bool = True,
    opset: int = OPSET,
) -> ExportReport:
    """Export ``model`` (a ``FIBERDetector`` with its weights) to ``output`` (written atomically).

    Args:
        model: the detector, on CPU.
        cfg: its config (tokenizer, prompt length, chunking, channel order).
        output (str): the .onnx file to write.
        height, width (int): padded input size of the graph.
        vocabulary (list[str], optional): category names of a fixed vocabulary: their
            pre-fusion text states are computed now and stored in the graph, which then takes
            the image only. The names are chunked into prompts as ``FIBERPredictor`` does.
        check (bool): run the written graph once in onnxruntime and compare with PyTorch.
        opset (int): ONNX opset.
    """
    names = list(vocabulary) if vocabulary else ["object"]
    query = FIBERPredictor(cfg, model=model).encode_prompt(names)
    fixed = None
    if vocabulary:
        fixed = {"names": names, "label_names": query.names, "captions": query.captions}
    return export_graph(
        model,
        output,
        height=height,
        width=width,
        prompts=[p.as_input() for p in query.encoded],
        fixed_vocabulary=fixed,
        input_format=cfg.INPUT.FORMAT,
        check=check,
        opset=opset,
    )


def export_graph(
    model: nn.Module,
    output: str,
    *,
    height: int,
    width: int,
    prompts: Sequence[Dict[str, torch.Tensor]],
    fixed_vocabulary: Optional[Dict[str, Any]] = None,
    input_format: str = "BGR",
    check: bool = True,
    opset: int = OPSET,
) -> ExportReport:
    """:func:`export_onnx` for prompts given as tensors.

    Args:
        prompts: model-input prompts (``input_ids``, ``attention_mask`` (T,), ``positive_map``
            (C, T)). Without ``fixed_vocabulary``, the first one is the tracing example.
        fixed_vocabulary (dict, optional): ``names``, ``label_names``, ``captions`` of the
            prompts: their pre-fusion text states are stored in the graph.
        input_format (str): the channel order of the graph's image (``INPUT.FORMAT``).
    Other arguments: see :func:`export_onnx`.
    """
    import onnx

    model = model.eval().cpu()
    _check_size(model, height, width)
    wrapper = _wrapper(model, height, width, prompts, fixed_vocabulary is not None)
    args = _example_inputs(wrapper, prompts[0])
    reference, level_sizes = _reference_run(wrapper, args)
    kind = " (fixed vocabulary)" if wrapper.fixed_vocabulary else ""
    logger.info("tracing FIBER for %dx%d input%s", height, width, kind)
    proto = onnx.load_from_string(_trace(wrapper, args, opset))
    meta: Dict[str, Any] = {
        "format": FORMAT_VERSION,
        "height": height,
        "width": width,
        "level_sizes": level_sizes,
        "input_format": input_format,
        "size_divisibility": int(model.backbone.size_divisibility),
        "fixed_vocabulary": None,
    }
    if fixed_vocabulary is not None:
        meta["fixed_vocabulary"] = {
            **fixed_vocabulary,
            "input_ids": [p["input_ids"].reshape(-1).tolist() for p in prompts],
            "num_labels": [int(p["positive_map"].shape[0]) for p in prompts],
        }
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "fiber_det"
    data = proto.SerializeToString()
    report = ExportReport(
        path=str(output),
        height=height,
        width=width,
        level_sizes=meta["level_sizes"],
        fixed_vocabulary=fixed_vocabulary is not None,
        size_mb=len(data) / 2**20,
    )
    if check:
        feeds = {n: a.numpy() for n, a in zip(wrapper.input_names, args)}
        report.max_abs_diff = check_onnx_output(data, feeds, reference)
        logger.info("onnxruntime vs PyTorch on a random image: %s", report.max_abs_diff)
    with atomic_open(output, "wb") as f:
        f.write(data)
    logger.info("wrote %s (%.1f MB)", os.fspath(output), report.size_mb)
    return report
