#!/usr/bin/env python
"""Speed and memory of FIBER, each compared with its baseline in the same run.

    python tools/benchmark.py                       # FIBER-B, 512x512, CPU (about an hour)
    python tools/benchmark.py --quick               # tiny model, seconds (smoke test)
    python tools/benchmark.py --skip train profile  # leave sections out
    python tools/benchmark.py --from-json output/benchmark/*.json --readme README.md
    python tools/benchmark.py --onnx 512x512 800x1216     # onnxruntime vs PyTorch only
    python tools/benchmark.py --coarse                    # stage 1: ITC / ITM (cached vs full)

Sections (each timed in turns with what it is compared to, ``measure_interleaved``):

* ``single``: one prompt, 12 tokens padded to 256 (official) vs exact 12 and 40 tokens, and an
  fp32 matmul timed in the same turns: its speed gives the *matmul bound* of each forward
  (multiply-adds / matmul speed) and the share of it reached;
* ``grouped``: Flickr30k-style, the 5 captions of an image one forward each (official) vs one
  input through the cached multi-prompt path (``TEST.FIBER.GROUP_BY_IMAGE``);
* ``multi_prompt``: LVIS-style chunks of 40 names, one forward per prompt vs cached;
* ``buckets``: images of one padded size one by one vs batched (``TEST.FIBER.SIZE_BUCKET_BATCH``);
* ``options``: AMP (bf16 on CPU, fp16 on GPU), channels-last and, with ``--compile``,
  ``torch.compile`` of the backbone; detections and training losses under AMP vs fp32;
* ``train``: training steps (2 images) with each deformable-conv implementation and with the
  ``USE_CHECKPOINT`` options, each in a fresh process (peak RSS), processes in turns;
* ``profile``: torch profiler per-op tables (into the JSON).

Weights are random (timing does not depend on them); ``MODEL.ATSS.INFERENCE_TH`` is 0 so that
post-processing works at its maximum load. The last form measures nothing: it regenerates the
README's performance section (between ``<!-- PERF:START -->`` and ``<!-- PERF:END -->``).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from fiber_det.engine.benchmark import coarse_training_step_row, format_coarse_train_rows
from fiber_det.export.benchmark import bench_onnx, format_onnx_rows, parse_size
from fiber_det.utils.allocator import keep_freed_memory
from fiber_det.utils.benchmark import machine_description
from fiber_det.utils.benchmark_coarse import COARSE_CONFIGS, bench_coarse, format_coarse_report
from fiber_det.utils.benchmark_report import format_report, readme_section, write_readme_section
from fiber_det.utils.benchmark_sections import (
    bench_buckets,
    bench_grouped,
    bench_multi_prompt,
    bench_options,
    bench_profiles,
    bench_single,
    benchmark_model,
    combine_train_runs,
    train_specs,
    train_worker,
)
from fiber_det.utils.flops import component_flops
from fiber_det.utils.io import atomic_write_json, refuse_overwriting_inputs_or_exit
from fiber_det.utils.testing import build_test_tokenizer

logger = logging.getLogger("fiber_det.benchmark")

SECTIONS = ("single", "grouped", "multi_prompt", "buckets", "options", "train", "profile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", default="fiber_b/official_parity_v2.yaml", help="configs/")
    p.add_argument("--size", type=int, default=512, help="square input size (pixels)")
    p.add_argument("--tokens", type=int, nargs="+", default=[12, 40], help="exact lengths")
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 31], help="LVIS-style counts")
    p.add_argument("--names-per-prompt", type=int, default=40, help="official LVIS chunk size")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--repeats-large", type=int, default=1, help="timed runs for >= 8 prompts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--train-rounds", type=int, default=2, help="fresh processes per config")
    p.add_argument(
        "--train-rows",
        nargs="*",
        default=[],
        metavar="TEXT",
        help="only the training rows whose name contains one of these (default: all)",
    )
    p.add_argument("--profile-sizes", nargs="*", default=["512x512", "800x1216"])
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections left out")
    p.add_argument("--compile", action="store_true", help="add a torch.compile row (minutes)")
    p.add_argument("--output", default="output/benchmark/benchmark.json")
    p.add_argument("--quick", action="store_true", help="tiny config, small sizes (smoke test)")
    p.add_argument("--from-json", nargs="+", metavar="JSON", help="measure nothing (--readme)")
    p.add_argument("--readme", metavar="README", help="rewrite this README's performance section")
    p.add_argument("--note", default="", help="a sentence printed above the run's tables")
    p.add_argument(
        "--no-tf32",
        action="store_true",
        help="CUDA: disable TF32 in convolutions and matmuls (needed for exact identity checks)",
    )
    p.add_argument(
        "--onnx",
        nargs="+",
        metavar="HxW",
        help="measure only onnxruntime (full and fixed-vocabulary graphs) vs PyTorch, one image "
        "and one prompt at these sizes (fiber_det/export/benchmark.py)",
    )
    p.add_argument(
        "--onnx-fixed", action="store_true", help="with --onnx: also a fixed-vocabulary graph"
    )
    p.add_argument(
        "--coarse",
        nargs="*",
        metavar="CONFIG",
        help="measure only the coarse model (stage 1) of these configs, default FIBER-B coarse "
        "at 384 and tiny (fiber_det/utils/benchmark_coarse.py); --pairs: captions per ITM call",
    )
    p.add_argument("--pairs", type=int, default=8, help="with --coarse: captions per ITM call")
    p.add_argument(
        "--coarse-train-configs",
        nargs="*",
        default=["tiny/coarse_tiny.yaml"],
        help="with --coarse: coarse training-step rows (fiber_det/engine/benchmark.py)",
    )
    p.add_argument("--train-worker", help=argparse.SUPPRESS)  # JSON spec of one training run
    return p.parse_args(argv)


def run_onnx(args) -> int:
    """``--onnx``: the deployment table (fiber_det.export.benchmark), JSON to --output."""
    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = benchmark_model(args.config_file, torch.device("cpu"))
        sizes = [parse_size(s) for s in args.onnx]
        tokenizer = build_test_tokenizer(tmp)
        rows = bench_onnx(model, cfg, sizes, tokenizer, args.repeats, args.onnx_fixed)
    report = f"Machine: {machine_description(torch.device('cpu'))}\n\n" + format_onnx_rows(rows)
    print(report)
    command = "python tools/benchmark.py " + " ".join(args.argv)
    result = {"command": command, "config": args.config_file, "rows": rows, "report": report}
    atomic_write_json(result, args.output)
    print(f"\nwrote {args.output}")
    return 0 if all(r["identical"] for r in rows) else 1


RESULT_PREFIX = "BENCH_RESULT "


def bench_train(args, device):
    """Each training configuration in fresh processes, ``--train-rounds`` rounds in turns."""
    runs = []
    for _ in range(args.train_rounds):
        for name, config, opts, extra in train_specs(args.quick, args.config_file):
            if args.train_rows and not any(k in name for k in args.train_rows):
                continue
            spec = {
                "config": config,
                "opts": opts,
                "size": args.train_size,
                "device": str(device),
                "repeats": args.repeats,
                **extra,
            }
            cmd = [sys.executable, os.path.abspath(__file__), "--train-worker", json.dumps(spec)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            logger.info("training step: %s", name)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if proc.returncode or not line:
                raise RuntimeError(f"training worker {name!r} failed:\n{proc.stderr[-3000:]}")
            runs.append((name, json.loads(line[-1][len(RESULT_PREFIX) :])))
    return combine_train_runs(runs, size=args.train_size)


def run_coarse(args) -> int:
    """``--coarse``: ITC / ITM rows of the coarse model (fiber_det.utils.benchmark_coarse)."""
    device = torch.device(args.device)
    configs = args.coarse or (["tiny/coarse_tiny.yaml"] if args.quick else list(COARSE_CONFIGS))
    results = [bench_coarse(c, device, pairs=args.pairs, repeats=args.repeats) for c in configs]
    train = [
        coarse_training_step_row(c, device=args.device, repeats=args.repeats, accumulate=2)
        for c in args.coarse_train_configs
    ]
    report = f"Machine: {machine_description(device)}\n\n" + format_coarse_report(results)
    if train:
        report += "\n\n" + format_coarse_train_rows(train)
    print(report)
    command = "python tools/benchmark.py " + " ".join(args.argv)
    result = {"command": command, "coarse": results, "coarse_train": train, "report": report}
    atomic_write_json(result, args.output)
    print(f"\nwrote {args.output}")
    return 0


def _quick(args):
    args.config_file, args.size, args.prompts, args.names_per_prompt = (
        "tiny/fiber_tiny.yaml",
        128,
        [3],
        6,
    )
    args.repeats, args.train_size, args.train_rounds = 1, 128, 1
    args.profile_sizes, args.tokens = ["128x128"], [12, 20]


def run(args, device) -> dict:
    res = {
        "machine": machine_description(device)
        + (f", TF32 {'off' if args.no_tf32 else 'on'}" if device.type == "cuda" else ""),
        "command": "python tools/benchmark.py " + " ".join(args.argv),
        "device": str(device),
        "config": args.config_file,
        "size": args.size,
        "names_per_prompt": args.names_per_prompt,
        "note": args.note,
        "keep_freed_memory": getattr(args, "keep_freed_memory", False),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_test_tokenizer(tmp)
        model, cfg = benchmark_model(args.config_file, device)
        parts = component_flops(model, (args.size, args.size), args.tokens[0])
        res["flops_gmac"] = {"tokens": args.tokens[0], "parts": parts}
        res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        steps = {
            "single": lambda: bench_single(args, device, tokenizer, model, cfg),
            "grouped": lambda: bench_grouped(args, device, tokenizer, cfg),
            "multi_prompt": lambda: bench_multi_prompt(args, device, tokenizer, cfg),
            "buckets": lambda: bench_buckets(args, device, tokenizer, model),
            "options": lambda: bench_options(args, device, tokenizer, model, cfg),
            "profile": lambda: bench_profiles(args, device, tokenizer, model),
            "train": lambda: bench_train(args, device),
        }
        for name, fn in steps.items():
            if name in args.skip:
                continue
            logger.info("benchmark section: %s", name)
            if name == "options":
                res["options"], res["amp_agreement"] = fn()
            elif name == "profile":
                res["profiles"] = fn()
            else:
                res[name] = fn()
    return res


def _all_identical(res) -> bool:
    checks = list(res.get("single", {}).get("identity", {}).values())
    checks += list(res.get("multi_prompt", {}).get("identity", {}).values())
    checks += [res[k]["identity"] for k in ("grouped", "buckets") if res.get(k)]
    return all(c["identical"] for c in checks)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_worker:
        print(RESULT_PREFIX + json.dumps(train_worker(json.loads(args.train_worker))))
        return 0
    # The README is rewritten in place (as meant); the saved results must survive.
    inputs, outputs = (
        (args.from_json, [args.readme]) if args.from_json else ([args.readme], [args.output])
    )
    refuse_overwriting_inputs_or_exit(
        inputs, output_files=outputs, fix="give --output / --readme files of their own"
    )
    if args.from_json:
        if not args.readme:
            raise SystemExit("--from-json only regenerates a README: add --readme README.md")
        results = []
        for name in args.from_json:
            try:
                results.append(json.loads(Path(name).read_text()))
            except (OSError, ValueError) as e:
                raise SystemExit(f"cannot read benchmark results {name}: {e}") from e
            if "machine" not in results[-1] or "config" not in results[-1]:
                raise SystemExit(f"{name} is not a tools/benchmark.py result (no 'machine')")
        write_readme_section(args.readme, readme_section(results))
        print(f"wrote the performance section of {args.readme} from {len(results)} run(s)")
        return 0
    if args.quick:
        _quick(args)
    if args.onnx:
        return run_onnx(args)
    if args.coarse is not None:
        return run_coarse(args)
    # Timings reuse freed memory instead of zero-filling fresh pages (no effect on results); the
    # training rows run in processes of their own, which do the same (except the "before" row).
    args.keep_freed_memory = keep_freed_memory()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    res = run(args, device)
    report = format_report(res)
    print(report)
    res["report_markdown"] = report
    atomic_write_json(res, args.output)
    print(f"\nwrote {args.output}")
    if args.readme:
        write_readme_section(args.readme, readme_section([res]))
        print(f"wrote the performance section of {args.readme}")
    return 0 if _all_identical(res) else 1


if __name__ == "__main__":
    sys.exit(main())
