#!/usr/bin/env python
"""FIBER-B in onnxruntime vs PyTorch vs the official model, on the public parity fixtures.

For each fixture of shared/parity/fixtures (official FIBER-B, synthetic checkpoint, see
shared/parity/README.md): load the checkpoint into the parity config, export the full graph and
the fixed-vocabulary graph (the fixture's prompt stored in the graph) at the fixture's padded size,
run both with fiber_det.export.OnnxDetector, and compare the detections with PyTorch's and the
official ones (same labels, scores within 1e-4, boxes within 0.01 px, matched one to one).

    python dev/onnx_parity.py                      # both fixtures, ~10 min on 2 CPU cores
    python dev/onnx_parity.py --output output/onnx_parity

Prints a markdown table (the README's figures) and writes results.json; exits 1 on a mismatch.
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import FIBERCheckpointer
from fiber_det.export import OnnxDetector, export_graph
from fiber_det.modeling.head import PostProcessor
from fiber_det.utils.io import atomic_write_json
from fiber_det.utils.testing import get_config, unmatched_detections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests: the parity folder, inputs
from tests.modeling.test_official_parity import _inputs as fixture_input  # noqa: E402
from tests.paths import parity_dir  # noqa: E402

logger = logging.getLogger("onnx_parity")

BOX_TOL, SCORE_TOL = 0.01, 1e-4


def load_fixture_model(path: Path, tmp: Path):
    """(fixture, cfg, FIBER-B with the fixture's synthetic checkpoint) as the parity test does."""
    sys.path.insert(0, str(parity_dir()))
    import synth_state_dict as synth

    fx = torch.load(path, weights_only=False)
    meta = fx["meta"]
    sd = synth.make_state_dict(
        str(parity_dir() / f"official_keys_{meta['variant']}.json"), meta["seed"]
    )
    if synth.fingerprint(sd) != meta["fingerprint"]:
        raise SystemExit(f"{path}: the synthetic checkpoint differs from the fixture's")
    ckpt = tmp / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    del sd
    cfg = get_config(f"fiber_b/official_parity_{meta['variant']}.yaml")
    model = build_model(cfg).eval()
    FIBERCheckpointer(model).load(str(ckpt))
    ckpt.unlink()
    return fx, cfg, model


def compare(a, b):
    """(detections, unmatched, max score diff, max box diff) of B against A.

    A and B are (boxes, scores, labels); each detection of A is paired with the detection of B
    of the same label nearest in box and score (one to one)."""
    boxes_a, scores_a, labels_a = a
    boxes_b, scores_b, labels_b = b
    missing = unmatched_detections(
        boxes_a, scores_a, labels_a, boxes_b, scores_b, labels_b, BOX_TOL, SCORE_TOL
    )
    used = torch.zeros(len(boxes_b), dtype=torch.bool)
    max_score = max_box = 0.0
    for box, score, label in zip(boxes_a, scores_a, labels_a):
        cand = ((labels_b == label) & ~used).nonzero().flatten()
        if len(cand) == 0:
            continue
        dist = (boxes_b[cand] - box).abs().max(1).values + (scores_b[cand] - score).abs()
        j = cand[dist.argmin()]
        used[j] = True
        max_score = max(max_score, float((scores_b[j] - score).abs()))
        max_box = max(max_box, float((boxes_b[j] - box).abs().max()))
    return len(boxes_a), len(missing) + abs(len(boxes_a) - len(boxes_b)), max_score, max_box


def _triple(inst, label_offset=0):
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes + label_offset


def run_fixture(path: Path, tmp: Path):
    fx, cfg, model = load_fixture_model(path, tmp)
    x = fixture_input(fx)  # the parity test's model input of a fixture
    h, w = x["image"].shape[-2:]
    d = model.backbone.size_divisibility
    height, width = -(-h // d) * d, -(-w // d) * d
    with torch.no_grad():
        torch_dets = _triple(model([x])[0]["instances"])
    ref = fx["detections"]
    official = (ref["boxes_xyxy"], ref["scores"], ref["labels"] - 1)
    prompt = {k: x[k] for k in ("input_ids", "attention_mask", "positive_map")}
    names = [f"label {i}" for i in range(prompt["positive_map"].shape[0])]
    results = {"fixture": path.stem, "size": f"{h}x{w} (padded {height}x{width})"}
    graphs = {}
    for kind, fixed in (("full", None), ("fixed", {"names": names, "label_names": names})):
        out = tmp / f"{path.stem}_{kind}.onnx"
        fixed = fixed and {**fixed, "captions": ["(the fixture's prompt)"]}
        report = export_graph(
            model, str(out), height=height, width=width, prompts=[prompt], fixed_vocabulary=fixed
        )
        results[f"{kind}_graph_check"] = report.max_abs_diff
        runner = OnnxDetector(
            str(out),
            postprocessor=PostProcessor.from_config(cfg),
            providers=["CPUExecutionProvider"],
        )
        graphs[kind] = _triple(runner([x])[0]["instances"])
        del runner
        out.unlink()
    rows = {
        "onnxruntime vs PyTorch": (torch_dets, graphs["full"]),
        "onnxruntime vs official": (official, graphs["full"]),
        "fixed vocabulary vs full graph": (graphs["full"], graphs["fixed"]),
        "PyTorch vs official": (official, torch_dets),
    }
    for name, (a, b) in rows.items():
        n, bad, ds, db = compare(a, b)
        results[name] = {
            "detections": n,
            "unmatched": bad,
            "max_score_diff": ds,
            "max_box_diff": db,
        }
    return results


def table(all_results) -> str:
    lines = [
        "| fixture | comparison | detections | unmatched | max score diff | max box diff (px) |",
        "|---|---|---|---|---|---|",
    ]
    for res in all_results:
        for key, r in res.items():
            if isinstance(r, dict) and "detections" in r:
                lines.append(
                    f"| {res['fixture']} ({res['size']}) | {key} | {r['detections']} | "
                    f"{r['unmatched']} | {r['max_score_diff']:.1e} | {r['max_box_diff']:.1e} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/onnx_parity", help="folder for results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fixtures = sorted((parity_dir() / "fixtures").glob("*.pt"))
    if not fixtures:
        raise SystemExit(f"no parity fixtures in {parity_dir()} (set FIBER_PARITY_DIR)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in fixtures:
            logger.info("== %s", path.name)
            results.append(run_fixture(path, Path(tmp)))
    text = table(results)
    print(text)
    atomic_write_json({"results": results, "table": text}, Path(args.output) / "results.json")
    ok = all(
        r[k]["unmatched"] == 0
        for r in results
        for k in r
        if isinstance(r[k], dict) and "unmatched" in r[k]
    )
    print(f"\n{'all detections match' if ok else 'MISMATCH'}; wrote {args.output}/results.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
