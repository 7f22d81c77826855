#!/usr/bin/env python
"""Speed, memory and FLOPs of FIBER: naive vs cached multi-prompt inference, training steps.

    python tools/benchmark.py                                   # FIBER-B, 512x512, CPU
    python tools/benchmark.py --prompts 1 8 31 --repeats 3 --output output/benchmark/cpu.json
    python tools/benchmark.py --quick                           # tiny model, seconds
    python tools/benchmark.py --from-json output/benchmark/*.json --readme README.md
    python tools/benchmark.py --onnx 512x512 800x1216            # onnxruntime vs PyTorch only

The last form measures nothing: it regenerates the README's performance section (between
``<!-- PERF:START -->`` and ``<!-- PERF:END -->``) from saved results, one subsection per run.

Prints tables (markdown) and writes the results as JSON. Everything is measured in one run and
compared as ratios (the machine may be shared). Weights are random (timing does not depend on
them); ``MODEL.ATSS.INFERENCE_TH`` is 0 so that post-processing works at its maximum load.
"naive" is the official protocol (one full forward per prompt); "cached" computes the
pre-fusion image part once per image and the pre-fusion text part once per distinct prompt
(warm text cache, as for a fixed vocabulary after the first image). FLOPs: one FLOP = one
multiply-add (fvcore convention), see fiber_det/utils/flops.py.
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import List

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fiber_det.engine.benchmark import coarse_training_step_row, format_coarse_train_rows
from fiber_det.utils.benchmark import machine_description, measure, measure_interleaved
from fiber_det.utils.flops import component_flops, multi_prompt_flop_bound
from fiber_det.utils.io import atomic_open, atomic_write_json, refuse_overwriting_inputs_or_exit
from fiber_det.utils.testing import (
    TEST_VOCABULARY,
    build_test_tokenizer,
    get_config,
    prompt_input,
    unmatched_instances,
)

logger = logging.getLogger("fiber_det.benchmark")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file", default="fiber_b/official_parity_v2.yaml", help="under configs/"
    )
    p.add_argument("--size", type=int, default=512, help="square input size (pixels)")
    p.add_argument("--prompts", type=int, nargs="+", default=[1, 8, 31])
    p.add_argument("--names-per-prompt", type=int, default=40, help="official LVIS chunk size")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--repeats-large", type=int, default=1, help="timed runs for >= 8 prompts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--train-configs",
        nargs="*",
        default=["tiny/fiber_tiny.yaml", "fiber_b/official_parity_v2.yaml"],
    )
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--coarse-train-configs", nargs="*", default=[], help="coarse training rows")
    p.add_argument("--skip-options", action="store_true", help="skip the AMP / channels-last rows")
    p.add_argument("--output", default="output/benchmark/benchmark.json")
    p.add_argument("--quick", action="store_true", help="tiny config, small sizes (smoke test)")
    p.add_argument(
        "--from-json",
        nargs="+",
        metavar="JSON",
        help="measure nothing: load these saved results (use with --readme)",
    )
    p.add_argument(
        "--readme",
        metavar="README",
        help="rewrite the performance section of this README from the results",
    )
    p.add_argument(
        "--no-tf32",
        action="store_true",
        help="CUDA: disable TF32 in convolutions and matmuls (cuDNN uses TF32 convolutions by "
        "default; batched and single-prompt convolutions then round differently, ~3e-4 on "
        "logits, so the identity check needs --no-tf32)",
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
    return p.parse_args(argv)


def run_onnx(args) -> int:
    """``--onnx``: the deployment table (fiber_det.export.benchmark), JSON to --output."""
    from fiber_det.export.benchmark import bench_onnx, format_onnx_rows, parse_size

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = _model(args.config_file, torch.device("cpu"))
        sizes = [parse_size(s) for s in args.onnx]
        tokenizer = build_test_tokenizer(tmp)
        rows = bench_onnx(model, cfg, sizes, tokenizer, args.repeats, args.onnx_fixed)
    report = f"Machine: {machine_description(torch.device('cpu'))}\n\n" + format_onnx_rows(rows)
    print(report)
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:])
    result = {"command": command, "config": args.config_file, "rows": rows, "report": report}
    atomic_write_json(result, args.output)
    print(f"\nwrote {args.output}")
    return 0 if all(r["identical"] for r in rows) else 1


def _model(config_file, device, opts=()):
    cfg = get_config(config_file, ["MODEL.ATSS.INFERENCE_TH", 0.0, *opts])
    cfg.MODEL.DEVICE = str(device)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # open the fusion gates (0 at init) so the prompts do matter
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.5)
    return model, cfg


def lvis_style_prompts(tokenizer, num_prompts, names_per_prompt, max_len, pad_to_max=True):
    """``num_prompts`` prompts of ``names_per_prompt`` 1-2 word names each."""
    words = TEST_VOCABULARY
    prompts = []
    for p in range(num_prompts):
        names = []
        for i in range(names_per_prompt):
            k = p * names_per_prompt + i
            n = 1 + k % 2  # LVIS names are 1-3 words; 40 of them fit the 256-token budget
            names.append(" ".join(words[(k * 7 + j * 13 + p) % len(words)] for j in range(n)))
        prompts.append(prompt_input(tokenizer, names, max_len, pad_to_max))
    return prompts


def _infer(model, image, prompts):
    with torch.no_grad():
        return model([{"image": image, "prompts": prompts}])[0]["instances"]


def bench_inference(args, device, tokenizer):
    rows, identity = [], {}
    image = torch.rand(3, args.size, args.size, device=device) * 255
    naive, cfg = _model(args.config_file, device, ["MODEL.FIBER.CACHED_MULTI_PROMPT", False])
    cached, _ = _model(args.config_file, device, ["MODEL.FIBER.CACHED_MULTI_PROMPT", True])
    before, _ = _model(
        args.config_file,
        device,
        ["MODEL.FIBER.CACHED_MULTI_PROMPT", False, "MODEL.DYHEAD.DCN_IMPL", "torchvision"],
    )
    max_len = cfg.MODEL.LANGUAGE.MAX_QUERY_LEN
    flops = component_flops(naive, (args.size, args.size), max_len)
    all_prompts = lvis_style_prompts(tokenizer, max(args.prompts), args.names_per_prompt, max_len)
    one = all_prompts[:1]
    single = {"before (torchvision DCN)": before, "naive": naive, "cached": cached}
    timed = measure_interleaved(
        {name: (lambda m=model: _infer(m, image, one)) for name, model in single.items()},
        device,
        args.repeats,
    )
    rows += [{"path": name, "prompts": 1, **r} for name, r in timed.items()]
    for p in args.prompts:
        prompts = all_prompts[:p]
        reps = args.repeats if p < 8 else args.repeats_large
        if p == 1:
            r_naive = next(r for r in rows if r["path"] == "naive")
            r_cached = next(r for r in rows if r["path"] == "cached")
        else:
            # warm-up: one prompt for the naive path (its prompts are independent forwards); the
            # whole set for the cached path, which fills the text cache as a first image would
            _infer(naive, image, one)
            _infer(cached, image, prompts)
            timed = measure_interleaved(
                {
                    "naive": lambda ps=prompts: _infer(naive, image, ps),
                    "cached": lambda ps=prompts: _infer(cached, image, ps),
                },
                device,
                reps,
                warmup=0,
            )
            r_naive = {"path": "naive", "prompts": p, **timed["naive"]}
            r_cached = {"path": "cached", "prompts": p, **timed["cached"]}
            rows += [r_naive, r_cached]
        bound = multi_prompt_flop_bound(flops, p)
        speedup = r_naive["median_s"] / r_cached["median_s"]
        r_cached.update(speedup=speedup, flop_bound=bound, of_bound=speedup / bound)
        a, b = _infer(naive, image, prompts), _infer(cached, image, prompts)
        missing = unmatched_instances(a, b, box_tol=1e-2, score_tol=1e-4)
        identity[p] = {"detections": len(a), "identical": not missing}
    params = {
        "total": sum(x.numel() for x in naive.parameters()),
        "swin": sum(x.numel() for x in naive.backbone.body.parameters()),
        "roberta": sum(x.numel() for x in naive.backbone.language.parameters()),
        "fpn": sum(x.numel() for x in naive.backbone.fpn.parameters()),
        "head": sum(x.numel() for x in naive.head.parameters()),
    }
    return {"rows": rows, "identity": identity, "flops_gmac": flops, "params": params}


def bench_options(args, device, tokenizer):
    """Single-prompt latency with AMP and channels-last, as ratios to fp32 / contiguous."""
    model, cfg = _model(args.config_file, device)
    image = torch.rand(3, args.size, args.size, device=device) * 255
    one = lvis_style_prompts(tokenizer, 1, args.names_per_prompt, cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    model_cl, _ = _model(args.config_file, device)
    model_cl = model_cl.to(memory_format=torch.channels_last)

    def amp_infer():
        with torch.autocast(device.type, dtype=dtype):
            return _infer(model, image, one)

    timed = measure_interleaved(
        {
            "base": lambda: _infer(model, image, one),
            "amp": amp_infer,
            "cl": lambda: _infer(model_cl, image, one),
        },
        device,
        args.repeats,
    )
    base, amp, cl = timed["base"], timed["amp"], timed["cl"]
    return [
        {"option": "fp32 (baseline)", **base, "ratio": 1.0},
        {
            "option": f"AMP {str(dtype).split('.')[-1]}",
            **amp,
            "ratio": amp["median_s"] / base["median_s"],
        },
        {"option": "channels-last", **cl, "ratio": cl["median_s"] / base["median_s"]},
    ]


def bench_train(config_file, size, device, tokenizer, repeats):
    cfg = get_config(config_file)
    cfg.MODEL.DEVICE = str(device)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    prompt = lvis_style_prompts(tokenizer, 1, 8, cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)[0]
    from detectron2.structures import Boxes, Instances

    batch = []
    for _ in range(2):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(
            torch.tensor(
                [[10.0, 20.0, size / 2, size / 2], [size / 3, size / 4, size - 5, size - 9]]
            )
        )
        inst.positive_map = prompt["positive_map"][:2]
        batch.append({"image": torch.rand(3, size, size) * 255, "instances": inst, **prompt})
    # timing of one optimisation step (forward, backward, AdamW) on two images

    def step():
        with EventStorage():
            loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    r = measure(step, torch.device(device), repeats)
    return {
        "config": config_file,
        "size": size,
        "batch": 2,
        **r,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def _fmt(rows, cols):
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(f(r) for _, f in cols) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def format_report(res) -> str:
    inf = res["inference"]
    f = inf["flops_gmac"]
    out = [
        f"Machine: {res['machine']}",
        f"Config: `{res['config']}`, input {res['size']}x{res['size']}, "
        f"{res['names_per_prompt']} names per prompt",
        "",
    ]
    out.append(
        "FLOPs of one forward (GMAC, 1 FLOP = 1 multiply-add; params "
        f"{inf['params']['total'] / 1e6:.1f} M):"
    )
    out.append(_fmt([f], [(k, lambda r, k=k: f"{r[k]:.2f}") for k in f]))
    out.append("")
    out.append(
        _fmt(
            inf["rows"],
            [
                ("path", lambda r: r["path"]),
                ("prompts", lambda r: str(r["prompts"])),
                ("latency s/img", lambda r: f"{r['median_s']:.2f}"),
                ("img/s", lambda r: f"{1 / r['median_s']:.3f}"),
                ("peak MB", lambda r: f"{r['peak_mb']:.0f}"),
                ("speedup", lambda r: f"{r['speedup']:.2f}x" if "speedup" in r else ""),
                ("FLOP bound", lambda r: f"{r['flop_bound']:.2f}x" if "flop_bound" in r else ""),
                ("of bound", lambda r: f"{100 * r['of_bound']:.0f}%" if "of_bound" in r else ""),
            ],
        )
    )
    rows = {(r["path"], r["prompts"]): r["median_s"] for r in inf["rows"]}
    ratio = rows[("naive", 1)] / rows[("before (torchvision DCN)", 1)]
    ratio_c = rows[("cached", 1)] / rows[("before (torchvision DCN)", 1)]
    out.append(
        f"\nSingle prompt, latency relative to before (torchvision DCN, naive): "
        f"naive {ratio:.2f}, cached {ratio_c:.2f} (< 1 is faster)"
    )
    out.append(
        "Identical detections naive vs cached: "
        + ", ".join(
            f"{p} prompts: {'yes' if v['identical'] else 'NO'} ({v['detections']} boxes)"
            for p, v in inf["identity"].items()
        )
    )
    if res.get("options"):
        out.append("")
        out.append(
            _fmt(
                res["options"],
                [
                    ("single prompt", lambda r: r["option"]),
                    ("latency s", lambda r: f"{r['median_s']:.2f}"),
                    ("ratio", lambda r: f"{r['ratio']:.2f}"),
                ],
            )
        )
    if res.get("train"):
        out.append("")
        out.append(
            _fmt(
                res["train"],
                [
                    ("training step", lambda r: r["config"]),
                    ("input", lambda r: f"{r['size']}^2 x {r['batch']}"),
                    ("params M", lambda r: f"{r['params_m']:.1f}"),
                    ("s/iter", lambda r: f"{r['median_s']:.2f}"),
                    ("peak MB", lambda r: f"{r['peak_mb']:.0f}"),
                ],
            )
        )
    return "\n".join(out)


PERF_START, PERF_END = "<!-- PERF:START -->", "<!-- PERF:END -->"


def readme_section(results: List[dict]) -> str:
    """The README's performance section for saved benchmark results (one subsection per run)."""
    out = [
        "Generated by `python tools/benchmark.py --from-json <results> --readme README.md` "
        "from the runs below; do not edit by hand. Random weights (speed does not depend on "
        "them), one image, prompts of LVIS-style names padded to the token budget as in the "
        "official LVIS protocol. *naive* is the official protocol, one full forward per prompt; "
        "*cached* runs the pre-fusion image part (the Swin blocks before the first fused block) "
        "once per image, the pre-fusion text part once per distinct prompt, and batches the "
        "prompts through the fused tail and the head. *FLOP bound*: naive FLOPs over cached "
        "FLOPs for that many prompts (1 FLOP = 1 multiply-add); *of bound*: measured speed-up "
        "over that bound. *before*: the naive path with torchvision's `deform_conv2d` in the "
        "head, as before the cached path and the grid_sample DCN existed. Each ratio compares "
        "runs from the same process, timed in turns. Peak MB on CPU is the largest growth of "
        "the resident set during one timed call (the allocator reuses memory, so small values "
        "mean that the call fitted in memory the process already held).",
    ]
    for res in results:
        on_gpu = res.get("device", "").startswith("cuda") or "NVIDIA" in res["machine"]
        out += ["", f"### {'GPU' if on_gpu else 'CPU'}: {res['config']}, {res['size']}px", ""]
        if res.get("command"):
            out += [f"`{res['command']}`", ""]
        identity = res.get("inference", {}).get("identity", {})
        if "TF32 on" in res["machine"] and not all(v["identical"] for v in identity.values()):
            out += [
                "With TF32 on (cuDNN's default), batched and one-prompt convolutions round "
                "differently (~3e-4 on logits), so a few detections can differ; with "
                "`--no-tf32` the two paths give identical detections.",
                "",
            ]
        out.append(format_report(res))
    return "\n".join(out)


def write_readme_section(readme: str, section: str) -> None:
    """Replace the text between the PERF markers of ``readme`` (atomically)."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, end = text.find(PERF_START), text.find(PERF_END)
    if start < 0 or end < start:
        raise SystemExit(
            f"{readme} has no '{PERF_START}' ... '{PERF_END}' block: add the two marker lines "
            "where the performance section should go, then run again"
        )
    new = text[: start + len(PERF_START)] + "\n" + section + "\n" + text[end:]
    with atomic_open(path, "w") as f:
        f.write(new)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
            if "inference" not in results[-1] or "machine" not in results[-1]:
                raise SystemExit(f"{name} is not a tools/benchmark.py result (no 'inference')")
        write_readme_section(args.readme, readme_section(results))
        print(f"wrote the performance section of {args.readme} from {len(results)} run(s)")
        return 0
    if args.quick:
        args.config_file, args.size, args.prompts, args.names_per_prompt = (
            "tiny/fiber_tiny.yaml",
            128,
            [1, 3],
            6,
        )
        args.repeats, args.train_configs, args.train_size = 1, ["tiny/fiber_tiny.yaml"], 128
    if args.onnx:
        return run_onnx(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_test_tokenizer(tmp)
        res = {
            "machine": machine_description(device)
            + (
                f", TF32 {'off' if args.no_tf32 else 'on (cuDNN default)'}"
                if device.type == "cuda"
                else ""
            ),
            "command": "python tools/benchmark.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "device": str(device),
            "config": args.config_file,
            "size": args.size,
            "names_per_prompt": args.names_per_prompt,
        }
        res["inference"] = bench_inference(args, device, tokenizer)
        if not args.skip_options:
            res["options"] = bench_options(args, device, tokenizer)
        res["train"] = [
            bench_train(c, args.train_size, args.device, tokenizer, args.repeats)
            for c in args.train_configs
        ]
    res["coarse_train"] = [  # fiber_det/engine/benchmark.py
        coarse_training_step_row(c, device=args.device, repeats=args.repeats, accumulate=2)
        for c in args.coarse_train_configs
    ]
    report = format_report(res)
    if res["coarse_train"]:
        report += "\n\n" + format_coarse_train_rows(res["coarse_train"])
    print(report)
    res["report_markdown"] = report
    atomic_write_json(res, args.output)
    print(f"\nwrote {args.output}")
    if args.readme:
        write_readme_section(args.readme, readme_section([res]))
        print(f"wrote the performance section of {args.readme}")
    return 0 if all(v["identical"] for v in res["inference"]["identity"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
