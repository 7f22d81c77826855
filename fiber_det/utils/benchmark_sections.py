"""The sections of ``tools/benchmark.py``: model inputs, the timed comparisons, a training step.

Each ``bench_*`` function times a path against its baseline in turns (``measure_interleaved``)
and checks that the detections are the same; ``train_worker`` runs one training configuration
in the process that calls it (the tool starts a fresh process per configuration, so that peak
memory is the configuration's own). See the tool's docstring for what each section measures.
"""

import statistics
import tempfile

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ..evaluation.base import ungroup
from ..modeling.head.dcn_sampler import compiled_sampler, compiled_sampler_status, grid_sample_only
from ..text import build_detection_prompt, spans_to_positive_map, tokenize_prompts
from .allocator import keep_freed_memory
from .benchmark import matmul_probe, max_rss_mb, measure_interleaved, op_table, rss_mb
from .flops import component_flops, multi_prompt_flop_bound
from .testing import (
    TEST_VOCABULARY,
    build_test_tokenizer,
    get_config,
    prompt_input,
    unmatched_instances,
)

__all__ = [
    "amp_agreement",
    "bench_buckets",
    "bench_grouped",
    "bench_multi_prompt",
    "bench_options",
    "bench_profiles",
    "bench_single",
    "benchmark_model",
    "caption_inputs",
    "combine_train_runs",
    "lvis_style_prompts",
    "prompt_of_length",
    "train_specs",
    "train_worker",
]

# Detections of two exact paths match at the tolerance of the parity fixtures.
IDENTITY_TOL = {"box_tol": 1e-2, "score_tol": 1e-4}
# Flickr30k-style captions: (caption, phrase spans); all words are in the test tokenizer.
CAPTIONS = [
    ("a man wearing a red shirt standing left of a dog", [[[0, 5]], [[14, 25]], [[43, 48]]]),
    ("a woman holding a cup near a bench", [[[0, 7]], [[16, 21]], [[27, 34]]]),
    ("the child sitting on a blue bicycle", [[[0, 9]], [[21, 35]]]),
    ("a brown horse next to a white truck", [[[0, 13]], [[22, 35]]]),
    ("people standing near a red car", [[[0, 6]], [[21, 30]]]),
]


def benchmark_model(config_file, device, opts=()):
    """The benchmark's model: ``config_file`` with score threshold 0 and open fusion gates."""
    cfg = get_config(config_file, ["MODEL.ATSS.INFERENCE_TH", 0.0, *opts])
    cfg.MODEL.DEVICE = str(device)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # open the fusion gates (0 at init) so the prompts do matter
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.5)
    return model, cfg


def prompt_of_length(tokenizer, tokens: int, pad_to: int = 0):
    """A detection prompt of exactly ``tokens`` tokens (special tokens included), padded to
    ``pad_to`` if given: one- and two-word names of the test vocabulary, as many as fit."""
    words = list(TEST_VOCABULARY)
    for two_word in range(4):
        pairs = [f"{words[2 * i]} {words[2 * i + 1]}" for i in range(two_word)]
        for one_word in range(tokens):
            names = pairs + words[2 * two_word : 2 * two_word + one_word]
            if not names:
                continue
            n = len(tokenizer(build_detection_prompt(names).caption)["input_ids"])
            if n == tokens:
                return prompt_input(tokenizer, names, max(tokens, pad_to), pad_to_max=bool(pad_to))
            if n > tokens:
                break
    raise RuntimeError(f"no prompt of exactly {tokens} tokens from the test vocabulary")


def lvis_style_prompts(tokenizer, num_prompts, names_per_prompt, max_len):
    """``num_prompts`` prompts of ``names_per_prompt`` 1-2 word names each (exact length)."""
    words = TEST_VOCABULARY
    prompts = []
    for p in range(num_prompts):
        names = []
        for i in range(names_per_prompt):
            k = p * names_per_prompt + i
            n = 1 + k % 2  # LVIS names are 1-3 words; 40 of them fit the 256-token budget
            names.append(" ".join(words[(k * 7 + j * 13 + p) % len(words)] for j in range(n)))
        prompts.append(prompt_input(tokenizer, names, max_len, pad_to_max=False))
    return prompts


def caption_inputs(tokenizer, max_len):
    """The Flickr-style captions as prompts with one positive-map row per phrase."""
    out = []
    for caption, spans in CAPTIONS:
        tok = tokenize_prompts(tokenizer, [caption], max_length=max_len, pad_to_max=False)
        pmap = spans_to_positive_map(tok.encodings, spans, tok.input_ids.shape[1])
        out.append(
            {
                "input_ids": tok.input_ids[0],
                "attention_mask": tok.attention_mask[0],
                "positive_map": pmap,
            }
        )
    return out


def _infer(model, inputs):
    with torch.no_grad():
        return [o["instances"] for o in model(inputs)]


def _identity(a, b):
    return {"detections": len(a), "identical": not unmatched_instances(a, b, **IDENTITY_TOL)}


def _flops(model, size, tokens):
    return component_flops(model, (size, size), tokens)


def bench_single(args, device, tokenizer, model, cfg):
    """Latency of one prompt: 12 tokens padded to 256 vs exact lengths, and the matmul bound."""
    image = torch.rand(3, args.size, args.size, device=device) * 255
    budget = cfg.MODEL.LANGUAGE.MAX_QUERY_LEN
    first = args.tokens[0]
    paths = {
        f"{first} tokens padded to {budget} (official)": prompt_of_length(tokenizer, first, budget)
    }
    paths.update({f"{n} tokens (exact)": prompt_of_length(tokenizer, n) for n in args.tokens})
    probe, probe_macs = matmul_probe(device)
    fns = {name: (lambda x=x: _infer(model, [{"image": image, **x}])) for name, x in paths.items()}
    exact = paths[f"{first} tokens (exact)"]
    baseline = None  # the same forward with the DCN on grid_sample, where the sampler serves it
    if device.type == "cpu" and compiled_sampler() is not None:
        baseline = f"{first} tokens (exact), DCN sampling by grid_sample"
        paths[baseline] = exact
        fns[baseline] = lambda: _on_grid_sample(model, [{"image": image, **exact}])
    timed = measure_interleaved({**fns, "matmul": probe}, device, args.repeats)
    gmacs = probe_macs / timed["matmul"]["median_s"] / 1e9
    rows = []
    padded_s = None
    gmac_of = {}  # tokens -> GMAC (the baseline row has the exact prompt's length)
    for name, x in paths.items():
        tokens = int(x["input_ids"].numel())
        if tokens not in gmac_of:
            gmac_of[tokens] = _flops(model, args.size, tokens)["total"]
        gmac = gmac_of[tokens]
        row = {"path": name, "tokens": tokens, "gmac": gmac, **timed[name]}
        row.update(bound_s=gmac / gmacs, share=gmac / gmacs / row["median_s"])
        padded_s = padded_s or row["median_s"]
        row["vs_padded"] = row["median_s"] / padded_s
        rows.append(row)
    padded = list(paths.values())[0]  # the same prompt as ``exact``, padded
    ours = _infer(model, [{"image": image, **exact}])[0]
    identity = {first: _identity(_infer(model, [{"image": image, **padded}])[0], ours)}
    matmul = {"size": round(probe_macs ** (1 / 3)), "gmacs": gmacs, **timed["matmul"]}
    out = {"rows": rows, "matmul": matmul, "identity": identity}
    if device.type == "cpu":
        out["dcn_sampler"] = {"status": compiled_sampler_status()}
    if baseline is not None:
        ref = _on_grid_sample(model, [{"image": image, **exact}])[0]
        out["dcn_sampler"]["bitwise_equal"] = _bitwise_equal(ours, ref)
    return out


def _on_grid_sample(model, inputs):
    with grid_sample_only():
        return _infer(model, inputs)


def _bitwise_equal(a, b) -> bool:
    """Whether two detection sets are the same to the bit (boxes, scores, labels)."""
    fields = ("pred_boxes", "scores", "pred_classes")
    va = [getattr(a, f) for f in fields]
    vb = [getattr(b, f) for f in fields]
    va[0], vb[0] = va[0].tensor, vb[0].tensor
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(va, vb))


def bench_grouped(args, device, tokenizer, cfg):
    """Flickr-style captions of one image: one forward each vs one grouped input."""
    naive, _ = benchmark_model(args.config_file, device, ["MODEL.FIBER.CACHED_MULTI_PROMPT", False])
    grouped, _ = benchmark_model(args.config_file, device, ["MODEL.FIBER.TEXT_CACHE_SIZE", 0])
    image = torch.rand(3, args.size, args.size, device=device) * 255
    captions = caption_inputs(tokenizer, cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)
    members = [{"image_id": i, **c} for i, c in enumerate(captions)]
    group = {"image": image, "prompts": captions, "group": members}
    timed = measure_interleaved(
        {
            "naive": lambda: [_infer(naive, [{"image": image, **c}]) for c in captions],
            "grouped": lambda: _infer(grouped, [group]),
        },
        device,
        args.repeats,
    )
    out = _infer(grouped, [group])
    parts = [o["instances"] for _, o in ungroup([group], [{"instances": out[0]}])]
    singles = [_infer(naive, [{"image": image, **c}])[0] for c in captions]
    ok = all(not unmatched_instances(a, b, **IDENTITY_TOL) for a, b in zip(singles, parts))
    tokens = max(int(c["input_ids"].numel()) for c in captions)
    flops = _flops(naive, args.size, tokens)
    return {
        "captions": len(captions),
        "tokens": tokens,
        "naive": timed["naive"],
        "grouped": timed["grouped"],
        "speedup": timed["naive"]["median_s"] / timed["grouped"]["median_s"],
        "flop_bound": multi_prompt_flop_bound(flops, len(captions), text_cached=False),
        "identity": {"detections": sum(len(p) for p in parts), "identical": ok},
    }


def bench_multi_prompt(args, device, tokenizer, cfg):
    """LVIS-style chunks: one forward per prompt (official) vs the cached multi-prompt path."""
    naive, _ = benchmark_model(args.config_file, device, ["MODEL.FIBER.CACHED_MULTI_PROMPT", False])
    cached, _ = benchmark_model(args.config_file, device)
    image = torch.rand(3, args.size, args.size, device=device) * 255
    every = lvis_style_prompts(
        tokenizer, max(args.prompts), args.names_per_prompt, cfg.MODEL.LANGUAGE.MAX_QUERY_LEN
    )
    tokens = max(int(p["input_ids"].numel()) for p in every)
    flops = _flops(naive, args.size, tokens)
    rows, identity = [], {}
    for count in args.prompts:
        x = {"image": image, "prompts": every[:count]}
        _infer(naive, [{"image": image, "prompts": every[:1]}])  # warm-up, cache filled:
        _infer(cached, [x])  # a fixed vocabulary is cached after the first image
        timed = measure_interleaved(
            {"naive": lambda x=x: _infer(naive, [x]), "cached": lambda x=x: _infer(cached, [x])},
            device,
            args.repeats if count < 8 else args.repeats_large,
            warmup=0,
        )
        speedup = timed["naive"]["median_s"] / timed["cached"]["median_s"]
        bound = multi_prompt_flop_bound(flops, count)
        rows.append({"path": "naive", "prompts": count, **timed["naive"]})
        rows.append(
            {
                "path": "cached",
                "prompts": count,
                **timed["cached"],
                "speedup": speedup,
                "flop_bound": bound,
                "of_bound": speedup / bound,
            }
        )
        identity[count] = _identity(_infer(naive, [x])[0], _infer(cached, [x])[0])
    return {"rows": rows, "identity": identity, "tokens": tokens}


def bench_buckets(args, device, tokenizer, model):
    """Two images of one padded size: one forward each vs one batch."""
    d = model.backbone.size_divisibility
    sizes = [(args.size, args.size), (args.size - d // 2 + 4, args.size - d // 2)]
    prompt = prompt_of_length(tokenizer, args.tokens[0])
    inputs = [{"image": torch.rand(3, h, w, device=device) * 255, **prompt} for h, w in sizes]
    timed = measure_interleaved(
        {
            "single": lambda: [_infer(model, [x]) for x in inputs],
            "batched": lambda: _infer(model, inputs),
        },
        device,
        args.repeats,
    )
    one = [_infer(model, [x])[0] for x in inputs]
    both = _infer(model, inputs)
    ok = all(not unmatched_instances(a, b, **IDENTITY_TOL) for a, b in zip(one, both))
    per_image = {k: {**v, "median_s": v["median_s"] / len(inputs)} for k, v in timed.items()}
    return {
        "images": len(inputs),
        "sizes": ", ".join(f"{h}x{w}" for h, w in sizes),
        **per_image,
        "ratio": timed["batched"]["median_s"] / timed["single"]["median_s"],
        "identity": {"detections": sum(len(x) for x in one), "identical": ok},
    }


def bench_options(args, device, tokenizer, model, cfg):
    """Single-prompt latency with AMP, channels-last (and torch.compile), as ratios to fp32."""
    image = torch.rand(3, args.size, args.size, device=device) * 255
    x = {"image": image, **prompt_of_length(tokenizer, args.tokens[0])}
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    model_cl, _ = benchmark_model(args.config_file, device)
    model_cl = model_cl.to(memory_format=torch.channels_last)

    def amp_infer():
        with torch.autocast(device.type, dtype=dtype):
            return _infer(model, [x])

    fns = {
        "base": lambda: _infer(model, [x]),
        "amp": amp_infer,
        "cl": lambda: _infer(model_cl, [x]),
    }
    names = {"base": "fp32 (baseline)", "amp": f"AMP {str(dtype)[6:]}", "cl": "channels-last"}
    if args.compile:
        compiled, _ = benchmark_model(
            args.config_file, device, ["MODEL.FIBER.COMPILE_BACKBONE", True]
        )
        _infer(compiled, [x])  # compiles
        fns["compiled"] = lambda: _infer(compiled, [x])
        names["compiled"] = "torch.compile (inductor) backbone"
    timed = measure_interleaved(fns, device, args.repeats)
    base = timed["base"]["median_s"]
    rows = [{"option": names[k], **v, "ratio": v["median_s"] / base} for k, v in timed.items()]
    return rows, amp_agreement(model, cfg, x, dtype, device)


def amp_agreement(model, cfg, x, dtype, device):
    """Detections of one prompt and training losses of one batch under AMP vs fp32."""
    ref = _infer(model, [x])[0]
    with torch.autocast(device.type, dtype=dtype):
        amp = _infer(model, [x])[0]
    levels = []
    for score_tol, box_tol in ((1e-2, 1.0), (1e-3, 0.1)):
        missing = unmatched_instances(ref, amp, box_tol=box_tol, score_tol=score_tol)
        levels.append(
            {
                "score_tol": score_tol,
                "box_tol": box_tol,
                "unmatched": len(missing),
                "detections": len(ref),
            }
        )
    batch = _train_batch(x, x["image"].shape[-1], device)
    model.train()
    try:
        with EventStorage(), torch.no_grad():
            fp32 = model(batch)
            with torch.autocast(device.type, dtype=dtype):
                low = model(batch)
    finally:
        model.eval()
    rel = {k: abs(float(low[k]) - float(v)) / max(abs(float(v)), 1e-12) for k, v in fp32.items()}
    return {"dtype": str(dtype)[6:], "inference": levels, "training_rel_diff": rel}


def _train_batch(prompt, size, device):
    """Two images with two boxes each, labelled with the first two rows of the prompt."""
    batch = []
    for seed in range(2):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(
            torch.tensor(
                [[10.0, 20.0, size / 2, size / 2], [size / 3, size / 4, size - 5, size - 9]]
            )
        )
        inst.positive_map = prompt["positive_map"][:2]
        gen = torch.Generator().manual_seed(seed)
        image = (torch.rand(3, size, size, generator=gen) * 255).to(device)
        text = {key: prompt[key] for key in ("input_ids", "attention_mask", "positive_map")}
        batch.append({**text, "image": image, "instances": inst})
    return batch


def train_specs(quick: bool, config_file: str):
    """(name, config file, extra options, worker spec additions) of each training configuration.

    The first row is the code before the memory work of issue #14 (every activation and the DCN
    columns kept, the official 256-token padding, the last step's gradients dropped after the
    forward pass, glibc's malloc defaults): the baseline of the others in the same run. The other
    rows run as ``tools/train_net.py`` does today."""
    tiny = "tiny/fiber_tiny.yaml"
    if quick:
        return [
            ("tiny, grid_sample DCN", tiny, [], {}),
            ("tiny, torchvision DCN", tiny, ["MODEL.DYHEAD.DCN_IMPL", "torchvision"], {}),
        ]
    gs = ["MODEL.DYHEAD.DCN_IMPL", "grid_sample"]
    keep_swin = ["MODEL.SWIN.RECOMPUTE_ACTIVATIONS", False]
    keep_columns = ["MODEL.DYHEAD.DCN_RECOMPUTE", False]
    checkpoint = []
    for key in ("SWIN", "LANGUAGE", "DYHEAD"):
        checkpoint += [f"MODEL.{key}.USE_CHECKPOINT", True]
    return [
        (
            "before: all kept, 256-token prompt, glibc malloc defaults",
            config_file,
            gs + keep_swin + keep_columns,
            {"pad_to": 256, "zero_grad_first": False, "keep_freed_memory": False},
        ),
        ("default: DCN columns, Swin norms / attention / GELU recomputed", config_file, gs, {}),
        ("default, Swin activations kept", config_file, gs + keep_swin, {}),
        ("default, DCN columns kept", config_file, gs + keep_columns, {}),
        ("torchvision DCN", config_file, ["MODEL.DYHEAD.DCN_IMPL", "torchvision"], {}),
        ("default + USE_CHECKPOINT (Swin, RoBERTa, DyHead)", config_file, gs + checkpoint, {}),
        (tiny, tiny, [], {}),
    ]


def combine_train_runs(runs, size: int):
    """Rows of the training table from (name, worker result) pairs of several rounds: the median
    step over all rounds, the largest peak memory."""
    rows = {}
    for name, r in runs:
        row = rows.setdefault(
            name, {"name": name, "size": size, "batch": 2, "times_s": [], "peak_rss_mb": 0.0}
        )
        row["times_s"] += r["times_s"]
        row["peak_rss_mb"] = max(row["peak_rss_mb"], r["peak_rss_mb"])
        row["model_rss_mb"] = max(row.get("model_rss_mb", 0.0), r["model_rss_mb"])
        row["keep_freed_memory"] = r.get("keep_freed_memory", False)
        if "peak_device_mb" in r:
            row["peak_device_mb"] = max(row.get("peak_device_mb", 0.0), r["peak_device_mb"])
    for row in rows.values():
        row["median_s"] = statistics.median(row["times_s"])
    return list(rows.values())


def train_worker(spec: dict) -> dict:
    """One training configuration in this (fresh) process: step times and peak RSS.

    The steps are timed after two untimed ones (the first allocates the optimizer's state, the
    second still grows the heap), so that the medians are steady-state steps. Like
    ``tools/train_net.py``, the worker keeps freed memory mapped
    (:func:`~fiber_det.utils.allocator.keep_freed_memory`) unless the spec says
    ``"keep_freed_memory": False`` (glibc's defaults, as training ran before issue #14)."""
    kept = keep_freed_memory() if spec.get("keep_freed_memory", True) else False
    device = torch.device(spec["device"])
    cfg = get_config(spec["config"], spec["opts"])
    cfg.MODEL.DEVICE = spec["device"]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        prompt = prompt_of_length(build_test_tokenizer(tmp), 12, pad_to=spec.get("pad_to", 0))
    batch = _train_batch(prompt, spec["size"], device)
    model_rss = rss_mb()

    # The trainer's order (fiber_det.engine.Trainer): the last step's gradients dropped before
    # the forward pass; detectron2's default, after it, with "zero_grad_first": False.
    first = spec.get("zero_grad_first", True)

    def step():
        if first:
            opt.zero_grad()
        with EventStorage():
            loss = sum(model(batch).values())
        if not first:
            opt.zero_grad()
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = measure_interleaved({"step": step}, device, spec["repeats"], warmup=2)["step"]
    out = {**timed, "model_rss_mb": model_rss, "peak_rss_mb": max_rss_mb()}
    out["keep_freed_memory"] = kept
    if device.type == "cuda":
        out["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def bench_profiles(args, device, tokenizer, model):
    """Per-op self-time tables of one forward at each size (exact-length prompt)."""
    prompt = prompt_of_length(tokenizer, args.tokens[0])
    out = []
    for size in args.profile_sizes:
        h, w = (int(v) for v in size.split("x"))
        x = {"image": torch.rand(3, h, w, device=device) * 255, **prompt}
        _infer(model, [x])  # warm-up
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            _infer(model, [x])
        out.append({"size": size, "tokens": args.tokens[0], "ops": op_table(prof)})
    return out
