"""onnxruntime vs PyTorch on CPU: latency and peak memory of one image, one prompt
(``tools/benchmark.py --onnx 512x512 800x1216``).

For each input size, the model is exported (the full graph; with ``fixed_vocabulary``, also
the fixed-vocabulary graph of the prompt) and the paths are timed in turns in the same process:
PyTorch ``FIBERDetector``, then ``OnnxDetector`` on each graph; latency ratios are to PyTorch.
Peak memory is the growth of the resident set during a call
(:func:`fiber_det.utils.benchmark.peak_memory_mb`): *first call* includes what the runtime
allocates once (onnxruntime's arena, PyTorch's caches), *steady* is the largest of the timed
calls. The detections of every path are compared as well (same labels, scores within 1e-4,
boxes within 0.01 px).
"""

import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..modeling.head import PostProcessor
from ..utils.benchmark import measure_interleaved, peak_memory_mb
from ..utils.testing import prompt_input, unmatched_instances
from .exporter import export_graph
from .runner import OnnxDetector

__all__ = ["bench_onnx", "format_onnx_rows", "parse_size"]

logger = logging.getLogger(__name__)

#: A detection prompt of COCO-like names (about 40 tokens).
PROMPT_NAMES = ["person", "bicycle", "car", "dog", "cat", "horse", "bus", "train", "truck", "boat"]


def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1216"`` -> (800, 1216) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: give HEIGHTxWIDTH, e.g. 800x1216") from None
    return h, w


def _call(runner, x):
    with torch.no_grad():
        return runner([x])


def bench_onnx(
    model: nn.Module,
    cfg,
    sizes: Sequence[Tuple[int, int]],
    tokenizer,
    repeats: int = 3,
    fixed_vocabulary: bool = False,
) -> List[Dict]:
    """One row per (size, path): ``size``, ``path``, ``median_s``, ``ratio`` (to PyTorch),
    ``first_peak_mb``, ``peak_mb``, ``identical`` (detections equal PyTorch's).

    Args:
        model: a ``FIBERDetector`` on CPU (tools/benchmark.py: random weights, gates opened,
            ``MODEL.ATSS.INFERENCE_TH`` 0); cfg: its config.
        fixed_vocabulary: also time a fixed-vocabulary graph of the prompt.
    """
    device = torch.device("cpu")
    prompt = prompt_input(tokenizer, PROMPT_NAMES, cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in sizes:
            image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255
            x = {"image": image, **prompt}
            paths = {"PyTorch": model}
            for kind in ("full", "fixed") if fixed_vocabulary else ("full",):
                path = Path(tmp) / f"{kind}_{height}x{width}.onnx"
                names = {"names": PROMPT_NAMES, "label_names": PROMPT_NAMES, "captions": []}
                export_graph(
                    model,
                    str(path),
                    height=height,
                    width=width,
                    prompts=[prompt],
                    fixed_vocabulary=names if kind == "fixed" else None,
                    check=False,
                )
                name = "onnxruntime" + (" fixed vocabulary" if kind == "fixed" else "")
                paths[name] = OnnxDetector(
                    str(path),
                    postprocessor=PostProcessor.from_config(cfg),
                    providers=["CPUExecutionProvider"],
                )
            first, results = {}, {}
            for name, runner in paths.items():
                with peak_memory_mb(device) as mem:
                    results[name] = _call(runner, x)[0]["instances"]
                first[name] = mem["peak_mb"]

            timed = measure_interleaved(
                {n: (lambda r=r, x=x: _call(r, x)) for n, r in paths.items()},
                device,
                repeats,
                warmup=0,
            )
            base = timed["PyTorch"]["median_s"]
            for name, r in timed.items():
                rows.append(
                    {
                        "size": f"{height}x{width}",
                        "path": name,
                        "median_s": r["median_s"],
                        "ratio": r["median_s"] / base,
                        "first_peak_mb": first[name],
                        "peak_mb": r["peak_mb"],
                        "detections": len(results[name]),
                        "identical": not unmatched_instances(results["PyTorch"], results[name]),
                    }
                )
            logger.info("%dx%d done", height, width)
            del paths
    return rows


def format_onnx_rows(rows: Sequence[Dict]) -> str:
    """Markdown table of :func:`bench_onnx` rows."""
    lines = [
        "| input | path | latency s | ratio to PyTorch | peak MB first call | peak MB steady "
        "| same detections |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['path']} | {r['median_s']:.2f} | {r['ratio']:.2f} | "
            f"{r['first_peak_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{'yes' if r['identical'] else 'NO'} ({r['detections']}) |"
        )
    return "\n".join(lines)
