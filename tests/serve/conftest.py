"""Server-test fixtures: the tiny model of the export tests, served in this process."""

import threading

import pytest

from fiber_det.config import load_config
from fiber_det.predictor import FIBERPredictor
from fiber_det.serve import InferenceService, ServiceLimits, make_server

from ..export.conftest import model_files, tiny_images  # noqa: F401  (fixture and helper)

#: Small limits, so that the tests can cross them cheaply.
LIMITS = dict(max_request_bytes=2 * 2**20, max_image_pixels=1000 * 1000)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("served_images")
    Image.fromarray(tiny_images(1, seed=5)[0][:, :, ::-1]).save(root / "shapes.png")
    return root


@pytest.fixture(scope="session")
def service(model_files, image_root):  # noqa: F811
    config, weights = model_files
    predictor = FIBERPredictor(load_config(config, weights=weights, device="cpu"), batch_size=1)
    limits = ServiceLimits(**LIMITS, image_root=str(image_root))
    return InferenceService(predictor, limits=limits, default_threshold=0.0, description="tiny")


@pytest.fixture(scope="session")
def server_url(service):
    """The API on 127.0.0.1 (a free port) in a thread, shut down after the session."""
    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
