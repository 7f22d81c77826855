"""The inference service behind ``tools/serve.py``: request validation, limits, one predictor.

:class:`InferenceService` turns a request (a dict parsed from JSON, or an image body with query
parameters) into the JSON answer of ``POST /api/predict`` (schema in :mod:`fiber_det.serve`), or
raises :class:`RequestError` with the HTTP status and a message that names the problem and the
fix. It never lets an exception of a bad request escape as anything else.
"""

import base64
import binascii
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from PIL import Image

from ..predictor import FIBERPredictor
from ..text import find_noun_phrases, vocabulary_prompts

__all__ = ["InferenceService", "RequestError", "ServiceLimits"]

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A bad request: ``status`` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServiceLimits:
    """What one request may ask for.

    Attributes:
        max_request_bytes (int): request body size (HTTP 413 above).
        max_image_pixels (int): width x height of a decoded image (HTTP 413 above); checked
            from the image header, before decoding.
        max_prompt_chars (int): characters of a caption or of all category names together.
        max_categories (int): names in a category list.
        image_root (str, optional): folder whose images a request may name by path
            (``image_path``); None forbids paths (HTTP 403).
    """

    max_request_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 4000
    max_categories: int = 1000
    image_root: Optional[str] = None


class InferenceService:
    """A predictor (PyTorch or ONNX) behind a lock, with request checks.

    Args:
        predictor (FIBERPredictor): ``FIBERPredictor`` or ``OnnxPredictor``.
        limits (ServiceLimits): request limits.
        default_threshold (float): score threshold when a request gives none.
        description (str): what model this is (shown by ``GET /api/info``).
    """

    def __init__(
        self,
        predictor: FIBERPredictor,
        *,
        limits: Optional[ServiceLimits] = None,
        default_threshold: float = 0.3,
        description: str = "",
    ):
        self.predictor = predictor
        self.limits = limits or ServiceLimits()
        self.default_threshold = float(default_threshold)
        self.description = description
        self._lock = threading.Lock()

    def info(self) -> Dict[str, Any]:
        """``GET /api/info``: the model and the limits."""
        model = self.predictor.model
        vocabulary = getattr(model, "vocabulary", None)
        return {
            "model": self.description,
            "runtime": "onnxruntime" if hasattr(model, "session") else "pytorch",
            "fixed_vocabulary": vocabulary["names"] if vocabulary else None,
            "default_threshold": self.default_threshold,
            "limits": {
                "max_request_bytes": self.limits.max_request_bytes,
                "max_image_pixels": self.limits.max_image_pixels,
                "max_prompt_chars": self.limits.max_prompt_chars,
                "max_categories": self.limits.max_categories,
                "image_paths": self.limits.image_root is not None,
            },
        }

    # -- request parts -----------------------------------------------------------------------
    def _open_image(self, data: bytes) -> Image.Image:
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # header only: nothing decoded yet
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise RequestError(
                400,
                f"the upload is not an image PIL can read ({type(e).__name__}): send a "
                "JPEG, PNG, BMP, GIF, TIFF or WebP file",
            ) from e
        if width * height > self.limits.max_image_pixels:
            raise RequestError(
                413,
                f"image of {width}x{height} pixels exceeds the server's limit of "
                f"{self.limits.max_image_pixels} pixels: downscale it first",
            )
        try:
            return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:
            raise RequestError(400, f"the image data is damaged ({type(e).__name__}: {e})") from e

    def _image_from_path(self, value: Any) -> Image.Image:
        root = self.limits.image_root
        if root is None:
            raise RequestError(
                403,
                "this server reads no image paths: upload the image ('image': base64), or "
                "start tools/serve.py with --image-root FOLDER",
            )
        if not isinstance(value, str) or not value:
            raise RequestError(400, "'image_path' must be a non-empty string")
        base = Path(root).resolve()
        path = (base / value).resolve()
        if base != path and base not in path.parents:
            raise RequestError(403, f"'image_path' {value!r} is outside the server's image root")
        if not path.is_file():
            raise RequestError(400, f"'image_path' {value!r}: no such file under the image root")
        if path.stat().st_size > self.limits.max_request_bytes:
            raise RequestError(413, f"'image_path' {value!r} is larger than the request limit")
        return self._open_image(path.read_bytes())

    def _image(self, request: Dict[str, Any], body_image: Optional[bytes]) -> Image.Image:
        if body_image is not None:
            return self._open_image(body_image)
        if "image" in request and "image_path" in request:
            raise RequestError(400, "give either 'image' (base64) or 'image_path', not both")
        if "image_path" in request:
            return self._image_from_path(request["image_path"])
        value = request.get("image")
        if not isinstance(value, str) or not value:
            raise RequestError(
                400, "no image: give 'image' (base64 or a data: URL of the file) or 'image_path'"
            )
        if value.startswith("data:"):
            value = value.partition(",")[2]
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(400, f"'image' is not valid base64 ({e})") from e
        return self._open_image(data)

    def _prompt(self, request: Dict[str, Any]) -> Union[str, List[str]]:
        caption, categories = request.get("caption"), request.get("categories")
        if caption is not None and categories is not None:
            raise RequestError(400, "give either 'caption' or 'categories', not both")
        limit = self.limits.max_prompt_chars
        if caption is not None:
            if not isinstance(caption, str):
                raise RequestError(400, "'caption' must be a string")
            if not caption.strip():
                raise RequestError(400, "the caption is empty: describe what to find")
            if len(caption) > limit:
                raise RequestError(
                    413, f"the caption has {len(caption)} characters (limit {limit})"
                )
            return caption
        if categories is None:
            if getattr(self.predictor.model, "vocabulary", None):
                return list(self.predictor.model.vocabulary["names"])
            raise RequestError(400, "no prompt: give 'caption' (a sentence) or 'categories'")
        if isinstance(categories, str):
            categories = categories.split(",")
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise RequestError(
                400, "'categories' must be a list of names (or a comma-separated string)"
            )
        names = [c.strip() for c in categories if c.strip()]
        if not names:
            raise RequestError(400, "the category list is empty: give at least one name")
        if len(names) > self.limits.max_categories or sum(map(len, names)) > limit:
            raise RequestError(
                413,
                f"{len(names)} names / {sum(map(len, names))} characters exceed the limits "
                f"({self.limits.max_categories} names, {limit} characters)",
            )
        return names

    def _threshold(self, request: Dict[str, Any]) -> float:
        value = request.get("threshold", self.default_threshold)
        try:
            threshold = float(value)
        except (TypeError, ValueError):
            raise RequestError(
                400, f"'threshold' must be a number in [0, 1], got {value!r}"
            ) from None
        if not 0.0 <= threshold <= 1.0:
            raise RequestError(400, f"'threshold' must be in [0, 1], got {threshold}")
        return threshold

    def _phrases(self, prompt: Union[str, List[str]], query) -> List[Dict[str, Any]]:
        """Per label: its text, the caption it is in and its character spans there."""
        if isinstance(prompt, str):
            spans = find_noun_phrases(prompt)
            return [
                {"label": n, "label_id": i, "caption_index": 0, "spans": [list(s)]}
                for i, (n, s) in enumerate(zip(query.names, spans))
            ]
        p = self.predictor
        chunks = vocabulary_prompts(
            prompt,
            tokenizer=p.tokenizer,
            max_tokens=p.max_query_len,
            chunk_size=p.chunk_size,
            separator=p.separator,
        )
        phrases = []
        for c, chunk in enumerate(chunks):
            for spans, name_id in zip(chunk.spans, chunk.label_ids):
                phrases.append(
                    {
                        "label": prompt[name_id],
                        "label_id": len(phrases),
                        "caption_index": c,
                        "spans": [list(s) for s in spans],
                    }
                )
        return phrases

    # -- the call ----------------------------------------------------------------------------
    def predict(
        self, request: Dict[str, Any], body_image: Optional[bytes] = None
    ) -> Dict[str, Any]:
        """Validate ``request``, run the model, return the JSON answer (or raise RequestError).

        Args:
            request: the JSON fields (``image``/``image_path``, ``caption``/``categories``,
                ``threshold``); with ``body_image``, the query parameters.
            body_image: the raw image of a request whose body is the image file.
        """
        if not isinstance(request, dict):
            raise RequestError(400, 'the JSON body must be an object, e.g. {"caption": ...}')
        prompt = self._prompt(request)
        threshold = self._threshold(request)
        image = self._image(request, body_image)
        try:
            query = self.predictor.encode_prompt(prompt)
        except (ValueError, TypeError) as e:
            raise RequestError(400, str(e)) from e
        start = time.perf_counter()
        with self._lock:
            try:
                pred = self.predictor(image, prompt)
            except ValueError as e:  # e.g. an image larger than an ONNX graph's size
                raise RequestError(422, str(e)) from e
        elapsed = time.perf_counter() - start
        answer = pred.to_dict()
        answer["detections"] = [d for d in answer["detections"] if d["score"] >= threshold]
        answer.update(
            threshold=threshold,
            phrases=self._phrases(prompt, query),
            elapsed_s=round(elapsed, 3),
        )
        logger.info(
            "%dx%d image, %d labels: %d detections >= %.2f in %.2f s",
            image.width, image.height, len(query.names), len(answer["detections"]),
            threshold, elapsed,
        )  # fmt: skip
        return answer
