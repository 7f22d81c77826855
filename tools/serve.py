#!/usr/bin/env python
"""Serve a FIBER model over HTTP on this machine: a JSON API and a web page.

    python tools/serve.py --config-file output/demo/config.yaml \\
        --weights output/demo/model_final.pth
    python tools/serve.py --config-file output/demo/config.yaml --onnx output/fiber.onnx \\
        --port 8080

Open http://127.0.0.1:8000/ in a browser (the page needs no internet), or call the API:

    curl -s -X POST http://127.0.0.1:8000/api/predict -H 'Content-Type: application/json' \\
        -d '{"image": "'$(base64 -w0 photo.jpg)'", "categories": ["person", "dog"]}'
    curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' \\
        'http://127.0.0.1:8000/api/predict?caption=a+man+with+a+dog&threshold=0.4'

The schema is in fiber_det/serve/__init__.py and the README ("Serve"). --port 0 picks a free
port; the first line on stdout is "serving on http://HOST:PORT/". Ctrl-C stops the server.
"""

import argparse
import logging
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

logger = logging.getLogger("fiber_det.serve")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="model config (yaml)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--weights", default=None, help="checkpoint (overrides MODEL.WEIGHTS)")
    model.add_argument("--onnx", default=None, help="an exported graph (tools/export_onnx.py)")
    p.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--cpu", action="store_true", help="run PyTorch on CPU (MODEL.DEVICE cpu)")
    p.add_argument("--threshold", type=float, default=0.3, help="default score threshold")
    p.add_argument("--max-request-mb", type=float, default=16.0, help="request body limit")
    p.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="width x height limit of images"
    )
    p.add_argument(
        "--image-root",
        default=None,
        help="folder whose images requests may name by 'image_path' (default: no paths)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from fiber_det.config import load_config
    from fiber_det.predictor import FIBERPredictor
    from fiber_det.serve import InferenceService, ServiceLimits, make_server
    from fiber_det.utils.allocator import keep_freed_memory

    setup_logger(name="fiber_det", abbrev_name="fiber")
    keep_freed_memory()  # reuse freed tensors' pages (fiber_det/utils/allocator.py)
    try:
        device = "cpu" if args.cpu or args.onnx else None
        cfg = load_config(args.config_file, args.opts, weights=args.weights, device=device)
        if args.onnx:
            from fiber_det.export import OnnxPredictor

            predictor = OnnxPredictor(cfg, onnx_file=args.onnx, batch_size=1)
        else:
            predictor = FIBERPredictor(cfg, batch_size=1)
        limits = ServiceLimits(
            max_request_bytes=int(args.max_request_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            image_root=args.image_root,
        )
        service = InferenceService(
            predictor,
            limits=limits,
            default_threshold=args.threshold,
            description=f"{args.config_file} + {args.onnx or cfg.MODEL.WEIGHTS or 'no weights'}",
        )
        server = make_server(service, args.host, args.port)
    except (FileNotFoundError, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
