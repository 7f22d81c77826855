"""Benchmark rows of coarse-grained training (stage 1) for ``tools/benchmark.py``.

One optimisation step of :class:`~fiber_det.modeling.FIBERCoarse` as the recipes train it: the
forward with every enabled loss (MLM, ITC with the queue, ITM with hard negatives), backward, and
AdamW with the official coarse parameter groups. Latency is the median after a warm-up step;
with ``accumulate`` > 1 the same images are also trained as that many micro-batches
(:class:`~.accumulation.AccumulatingTrainer`) in turns with the one-batch step, and their ratio
reported (what gradient accumulation costs, measured in the same run).
"""

import itertools
from typing import Dict, List, Sequence

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ..config import load_config
from ..solver import build_fiber_optimizer
from ..utils.benchmark import measure_interleaved
from .accumulation import AccumulatingTrainer

__all__ = ["coarse_pair_batch", "coarse_training_step_row", "format_coarse_train_rows"]

FIRST_WORD_ID = 5  # ids below are RoBERTa's special tokens (<s>, <pad>, </s>, <unk>, <mask>)


def coarse_pair_batch(cfg, batch_size: int, seed: int = 0) -> List[Dict]:
    """``batch_size`` random training pairs in the model's input contract (full-length captions
    of ``INPUT.COARSE.MAX_TEXT_LEN`` tokens, 15% of them masked for MLM)."""
    g = torch.Generator().manual_seed(seed)
    size, length = cfg.INPUT.COARSE.IMAGE_SIZE, cfg.INPUT.COARSE.MAX_TEXT_LEN
    vocab = cfg.MODEL.LANGUAGE.VOCAB_SIZE
    out = []
    for _ in range(batch_size):
        ids = torch.randint(FIRST_WORD_ID, vocab, (length,), generator=g)
        ids[0], ids[-1] = 0, 2
        chosen = torch.rand(length, generator=g) < cfg.INPUT.COARSE.MLM_PROB
        chosen[0] = chosen[-1] = False
        chosen[1] = True  # at least one masked token
        out.append(
            {
                "image": torch.randn(3, size, size, generator=g),
                "input_ids": ids,
                "attention_mask": torch.ones(length, dtype=torch.long),
                "mlm_input_ids": torch.where(chosen, torch.full_like(ids, 4), ids),
                "mlm_labels": torch.where(chosen, ids, torch.full_like(ids, -100)),
            }
        )
    return out


def coarse_training_step_row(
    config_file: str,
    *,
    opts: Sequence = (),
    device: str = "cpu",
    batch_size: int = 2,
    repeats: int = 3,
    accumulate: int = 1,
) -> Dict:
    """Latency and peak memory of one coarse training step of ``batch_size`` pairs.

    Returns:
        dict with ``config``, ``size``, ``batch``, ``median_s``, ``peak_mb``, ``params_m`` and,
        with ``accumulate`` > 1, ``accumulated_median_s`` and ``accumulation_ratio``.
    """
    if accumulate < 1 or batch_size % accumulate:
        raise ValueError(f"batch_size {batch_size} must be a multiple of accumulate {accumulate}")
    opts = ["SOLVER.FIBER.PARAM_GROUPS", "official_coarse", *opts]
    cfg = load_config(config_file, opts, device=device, freeze=False)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_fiber_optimizer(cfg, model)
    batch = coarse_pair_batch(cfg, batch_size)

    def step():
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()

    fns = {"step": step}
    if accumulate > 1:
        part = batch_size // accumulate
        micro = [batch[i * part : (i + 1) * part] for i in range(accumulate)]
        runner = AccumulatingTrainer(
            model, itertools.cycle(micro), optimizer, accumulate_steps=accumulate
        )
        fns["accumulated"] = runner.run_step
    with EventStorage():
        timed = measure_interleaved(fns, torch.device(device), repeats)
    row = {
        "config": config_file,
        "size": cfg.INPUT.COARSE.IMAGE_SIZE,
        "text_len": cfg.INPUT.COARSE.MAX_TEXT_LEN,
        "batch": batch_size,
        "median_s": timed["step"]["median_s"],
        "peak_mb": timed["step"]["peak_mb"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if accumulate > 1:
        row["accumulate"] = accumulate
        row["accumulated_median_s"] = timed["accumulated"]["median_s"]
        row["accumulation_ratio"] = row["accumulated_median_s"] / row["median_s"]
    return row


def format_coarse_train_rows(rows: Sequence[Dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| coarse training step (MLM + ITC + ITM, AdamW) | image | batch | s / step | "
        "s / pair | peak MB | accumulation (k x batch/k) / one batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['accumulation_ratio']:.2f} (k={r['accumulate']})" if "accumulate" in r else "-"
        lines.append(
            f"| {r['config']} ({r['params_m']:.1f}M) | {r['size']} | {r['batch']} | "
            f"{r['median_s']:.3f} | {r['median_s'] / r['batch']:.3f} | {r['peak_mb']:.0f} | "
            f"{acc} |"
        )
    return "\n".join(lines)
