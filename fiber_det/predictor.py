"""FIBERPredictor: open-vocabulary detection and phrase grounding on your images, in one call.

FIBER (Dou et al., NeurIPS 2022) detects whatever a text prompt names. A prompt is

* a **caption** (``str``): phrase grounding. Its phrases are found by a simple noun-phrase
  heuristic (:func:`find_noun_phrases`: runs of words between function words and punctuation,
  articles dropped; nltk/spaCy are not needed). To choose the phrases yourself, give a
  :class:`fiber_det.text.Prompt` with the caption and the character spans of each phrase: they are
  used as given;
* a **list of category names**: detection (``["red circle", "blue square"]``), joined into one
  prompt (``"red circle. blue square"``) as the official evaluation does; a vocabulary whose names
  do not fit one prompt (``MODEL.LANGUAGE.MAX_QUERY_LEN`` tokens, or ``TEST.FIBER.CHUNK_SIZE``
  names) is split into chunks that run through the model's multi-prompt path, and the labels are
  mapped back to the names.

Usage (``FIBERPredictor(cfg)`` with a config whose ``MODEL.WEIGHTS`` is set works too)::

    predictor = FIBERPredictor.from_files("output/demo/config.yaml", "output/demo/model_final.pth")
    pred = predictor("image.png", "the small red circle left of a blue square")
    pred.boxes, pred.scores, pred.labels     # (N, 4) xyxy pixels, (N,), N label texts
    preds = predictor(["a.png", "b.png"], ["red circle", "blue square"])   # batched, shared prompt
    preds = predictor(["a.png", "b.png"], prompts=["a red circle", ["blue square"]])  # per image

Images are file paths, ``PIL.Image`` (RGB) or ``numpy`` arrays (H, W, 3) uint8 in **BGR** order
(OpenCV and detectron2's ``DefaultPredictor`` convention). The mapper's evaluation resize is
applied, and boxes come back in the original image's pixels.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from PIL import Image

from .checkpoint import build_and_load_model
from .config import load_config
from .data.prompting import EncodedPrompt, PromptEncoder
from .data.transforms import build_fiber_augmentations
from .data.utils import read_image
from .text import Prompt, find_noun_phrases, load_tokenizer, span_text, vocabulary_prompts

__all__ = ["FIBERPrediction", "FIBERPredictor", "ImageLike", "PromptLike"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]
PromptLike = Union[str, Prompt, Sequence[str]]


# -- outputs -----------------------------------------------------------------------------------
@dataclass
class FIBERPrediction:
    """The detections of one image, sorted by score.

    Attributes:
        boxes (Tensor): (N, 4) xyxy boxes in the original image's pixels.
        scores (Tensor): (N,) scores.
        label_ids (Tensor): (N,) long, index of each box's label in ``label_names``.
        labels (list[str]): per box, its label text (category name or phrase).
        label_names (list[str]): the labels of the prompt, in order (names or phrases).
        captions (list[str]): the text given to the model (several for a chunked vocabulary).
        image_size (tuple): (height, width) of the original image.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    label_ids: torch.Tensor
    labels: List[str]
    label_names: List[str]
    captions: List[str]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_instances(self) -> Instances:
        """detectron2 ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``)."""
        inst = Instances(self.image_size)
        inst.pred_boxes = Boxes(self.boxes)
        inst.scores = self.scores
        inst.pred_classes = self.label_ids
        return inst

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: ``detections`` as ``{"box": [x1, y1, x2, y2], "score", "label",
        "label_id"}`` plus the prompt's captions and labels."""
        detections = [
            {"box": [round(v, 2) for v in b], "score": round(s, 5), "label": t, "label_id": i}
            for b, s, t, i in zip(
                self.boxes.tolist(), self.scores.tolist(), self.labels, self.label_ids.tolist()
            )
        ]
        return {
            "image_size": list(self.image_size),
            "captions": self.captions,
            "label_names": self.label_names,
            "detections": detections,
        }


@dataclass
class _Query:
    """A prompt ready for the model: one or more encoded captions and the name of each label."""

    encoded: List[EncodedPrompt]
    names: List[str]
    captions: List[str] = field(default_factory=list)

    def model_fields(self) -> Dict[str, Any]:
        if len(self.encoded) == 1:
            return self.encoded[0].as_input()
        return {"prompts": [p.as_input() for p in self.encoded]}


# -- the predictor -----------------------------------------------------------------------------
class FIBERPredictor:
    """Run a FIBER model on images with text prompts (see module docstring).

    Args:
        model: a ``FIBERDetector`` with its weights loaded (put in eval mode here).
        tokenizer: the fast tokenizer of ``MODEL.LANGUAGE.TOKENIZER``.
        augmentations: evaluation resize (:func:`fiber_det.data.build_fiber_augmentations`).
        input_format: ``INPUT.FORMAT`` of the model ("BGR" or "RGB").
        max_query_len: ``MODEL.LANGUAGE.MAX_QUERY_LEN`` (tokens per prompt).
        pad_to_max: ``MODEL.LANGUAGE.PAD_TO_MAX``.
        chunk_size: ``TEST.FIBER.CHUNK_SIZE`` (names per prompt; <= 0 packs up to the budget).
        separator: ``DATASETS.FIBER.SEPARATION_TOKENS`` between category names.
        batch_size: images per forward pass. Images of different sizes are zero-padded to a
            common size in a batch, which changes the numbers slightly (see ``FIBERDetector``);
            1 gives exactly the per-image results.
        score_threshold: detections below it are dropped (the model's own
            ``MODEL.ATSS.INFERENCE_TH`` applies first).
    """

    @configurable
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer,
        augmentations: Sequence[T.Augmentation],
        input_format: str = "BGR",
        max_query_len: int = 256,
        pad_to_max: bool = False,
        chunk_size: int = -1,
        separator: str = ". ",
        batch_size: int = 4,
        score_threshold: float = 0.0,
    ):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, max_length=max_query_len, pad_to_max=pad_to_max)
        self.augmentations = T.AugmentationList(list(augmentations))
        self.input_format = input_format
        self.max_query_len = max_query_len
        self.chunk_size = chunk_size
        self.separator = separator
        self.batch_size = batch_size
        self.score_threshold = score_threshold

    @classmethod
    def from_config(
        cls,
        cfg,
        model: Optional[torch.nn.Module] = None,
        batch_size: int = 4,
        score_threshold: float = 0.0,
    ) -> Dict[str, Any]:
        """``FIBERPredictor(cfg)`` builds the model and loads ``MODEL.WEIGHTS``;
        ``FIBERPredictor(cfg, model=m)`` uses a model that is already loaded."""
        if model is None:
            model = build_and_load_model(cfg)
        return {
            "model": model,
            "tokenizer": load_tokenizer(cfg.MODEL.LANGUAGE.TOKENIZER),
            "augmentations": build_fiber_augmentations(cfg, is_train=False),
            "input_format": cfg.INPUT.FORMAT,
            "max_query_len": cfg.MODEL.LANGUAGE.MAX_QUERY_LEN,
            "pad_to_max": cfg.MODEL.LANGUAGE.PAD_TO_MAX,
            "chunk_size": cfg.TEST.FIBER.CHUNK_SIZE,
            "separator": cfg.DATASETS.FIBER.SEPARATION_TOKENS,
            "batch_size": batch_size,
            "score_threshold": score_threshold,
        }

    @classmethod
    def from_files(
        cls,
        config_file: str,
        weights: Optional[str] = None,
        opts: Sequence = (),
        *,
        device: Optional[str] = None,
        allow_pickle: bool = False,
        **kwargs,
    ) -> "FIBERPredictor":
        """A predictor from a config (a yaml file or a shipped config such as
        ``"fiber_b/eval/coco.yaml"``) and a checkpoint.

        Args:
            weights: overrides ``MODEL.WEIGHTS``; device: overrides ``MODEL.DEVICE``.
            allow_pickle: read a weights file holding pickled Python objects
                (``MODEL.WEIGHTS_ALLOW_PICKLE``): runs code from the file, only for files you
                trust.
            kwargs: ``batch_size``, ``score_threshold`` (see the class).
        """
        opts = [*opts, "MODEL.WEIGHTS_ALLOW_PICKLE", allow_pickle] if allow_pickle else opts
        cfg = load_config(config_file, opts, weights=weights, device=device)
        return cls(cfg, **kwargs)

    # -- inputs ----------------------------------------------------------------------------------
    def read_image(self, image: ImageLike) -> np.ndarray:
        """(H, W, 3) uint8 in the model's format, from any accepted image type."""
        if isinstance(image, (str, os.PathLike)):
            rgb = read_image(os.fspath(image), "RGB")
        elif isinstance(image, Image.Image):
            rgb = np.asarray(image.convert("RGB"))
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"a numpy image must be (H, W, 3) uint8 in BGR order, got {image.dtype} "
                    f"{image.shape}: convert it (cv2.imread(path), or np.asarray(pil)[..., ::-1])"
                )
            rgb = image[:, :, ::-1]
        else:
            raise TypeError(
                f"an image must be a file path, a PIL.Image or a (H, W, 3) uint8 BGR numpy "
                f"array, got {type(image).__name__}"
            )
        if min(rgb.shape[:2]) < 1:
            raise ValueError(f"image of size {rgb.shape[:2]} is empty")
        return np.ascontiguousarray(rgb if self.input_format == "RGB" else rgb[:, :, ::-1])

    def encode_prompt(self, prompt: PromptLike) -> _Query:
        """Tokenize a caption, a :class:`Prompt` or a list of names (see module docstring)."""
        if isinstance(prompt, Prompt):
            return self._encode_caption(prompt.caption, prompt.spans, prompt.names)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(
                    "the prompt is empty: give a caption (e.g. 'a red circle') or a list of "
                    "category names"
                )
            return self._encode_caption(prompt, [[s] for s in find_noun_phrases(prompt)], None)
        if isinstance(prompt, (list, tuple)) and all(isinstance(n, str) for n in prompt):
            return self._encode_names(list(prompt))
        got = type(prompt).__name__
        if isinstance(prompt, (list, tuple)):
            got += f" of {sorted({type(n).__name__ for n in prompt})}"
        raise TypeError(
            "a prompt must be a caption (str), a fiber_det.text.Prompt (caption + phrase spans) "
            f"or a list of category names (list[str]), got {got}"
        )

    def _encode_caption(self, caption: str, spans, names: Optional[Sequence[str]]) -> _Query:
        if not caption.strip():
            raise ValueError("the prompt's caption is empty: give a caption with phrases")
        spans = [[(int(s), int(e)) for s, e in group] for group in spans]
        if not spans or any(not g for g in spans):
            raise ValueError(
                f"caption {caption!r} has no phrase to ground: give a Prompt with at least one "
                "[start, end) span per phrase"
            )
        bad = [g for g in spans if any(not (0 <= s < e <= len(caption)) for s, e in g)]
        if bad:
            raise ValueError(
                f"phrase spans {bad} are outside the caption of {len(caption)} characters "
                f"{caption!r}: give [start, end) offsets with 0 <= start < end <= len(caption)"
            )
        length = len(self.tokenizer(caption)["input_ids"])
        if length > self.max_query_len:
            raise ValueError(
                f"the caption needs {length} tokens, more than MODEL.LANGUAGE.MAX_QUERY_LEN = "
                f"{self.max_query_len}: shorten it, split it into several prompts, or give a list "
                "of category names (which is chunked automatically)"
            )
        encoded = self.encoder.encode(caption, spans, cache=False)
        lost = [
            span_text(caption, g) for g, row in zip(spans, encoded.positive_map) if not row.any()
        ]
        if lost:
            logger.warning("phrases without tokens cannot be detected: %s", lost)
        if names is None or len(names) != len(spans):
            names = [span_text(caption, g) for g in spans]
        return _Query(encoded=[encoded], names=list(names), captions=[caption])

    def _encode_names(self, names: List[str]) -> _Query:
        if not names:
            raise ValueError("the list of category names is empty: give at least one name")
        empty = [i for i, n in enumerate(names) if not n.strip()]
        if empty:
            raise ValueError(f"category names at positions {empty} are empty: remove them")
        prompts = vocabulary_prompts(
            names,
            tokenizer=self.tokenizer,
            max_tokens=self.max_query_len,
            chunk_size=self.chunk_size,
            separator=self.separator,
        )
        encoded = [self.encoder.encode(p.caption, p.spans, p.label_ids) for p in prompts]
        label_names = [names[i] for p in prompts for i in p.label_ids]
        if len(prompts) > 1:
            logger.debug("%d names in %d prompts", len(names), len(prompts))
        return _Query(encoded=encoded, names=label_names, captions=[p.caption for p in prompts])

    def model_input(self, image: ImageLike, query: _Query) -> Dict[str, Any]:
        """The ``FIBERDetector`` input dict of one image and an encoded prompt."""
        array = self.read_image(image)
        height, width = array.shape[:2]
        aug_input = T.AugInput(array)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, **query.model_fields()}

    # -- running ---------------------------------------------------------------------------------
    def __call__(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        prompt: Optional[PromptLike] = None,
        *,
        prompts: Optional[Sequence[PromptLike]] = None,
    ) -> Union[FIBERPrediction, List[FIBERPrediction]]:
        """Detect or ground.

        Args:
            images: one image, or a list of images (run in batches of ``batch_size``).
            prompt: one prompt for every image: a caption, a :class:`Prompt` or a list of
                category names.
            prompts: instead of ``prompt``, one prompt per image of the list.

        Returns:
            FIBERPrediction for one image, a list of them for a list of images.
        """
        single = not isinstance(images, (list, tuple))
        image_list = [images] if single else list(images)
        if (prompt is None) == (prompts is None):
            raise TypeError(
                "give either `prompt` (one prompt for all images) or `prompts=` (one per image)"
            )
        if prompts is not None:
            if single or len(prompts) != len(image_list):
                raise ValueError(
                    f"`prompts=` needs a list of images and one prompt per image; got "
                    f"{len(prompts)} prompts for {len(image_list)} image(s)"
                )
            queries = [self.encode_prompt(p) for p in prompts]
        else:
            queries = [self.encode_prompt(prompt)] * len(image_list)
        if not image_list:
            return []
        results = []
        for start in range(0, len(image_list), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(image_list)))
            inputs = [self.model_input(image_list[i], queries[i]) for i in chunk]
            with torch.no_grad():
                outputs = self.model(inputs)
            for i, out in zip(chunk, outputs):
                results.append(self._prediction(out["instances"].to("cpu"), queries[i]))
        return results[0] if single else results

    def _prediction(self, inst: Instances, query: _Query) -> FIBERPrediction:
        keep = inst.scores >= self.score_threshold
        inst = inst[keep]
        ids = inst.pred_classes.long()
        return FIBERPrediction(
            boxes=inst.pred_boxes.tensor,
            scores=inst.scores,
            label_ids=ids,
            labels=[query.names[i] for i in ids.tolist()],
            label_names=list(query.names),
            captions=list(query.captions),
            image_size=tuple(inst.image_size),
        )
