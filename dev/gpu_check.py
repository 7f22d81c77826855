#!/usr/bin/env python
"""Device checks for a CUDA machine (not part of CI, which has no GPU).

    FIBER_PARITY_DIR=../shared/parity python dev/gpu_check.py --out output/gpu_check

1. Parity on the GPU: every fixture of the parity folder through the official-parity config on
   CUDA, with both deformable-conv implementations (torchvision's CUDA kernel and grid_sample),
   fp32 (TF32 off): max abs diffs of FPN / text / logits, detections matched, loss differences.
2. AMP (fp16 autocast) inference against fp32 on the same input.
3. The FIBER-B benchmark (tools/benchmark.py) on the GPU.
Results: JSON files and a log in ``--out``.
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from fiber_det.checkpoint import convert_official_state_dict
from fiber_det.utils.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.paths: the parity folder
from fiber_det.utils.testing import get_config, unmatched_detections, unmatched_instances
from tests.paths import REPO_ROOT, parity_dir


def _inputs(fx, device):
    length = fx["input_ids"].shape[1]
    pmap = torch.zeros(len(fx["label_to_tokens"]), length)
    for label, tokens in fx["label_to_tokens"].items():
        pmap[label - 1, tokens] = 1.0
    return {
        "image": fx["image_bgr_hwc_uint8"].permute(2, 0, 1).float().to(device),
        "input_ids": fx["input_ids"][0],
        "attention_mask": fx["attention_mask"][0],
        "positive_map": pmap,
    }


@torch.no_grad()
def _outputs(model, x):
    images = model.preprocess_image([x])
    ids, mask = model.preprocess_text([x])
    feats, text = model.backbone(images.tensor, ids, mask)
    return feats, text, model.head(list(feats.values()), text)


def parity_on_device(device, impls, log):
    sys.path.insert(0, str(parity_dir()))
    import synth_state_dict as synth

    results = []
    for path in sorted((parity_dir() / "fixtures").glob("*.pt")):
        fx = torch.load(path, weights_only=False)
        meta = fx["meta"]
        sd = synth.make_state_dict(
            str(parity_dir() / f"official_keys_{meta['variant']}.json"), meta["seed"]
        )
        for impl in impls:
            cfg = get_config(
                f"fiber_b/official_parity_{meta['variant']}.yaml", ["MODEL.DYHEAD.DCN_IMPL", impl]
            )
            cfg.MODEL.DEVICE = device
            model = build_model(cfg).eval()
            converted, _ = convert_official_state_dict(sd, meta["variant"])
            model.load_state_dict(converted, strict=False)
            x = _inputs(fx, device)
            feats, text, out = _outputs(model, x)
            n = fx["n_valid_tokens"]
            r = {"fixture": path.stem, "dcn": impl}
            r["fpn"] = max(
                (f.cpu() - g).abs().max().item() for f, g in zip(feats.values(), fx["fpn"])
            )
            r["text"] = (text.hidden.cpu() - fx["text_hidden"]).abs().max().item()
            r["logits"] = max(
                (a[..., :n].cpu() - b).abs().max().item()
                for a, b in zip(out.logits, fx["dot_product_logits"])
            )
            r["box_ctr"] = max(
                max(
                    (a.cpu() - b).abs().max().item()
                    for a, b in zip(out.box_regression, fx["box_regression"])
                ),
                max(
                    (a.cpu() - b).abs().max().item()
                    for a, b in zip(out.centerness, fx["centerness"])
                ),
            )
            with torch.no_grad():
                inst = model([x])[0]["instances"].to("cpu")
            ref = fx["detections"]
            r["detections"] = f"{len(inst)} vs {len(ref['scores'])}"
            r["unmatched"] = len(
                unmatched_detections(
                    ref["boxes_xyxy"],
                    ref["scores"],
                    ref["labels"],
                    inst.pred_boxes.tensor,
                    inst.scores,
                    inst.pred_classes + 1,
                )
            )
            with (
                torch.no_grad(),
                torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"),
            ):
                amp = model([x])[0]["instances"].to("cpu")
            r["amp_fp16_detections"] = len(amp)
            r["amp_fp16_unmatched_at_1e-2"] = len(
                unmatched_instances(inst, amp, box_tol=1.0, score_tol=1e-2)
            )
            t = fx["train_targets"]
            gt = Instances(tuple(fx["image_bgr_hwc_uint8"].shape[:2]))
            gt.gt_boxes = Boxes(t["boxes_xyxy"])
            gt.positive_map = t["positive_map"]
            model.train()
            with EventStorage(), torch.no_grad():
                losses = model([dict(x, instances=gt)])
            r["loss_rel_diff"] = max(
                abs(losses[k].item() - v) / max(abs(v), 1e-12)
                for k, v in fx["train_losses"].items()
                if k in losses
            )
            ok = max(r["fpn"], r["text"], r["logits"], r["box_ctr"]) < 1e-3 and r["unmatched"] == 0
            r["ok"] = bool(ok and r["loss_rel_diff"] < 1e-4)
            log(json.dumps(r))
            results.append(r)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="output/gpu_check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument(
        "--benchmark-args",
        default="--size 512 --prompts 8 31 --repeats 5 --repeats-large 3 --train-rounds 1",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: no TF32 in matmuls or convs
    torch.backends.cudnn.allow_tf32 = False
    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    log(json.dumps(info))
    start = time.time()
    impls = ["torchvision", "grid_sample"]
    parity = parity_on_device(args.device, impls, log)
    atomic_write_json({"info": info, "parity": parity}, out / "parity.json")
    log(f"parity done in {time.time() - start:.0f}s; all ok: {all(r['ok'] for r in parity)}")
    if not args.skip_benchmark:
        spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "tools/benchmark.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        bench_args = args.benchmark_args.split() + [
            "--device",
            args.device,
            "--output",
            str(out / "benchmark.json"),
        ]
        bench.main(bench_args)
        log(f"benchmark done at {time.time() - start:.0f}s")
    return 0 if all(r["ok"] for r in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
