"""Tables of ``tools/benchmark.py`` results (markdown) and the README's performance section.

Every table is rendered from the saved JSON of a run, so ``tools/benchmark.py --from-json`` can
regenerate the README without measuring again. Sections missing from a result (a run with
``--skip-*`` options) are left out.
"""

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from .io import atomic_open

__all__ = ["PERF_END", "PERF_START", "format_report", "readme_section", "write_readme_section"]

PERF_START, PERF_END = "<!-- PERF:START -->", "<!-- PERF:END -->"

Column = Tuple[str, Callable[[Dict], str]]


def table(rows: Sequence[Dict], cols: Sequence[Column]) -> str:
    """A markdown table: one row per dict, one column per (title, formatter)."""
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(f(r) for _, f in cols) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def _opt(key: str, fmt: str) -> Callable[[Dict], str]:
    return lambda r: format(r[key], fmt) if r.get(key) is not None else ""


def _yes(v: Dict) -> str:
    return f"{'yes' if v['identical'] else 'NO'} ({v['detections']} boxes)"


def _single(res: Dict) -> List[str]:
    s = res["single"]
    out = [
        f"Matmul bound: a {s['matmul']['size']}^3 fp32 matmul timed in turns with the model runs "
        f"at **{s['matmul']['gmacs']:.1f} GMAC/s**; a forward cannot be faster than its "
        "multiply-adds at that speed (*bound*); *share* = bound / latency.",
        "",
        table(
            s["rows"],
            [
                ("single prompt", lambda r: r["path"]),
                ("tokens", lambda r: str(r["tokens"])),
                ("GMAC", _opt("gmac", ".1f")),
                ("latency s", lambda r: f"{r['median_s']:.2f}"),
                ("bound s", _opt("bound_s", ".2f")),
                ("share of bound", lambda r: f"{100 * r['share']:.0f}%" if "share" in r else ""),
                ("vs padded", _opt("vs_padded", ".2f")),
            ],
        ),
        "",
        "Identical detections, exact length vs padded to the token budget: "
        + ", ".join(f"{k} tokens: {_yes(v)}" for k, v in s["identity"].items()),
    ]
    sampler = s.get("dcn_sampler")
    if sampler:
        line = f"DCN sampling on CPU: {sampler['status']}."
        if "bitwise_equal" in sampler:
            ours = next(r for r in s["rows"] if r["path"].endswith("tokens (exact)"))
            base = next(r for r in s["rows"] if r["path"].endswith("by grid_sample"))
            line += (
                f" The same exact-length forward with grid_sample sampling: "
                f"{base['median_s']:.2f} s vs {ours['median_s']:.2f} s "
                f"({ours['median_s'] / base['median_s']:.2f}x); detections bitwise equal: "
                f"{'yes' if sampler['bitwise_equal'] else 'NO'}."
            )
        out += ["", line]
    return out


def _grouped(res: Dict) -> List[str]:
    g = res["grouped"]
    rows = [
        {"path": "one forward per caption (official)", **g["naive"]},
        {"path": "grouped: one input per image", **g["grouped"], "speedup": g["speedup"]},
    ]
    return [
        f"Flickr30k-style: {g['captions']} captions per image ({g['tokens']} tokens), s per image:",
        "",
        table(
            rows,
            [
                ("captions of one image", lambda r: r["path"]),
                ("latency s", lambda r: f"{r['median_s']:.2f}"),
                ("speed-up", _opt("speedup", ".2f")),
                ("peak MB", lambda r: f"{r['peak_mb']:.0f}"),
            ],
        ),
        "",
        f"FLOP bound of grouping: {g['flop_bound']:.2f}x; identical records per caption: "
        + _yes(g["identity"]),
    ]


def _multi(res: Dict) -> List[str]:
    m = res["multi_prompt"]
    return [
        f"LVIS-style: prompts of {res['names_per_prompt']} names (exact length, up to "
        f"{m['tokens']} tokens), s per image:",
        "",
        table(
            m["rows"],
            [
                ("path", lambda r: r["path"]),
                ("prompts", lambda r: str(r["prompts"])),
                ("latency s/img", lambda r: f"{r['median_s']:.2f}"),
                ("peak MB", lambda r: f"{r['peak_mb']:.0f}"),
                ("speed-up", _opt("speedup", ".2f")),
                ("FLOP bound", _opt("flop_bound", ".2f")),
                ("of bound", lambda r: f"{100 * r['of_bound']:.0f}%" if "of_bound" in r else ""),
            ],
        ),
        "",
        "Identical detections naive vs cached: "
        + ", ".join(f"{p} prompts: {_yes(v)}" for p, v in m["identity"].items()),
    ]


def _buckets(res: Dict) -> List[str]:
    b = res["buckets"]
    return [
        f"{b['images']} images of one padded size ({b['sizes']}), s per image: one by one "
        f"{b['single']['median_s']:.2f}, batched {b['batched']['median_s']:.2f} "
        f"(ratio {b['ratio']:.2f}); identical detections: {_yes(b['identity'])}",
    ]


def _options(res: Dict) -> List[str]:
    out = [
        table(
            res["options"],
            [
                ("single prompt, option", lambda r: r["option"]),
                ("latency s", lambda r: f"{r['median_s']:.2f}"),
                ("ratio", lambda r: f"{r['ratio']:.2f}"),
            ],
        )
    ]
    amp = res.get("amp_agreement")
    if amp:
        levels = "; ".join(
            f"{v['unmatched']} of {v['detections']} without a partner within score "
            f"{v['score_tol']:g} / box {v['box_tol']:g} px"
            for v in amp["inference"]
        )
        losses = ", ".join(f"{k} {100 * v:.2f}%" for k, v in amp["training_rel_diff"].items())
        out += [
            "",
            f"{amp['dtype']} autocast vs fp32, single prompt: {levels}. Training losses (one "
            f"batch, same weights), relative difference: {losses}.",
        ]
    return out


def _train(res: Dict) -> List[str]:
    cols = [
        ("training step", lambda r: r["name"]),
        ("input", lambda r: f"{r['size']}^2 x {r['batch']}"),
        ("s/iter", lambda r: f"{r['median_s']:.2f}"),
        ("peak RSS GB", lambda r: f"{r['peak_rss_mb'] / 1024:.2f}"),
        ("after build GB", lambda r: f"{r['model_rss_mb'] / 1024:.2f}"),
    ]
    if any("peak_device_mb" in r for r in res["train"]):
        cols.append(("peak GPU GB", lambda r: f"{r.get('peak_device_mb', 0) / 1024:.2f}"))
    return [
        table(res["train"], cols),
        "",
        "Peak RSS: the whole training process's peak resident memory (``getrusage``), each "
        "configuration in a fresh process, as for the official model's 8.1 GB.",
    ]


def _profiles(res: Dict) -> List[str]:
    out = []
    for prof in res["profiles"]:
        top = ", ".join(f"{r['op']} {100 * r['share']:.0f}%" for r in prof["ops"][:8])
        out.append(f"Profile {prof['size']} ({prof['tokens']} tokens), self time: {top}")
    return out


_SECTIONS = [
    ("single", _single),
    ("grouped", _grouped),
    ("multi_prompt", _multi),
    ("buckets", _buckets),
    ("options", _options),
    ("train", _train),
    ("profiles", _profiles),
]


def format_report(res: Dict) -> str:
    """Every measured section of one run, as markdown."""
    out = [
        f"Machine: {res['machine']}",
        f"Config: `{res['config']}`, input {res['size']}x{res['size']}",
    ]
    flops = res.get("flops_gmac")
    if flops:
        out += [
            "",
            f"FLOPs of one forward, {flops['tokens']}-token prompt (GMAC; 1 FLOP = 1 MAC):",
            table([flops["parts"]], [(k, _opt(k, ".2f")) for k in flops["parts"]]),
        ]
    for key, render in _SECTIONS:
        if res.get(key):
            out += [""] + render(res)
    return "\n".join(out)


def readme_section(results: List[Dict]) -> str:
    """The README's performance section for saved benchmark results (one subsection per run)."""
    out = [
        "Generated by `python tools/benchmark.py --from-json <results> --readme README.md` "
        "from the runs below; do not edit by hand. Random weights (speed does not depend on "
        "them), score threshold 0 (post-processing at full load). Each comparison is timed in "
        "turns in one process (`measure_interleaved`), training configurations in fresh "
        "processes in turns. Peak MB of inference rows: the largest growth of the resident set "
        "during one timed call (the allocator reuses memory, so small values mean that the call "
        "fitted in memory the process already held).",
    ]
    for res in results:
        on_gpu = res.get("device", "").startswith("cuda")
        out += ["", f"### {'GPU' if on_gpu else 'CPU'}: {res['config']}, {res['size']}px", ""]
        if res.get("command"):
            out += [f"`{res['command']}`", ""]
        if res.get("note"):
            out += [res["note"], ""]
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
