"""The JSON API of tools/serve.py: answers, schema, and a 4xx (never a crash) for bad input."""

import base64
import http.client
import io
import json
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from .conftest import tiny_images


def _png(array_rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array_rgb).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = _png(tiny_images(1, seed=4)[0][:, :, ::-1])


def _call(url, method, path, body=b"", headers=None):
    """(status, parsed JSON or text) of one request on a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(data) if "json" in ctype else data.decode("utf-8")
    finally:
        conn.close()


def _predict(url, **request):
    body = json.dumps(request).encode()
    return _call(url, "POST", "/api/predict", body, {"Content-Type": "application/json"})


def test_page_and_info(server_url):
    status, page = _call(server_url, "GET", "/")
    assert status == 200 and '<form id="form">' in page and 'type="file"' in page
    assert "http://" not in page and "https://" not in page  # nothing from another host
    status, info = _call(server_url, "GET", "/api/info")
    assert status == 200 and info["runtime"] == "pytorch" and info["limits"]["image_paths"]


def test_predict_with_categories_and_caption(server_url):
    b64 = base64.b64encode(IMAGE).decode()
    status, out = _predict(server_url, image=b64, categories=["red circle", "dog"], threshold=0.0)
    assert status == 200, out
    assert out["label_names"] == ["red circle", "dog"] and out["image_size"] == [256, 320]
    dets = out["detections"]
    assert len(dets) > 0 and {d["label"] for d in dets} <= {"red circle", "dog"}
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 320 for d in dets)
    caption_0 = out["captions"][0]
    assert [caption_0[s:e] for p in out["phrases"] for s, e in p["spans"]] == ["red circle", "dog"]

    high = dets[len(dets) // 2]["score"]
    caption = "a small red circle left of a blue square"
    status, out = _predict(
        server_url, image="data:image/png;base64," + b64, caption=caption, threshold=high
    )
    assert status == 200 and all(d["score"] >= high for d in out["detections"])
    assert [caption[s:e] for p in out["phrases"] for s, e in p["spans"]] == [
        "small red circle",
        "blue square",
    ]


def test_image_as_body_and_by_path(server_url):
    status, out = _call(
        server_url,
        "POST",
        "/api/predict?categories=dog,cat&threshold=0",
        IMAGE,
        {"Content-Type": "image/png"},
    )
    assert status == 200 and out["label_names"] == ["dog", "cat"] and out["detections"]
    status, out = _predict(server_url, image_path="shapes.png", caption="a dog")
    assert status == 200 and out["image_size"] == [256, 320]


BIG = _png(np.zeros((1200, 1000, 3), dtype=np.uint8))  # 1.2 M pixels, a few kB
B64 = base64.b64encode(IMAGE).decode()
NOT_IMAGE = base64.b64encode(b"GIF89a but not really").decode()
BAD = [
    ("not an image", dict(image=NOT_IMAGE, caption="dog"), 400, "not an image"),
    ("not base64", dict(image="@@@", caption="dog"), 400, "base64"),
    ("huge image", dict(image=base64.b64encode(BIG).decode(), caption="dog"), 413, "1000x1200"),
    ("empty caption", dict(image=B64, caption="   "), 400, "empty"),
    ("empty categories", dict(image=B64, categories=[]), 400, "empty"),
    ("no prompt", dict(image=base64.b64encode(IMAGE).decode()), 400, "no prompt"),
    ("no image", dict(caption="dog"), 400, "no image"),
    ("bad threshold", dict(image=B64, caption="dog", threshold="x"), 400, "threshold"),
    ("threshold > 1", dict(image=B64, caption="dog", threshold=3), 400, "threshold"),
    ("both prompts", dict(image=B64, caption="a", categories=["b"]), 400, "not both"),
    ("path outside root", dict(image_path="../../etc/passwd", caption="dog"), 403, "outside"),
    ("missing path", dict(image_path="nope.png", caption="dog"), 400, "no such file"),
]  # fmt: skip


@pytest.mark.parametrize("request_, status, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_4xx(server_url, request_, status, words):
    got, out = _predict(server_url, **request_)
    assert got == status, out
    assert words in out["error"]["message"] and out["error"]["status"] == status


@pytest.mark.parametrize(
    "method, path, body, headers, status",
    [
        ("POST", "/api/predict", b"{not json", {"Content-Type": "application/json"}, 400),
        ("POST", "/api/predict", b"[1, 2]", {"Content-Type": "application/json"}, 400),
        ("POST", "/api/predict", b"\xff\xfe", {"Content-Type": "application/json"}, 400),
        ("POST", "/api/predict", b"hello", {"Content-Type": "text/plain"}, 415),
        ("POST", "/api/predict", b"{}", {"Content-Length": str(50 * 2**20)}, 413),
        ("GET", "/api/predict", b"", {}, 405),
        ("GET", "/nothing", b"", {}, 404),
        ("POST", "/api/other", b"{}", {"Content-Type": "application/json"}, 404),
    ],
    ids=["malformed", "array", "not utf-8", "content type", "too large", "get", "404", "post 404"],
)
def test_malformed_requests(server_url, method, path, body, headers, status):
    got, out = _call(server_url, method, path, body, headers)
    assert got == status and out["error"]["message"]


def test_server_survives_an_internal_error(server_url, service, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(service, "predict", boom)
    status, out = _predict(server_url, image=base64.b64encode(IMAGE).decode(), caption="dog")
    assert status == 500 and "server's log" in out["error"]["message"]
    monkeypatch.undo()
    status, out = _predict(server_url, image=base64.b64encode(IMAGE).decode(), caption="dog")
    assert status == 200 and out["detections"]
