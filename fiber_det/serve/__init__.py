"""Inference server and web page for FIBER (``tools/serve.py``), on the standard library.

API (JSON; every error is ``{"error": {"status": int, "message": str}}`` with a 4xx/5xx status):

``GET /``
    the web page: upload an image, type a caption or category names, see the boxes.
``GET /api/info``
    ``{"model", "runtime": "pytorch" | "onnxruntime", "fixed_vocabulary": [names] | null,
    "default_threshold", "limits": {...}}``.
``POST /api/predict`` with ``Content-Type: application/json``::

    {"image": "<base64 of the file, or a data: URL>"  |  "image_path": "relative/to/image-root.jpg",
     "caption": "a man with a red umbrella"  |  "categories": ["person", "umbrella"],
     "threshold": 0.3}                                # optional, in [0, 1]

or with the image file as the body (``Content-Type: image/jpeg``, ``image/png``, ...) and
``?caption=...`` or ``?categories=person,umbrella`` (``&threshold=0.3``) in the URL. Answer::

    {"image_size": [h, w], "captions": [str], "label_names": [str],
     "detections": [{"box": [x1, y1, x2, y2], "score": float, "label": str, "label_id": int}],
     "phrases": [{"label": str, "label_id": int, "caption_index": int, "spans": [[start, end]]}],
     "threshold": float, "elapsed_s": float}

Boxes are in the original image's pixels, sorted by score; ``phrases`` gives each label's
character spans in ``captions[caption_index]`` (the noun phrases of a caption, or the names in
the detection prompt). Status codes: 400 bad input (not an image, malformed JSON, empty prompt,
bad threshold), 403 image paths not allowed, 404 unknown route, 405, 411, 413 request or image
too large, 415 unknown content type, 422 an image the ONNX graph cannot take, 500 a server fault
(logged; the server goes on).
"""

from .server import make_server
from .service import InferenceService, RequestError, ServiceLimits

__all__ = ["InferenceService", "RequestError", "ServiceLimits", "make_server"]
