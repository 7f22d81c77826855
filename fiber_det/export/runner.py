"""Run an exported FIBER graph in onnxruntime: ``OnnxDetector`` (the model) and ``OnnxPredictor``.

:class:`OnnxDetector` takes the same input dicts as ``FIBERDetector`` at inference (``image``,
``height``/``width``, and ``input_ids``/``attention_mask``/``positive_map`` or ``prompts``) and
returns the same ``[{"instances": Instances}]``; :class:`OnnxPredictor` is ``FIBERPredictor``
(same prompts, image reading, resize and outputs) with that model inside.

After the graph, the data-dependent part of the post-processing runs with the PyTorch model's
own code (:meth:`fiber_det.modeling.head.PostProcessor.select`, settings from the config):
score threshold on the label score, the best ``PRE_NMS_TOP_N`` candidates per level, clipping,
class-wise NMS with the legacy "+1" IoU (kept boxes in original order) and the detection cap.

**Image size.** A graph is made for one padded size ``(H, W)``. PyTorch pads an image to the next
multiple of ``SIZE_DIVISIBILITY``; when that is ``(H, W)`` the graph gives PyTorch's detections.
A smaller image is zero-padded up to ``(H, W)`` (``pad_to_graph=True``, the default, with a
warning): the official model lets the text attend to padded image tokens, so the numbers then
differ slightly from PyTorch's, as in batched inference. ``pad_to_graph=False`` refuses such
images; a larger image is always refused, with the export command that fits it.
"""

import json
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Instances

from ..config import load_config
from ..modeling.head.inference import PostProcessor
from ..modeling.meta_arch.fiber_detector import FIBERDetector
from ..modeling.meta_arch.multi_prompt import merge_prompt_results, split_prompts
from ..predictor import FIBERPredictor, PromptLike
from .exporter import FORMAT_VERSION, METADATA_KEY
from .graph import OUTPUT_NAMES

__all__ = ["OnnxDetector", "OnnxPredictor", "onnx_providers"]

logger = logging.getLogger(__name__)


def onnx_providers() -> List[str]:
    """onnxruntime execution providers to use: CUDA when this onnxruntime has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _read_metadata(session, path: str) -> Dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(
            f"{path} is not a fiber_det export (no '{METADATA_KEY}' metadata): write it with "
            "tools/export_onnx.py"
        )
    meta = json.loads(props[METADATA_KEY])
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has export format {meta.get('format')}, this fiber_det reads "
            f"{FORMAT_VERSION}: export it again with this version's tools/export_onnx.py"
        )
    return meta


class OnnxDetector:
    """An exported FIBER graph with ``FIBERDetector``'s inference interface.

    Args:
        path (str): the .onnx file written by :func:`fiber_det.export.export_onnx`.
        postprocessor (PostProcessor): the data-dependent post-processing settings.
        input_format (str): channel order the predictor feeds (must match the export's).
        pad_to_graph (bool): zero-pad smaller images up to the graph's size (see module
            docstring) instead of refusing them.
        providers (list[str], optional): onnxruntime providers (default :func:`onnx_providers`).
        num_threads (int): onnxruntime intra-op threads (0: its default).
    """

    def __init__(
        self,
        path: str,
        *,
        postprocessor: PostProcessor,
        input_format: str = "BGR",
        pad_to_graph: bool = True,
        providers: Optional[Sequence[str]] = None,
        num_threads: int = 0,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=list(providers or onnx_providers())
            )
        except Exception as e:  # noqa: BLE001  onnxruntime raises its own exception types
            raise ValueError(
                f"onnxruntime cannot load {path} ({type(e).__name__}: {e}): give a file "
                "written by tools/export_onnx.py"
            ) from e
        self.path = str(path)
        self.meta = _read_metadata(self.session, self.path)
        if self.meta["input_format"] != input_format:
            raise ValueError(
                f"{path} was exported for INPUT.FORMAT {self.meta['input_format']}, the config "
                f"says {input_format}: use the config the graph was exported with"
            )
        self.postprocessor = postprocessor
        self.pad_to_graph = pad_to_graph
        self.height, self.width = int(self.meta["height"]), int(self.meta["width"])
        self.level_sizes = [int(n) for n in self.meta["level_sizes"]]
        self.vocabulary = self.meta.get("fixed_vocabulary")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._warned_sizes = set()

    @property
    def fixed_vocabulary(self) -> bool:
        return self.vocabulary is not None

    # FIBERPredictor calls model.eval(); a graph has no modes.
    def eval(self) -> "OnnxDetector":
        return self

    def check_prompts(self, prompts: Sequence[Dict]) -> None:
        """For a fixed-vocabulary graph, the prompts must be the ones it was exported with."""
        if not self.fixed_vocabulary:
            return
        given = [p["input_ids"].reshape(-1).tolist() for p in prompts]
        if given != self.vocabulary["input_ids"]:
            names = self.vocabulary["names"]
            shown = names if len(names) <= 8 else names[:8] + [f"... ({len(names)} names)"]
            raise ValueError(
                f"{self.path} holds the fixed vocabulary {shown} and runs only that prompt: "
                "give exactly these category names (same order), or export a graph without "
                "--vocabulary for free prompts"
            )

    def _padded_image(self, image: torch.Tensor) -> np.ndarray:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        d = int(self.meta["size_divisibility"]) or 1
        ph, pw = -(-h // d) * d, -(-w // d) * d
        if (ph, pw) != (self.height, self.width):
            fits = h <= self.height and w <= self.width
            if not (fits and self.pad_to_graph):
                raise ValueError(
                    f"the image is {h}x{w} after the test resize (padded: {ph}x{pw}) but "
                    f"{self.path} was exported for {self.height}x{self.width}: export a graph "
                    f"for it (tools/export_onnx.py ... --height {ph} --width {pw}), or make "
                    "INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST bring images to the graph's size"
                    + (", or allow zero-padding up to the graph (pad_to_graph=True)" * fits)
                )
            if (ph, pw) not in self._warned_sizes:
                self._warned_sizes.add((ph, pw))
                logger.warning(
                    "image padded to %dx%d would run at %dx%d in PyTorch; the graph is "
                    "%dx%d, so it is zero-padded further and scores differ slightly from "
                    "PyTorch's (export a %dx%d graph for exact results)",
                    self.height,
                    self.width,
                    ph,
                    pw,
                    self.height,
                    self.width,
                    ph,
                    pw,
                )
        out = np.zeros((1, 3, self.height, self.width), dtype=np.float32)
        out[0, :, :h, :w] = image.float().numpy()
        return out

    def run(self, image: torch.Tensor, prompt: Optional[Dict] = None) -> Tuple[np.ndarray, ...]:
        """The graph's raw outputs (boxes, label_scores, centerness) for one (3, h, w) image."""
        feeds = {
            "image": self._padded_image(image),
            "image_size": np.array(image.shape[-2:], dtype=np.int64),
        }
        if prompt is not None and not self.fixed_vocabulary:
            feeds["input_ids"] = prompt["input_ids"].reshape(1, -1).long().numpy()
            feeds["attention_mask"] = prompt["attention_mask"].reshape(1, -1).long().numpy()
            feeds["positive_map"] = prompt["positive_map"].float().numpy()
        return tuple(self.session.run(list(OUTPUT_NAMES), feeds))

    def _detections(self, outputs, index: int, num_labels: int, size: Tuple[int, int]):
        boxes, scores, centerness = (torch.from_numpy(o[index]) for o in outputs)
        levels, start = [], 0
        for n in self.level_sizes:
            part = slice(start, start + n)
            levels.append((boxes[part], scores[part, :num_labels], centerness[part]))
            start += n
        return self.postprocessor.select(levels, size)

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """``FIBERDetector`` inference: one ``{"instances": Instances}`` per input dict."""
        return [{"instances": self._infer_one(x)} for x in batched_inputs]

    def _infer_one(self, x: Dict) -> Instances:
        image = x["image"]
        size = (int(image.shape[-2]), int(image.shape[-1]))
        out_size = (x.get("height", size[0]), x.get("width", size[1]))
        prompts = split_prompts(x)
        sizes = [int(p["positive_map"].shape[0]) for p in prompts]
        if self.fixed_vocabulary:
            self.check_prompts(prompts)
            outputs = self.run(image)
            parts = [self._detections(outputs, i, n, size) for i, n in enumerate(sizes)]
        else:
            parts = [
                self._detections(self.run(image, p), 0, n, size) for p, n in zip(prompts, sizes)
            ]
        instances = [FIBERDetector.to_instances(d, size, out_size) for d in parts]
        return merge_prompt_results(instances, sizes)


class OnnxPredictor(FIBERPredictor):
    """``FIBERPredictor`` running an exported graph in onnxruntime (CPU; CUDA when present).

    Same call as ``FIBERPredictor``: images + a caption, a ``Prompt`` or category names ->
    ``FIBERPrediction``. With a fixed-vocabulary graph, the prompt must be the exported
    vocabulary (or omitted).

    Build it with ``OnnxPredictor(cfg, onnx_file="model.onnx")`` or
    ``OnnxPredictor.from_files(config_file, onnx_file)``.
    """

    @classmethod
    def from_config(
        cls,
        cfg,
        onnx_file: Optional[str] = None,
        model: Optional[OnnxDetector] = None,
        pad_to_graph: bool = True,
        **kwargs,
    ) -> Dict[str, Any]:
        if model is None:
            if not onnx_file:
                raise ValueError("OnnxPredictor needs onnx_file= (a graph from export_onnx.py)")
            model = OnnxDetector(
                onnx_file,
                postprocessor=PostProcessor.from_config(cfg),
                input_format=cfg.INPUT.FORMAT,
                pad_to_graph=pad_to_graph,
            )
        return super().from_config(cfg, model=model, **kwargs)

    @classmethod
    def from_files(
        cls, config_file: str, onnx_file: str, opts: Sequence = (), **kwargs
    ) -> "OnnxPredictor":
        """A predictor from a yaml config and an exported graph."""
        return cls(load_config(config_file, opts, device="cpu"), onnx_file=onnx_file, **kwargs)

    def encode_prompt(self, prompt: Optional[PromptLike]):
        """As ``FIBERPredictor.encode_prompt``; ``None`` is the graph's fixed vocabulary."""
        if prompt is None and self.model.fixed_vocabulary:
            prompt = list(self.model.vocabulary["names"])
        query = super().encode_prompt(prompt)
        self.model.check_prompts([p.as_input() for p in query.encoded])
        return query

    def __call__(self, images, prompt: Optional[PromptLike] = None, *, prompts=None):
        if prompt is None and prompts is None and self.model.fixed_vocabulary:
            prompt = list(self.model.vocabulary["names"])
        return super().__call__(images, prompt, prompts=prompts)
