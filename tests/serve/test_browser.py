"""End to end in a real browser: tools/serve.py with the tiny model, headless Chromium opens the
page, uploads an image, submits a prompt, and the boxes appear (in the DOM and on a screenshot,
saved as output/tests/serve_page.png).

The test starts and stops the server and the browser itself; every wait is bounded. Without
Chromium (Debian packages ``chromium`` and ``chromium-driver``) it fails under CI (``CI`` set:
.ci/run installs them) and is skipped elsewhere, with the command that installs them.
"""

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.paths import REPO_ROOT

from .conftest import tiny_images

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT_S = 240  # model build + tokenizer on a busy 2-core machine
PAGE_TIMEOUT_S = 120
SCREENSHOT = REPO_ROOT / "output" / "tests" / "serve_page.png"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,1000",
]


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = (
        "headless Chromium is not installed: apt-get install -y chromium chromium-driver "
        "(.ci/run does this before the tests)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def served(model_files, tmp_path):
    """(URL, process) of tools/serve.py on 127.0.0.1 (a free port); stopped afterwards."""
    config, weights = model_files
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "serve.py"), "--config-file", config]
    cmd += ["--weights", weights, "--host", "127.0.0.1", "--port", "0", "--threshold", "0.0"]
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline, line = time.monotonic() + SERVER_START_TIMEOUT_S, ""
        while not line.startswith("serving on") and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
        if not line.startswith("serving on"):
            log.flush()
            pytest.fail(f"server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield line.split()[-1].rstrip("/"), proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_paths()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _api_detections(url, image_path, categories, threshold):
    import base64

    body = json.dumps(
        {
            "image": base64.b64encode(Path(image_path).read_bytes()).decode(),
            "categories": categories,
            "threshold": threshold,
        }
    ).encode()
    req = urllib.request.Request(
        url + "/api/predict", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=PAGE_TIMEOUT_S) as resp:
        return json.loads(resp.read())["detections"]


def test_page_shows_the_boxes(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    image_path = tmp_path / "shapes.png"
    Image.fromarray(tiny_images(1, seed=6)[0][:, :, ::-1]).save(image_path)
    scores = [d["score"] for d in _api_detections(url, image_path, ["red circle", "dog"], 0.0)]
    assert len(scores) >= 6, "the tiny model gives too few detections to draw"
    threshold = scores[5]  # about six boxes: a readable screenshot
    expected = _api_detections(url, image_path, ["red circle", "dog"], threshold)

    browser.get(url + "/")
    browser.find_element(By.ID, "image").send_keys(str(image_path))
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") > 0
    )
    browser.find_element(By.ID, "prompt").send_keys("red circle, dog")
    field = browser.find_element(By.ID, "threshold")
    field.clear()
    field.send_keys(f"{threshold:.5f}")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: (
            "detection(s)" in d.find_element(By.ID, "status").text
            or "Error" in d.find_element(By.ID, "status").text
        )
    )
    status = browser.find_element(By.ID, "status").text
    boxes = browser.find_elements(By.CSS_SELECTOR, "#stage .box")
    rows = browser.find_elements(By.CSS_SELECTOR, "#detections tr.detection")
    assert status.startswith(f"{len(expected)} detection(s)"), status
    assert len(boxes) == len(rows) == len(expected)
    labels = [b.get_attribute("data-label") for b in boxes]
    assert labels == [d["label"] for d in expected]
    first = boxes[0].find_element(By.CLASS_NAME, "box-label").text
    assert first == f"{expected[0]['label']} {expected[0]['score']:.2f}"

    # Boxes lie on the image where the API put them (page coordinates, scaled).
    img = browser.find_element(By.ID, "preview").rect
    scale = img["width"] / 320
    for box, det in list(zip(boxes, expected))[:5]:
        r = box.rect
        assert abs(r["x"] - (img["x"] + det["box"][0] * scale)) < 2
        assert abs(r["width"] - (det["box"][2] - det["box"][0]) * scale) < 2

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    shot = np.asarray(Image.open(SCREENSHOT).convert("RGB"))
    color = browser.execute_script(
        "return getComputedStyle(document.querySelector('#stage .box')).borderTopColor"
    )
    rgb = [int(v) for v in color[color.index("(") + 1 : color.index(")")].split(",")[:3]]
    drawn = (shot == np.array(rgb, dtype=np.uint8)).all(axis=-1).sum()
    assert drawn > 50, f"the screenshot shows no box border of colour {color}"
