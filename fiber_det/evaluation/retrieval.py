"""Image-text retrieval metrics (IR / TR Recall@k) and score files, as the official FIBER stage 1.

The official recall (microsoft/FIBER ``coarse_grained/fiber/modules/objectives.py``,
``compute_itc_recall`` / ``compute_itm_recall``) takes a score matrix (num_images, num_texts),
higher = better, and the image of every text:

- **TR** (text retrieval, image -> text): an image scores at k if ANY of its texts is among the k
  best texts of its row; the mean over all images (an image without texts never scores).
- **IR** (image retrieval, text -> image): a text scores at k if its image is among the k best
  images of its column; the mean over all texts.

Here a candidate's rank is the number of candidates with a higher score plus the number with an
equal score and a lower index: ties go to the lower index, as a stable sort would order them.
The official code takes ``torch.topk``, whose order among equal scores PyTorch does not specify
(on CPU it is neither the lower nor the higher index first), so the numbers equal the official
ones whenever no tie straddles the k-th place, which is the case for real-valued model scores.
A k larger than the number of candidates counts every candidate (the official ``topk`` raises).
Values are percentages; ``ir_mean`` / ``tr_mean`` average R@1/5/10 and ``r_mean`` both (ALBEF).

Score files (:func:`save_retrieval_scores`) are safetensors files: the matrix, ``txt2img`` and a
JSON metadata dict; no pickle, so loading a file from elsewhere runs no code.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..utils.io import atomic_open

__all__ = [
    "RETRIEVAL_KEYS",
    "SCORES_FORMAT",
    "load_retrieval_scores",
    "retrieval_ranks",
    "retrieval_recall",
    "save_retrieval_scores",
]

RETRIEVAL_KEYS = (
    "ir_r1",
    "ir_r5",
    "ir_r10",
    "tr_r1",
    "tr_r5",
    "tr_r10",
    "ir_mean",
    "tr_mean",
    "r_mean",
)
SCORES_FORMAT = "fiber_det.retrieval_scores.v1"  # the "format" entry of a score file's metadata
_CHUNK_ELEMENTS = 1 << 24  # score entries handled at once
_NEVER = torch.iinfo(torch.long).max  # rank of an image without texts: never retrieved

PathLike = Union[str, Path]


def _check(scores: torch.Tensor, txt2img) -> torch.Tensor:
    """Validate the inputs; return txt2img as a (T,) int64 tensor."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError("scores must be a float tensor of shape (num_images, num_texts)")
    num_images, num_texts = scores.shape
    if num_images == 0 or num_texts == 0:
        raise ValueError(f"empty score matrix {tuple(scores.shape)}: recall is undefined")
    txt2img = torch.as_tensor(txt2img, dtype=torch.long).reshape(-1)
    if txt2img.numel() != num_texts:
        raise ValueError(
            f"txt2img has {txt2img.numel()} entries for a score matrix with {num_texts} texts "
            "(columns): give the image index of every text"
        )
    if txt2img.min() < 0 or txt2img.max() >= num_images:
        raise ValueError(f"txt2img entries must be image indices in [0, {num_images})")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: recall is undefined (check the model outputs)")
    return txt2img


def _texts_of_images(txt2img: torch.Tensor, num_images: int) -> torch.Tensor:
    """(num_images, K) text indices of each image, -1 padded (K = most texts of an image)."""
    counts = torch.bincount(txt2img, minlength=num_images)
    own = torch.full((num_images, int(counts.max())), -1)
    order = torch.argsort(txt2img, stable=True)
    sorted_images = txt2img[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order)) - starts[sorted_images]
    own[sorted_images, slot] = order
    return own


def _exact_ranks(rows: torch.Tensor, targets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``targets`` (E,) with ``values`` (E,) in ``rows`` (E, m) by a full scan."""
    index = torch.arange(rows.shape[1])
    higher = (rows > values[:, None]).sum(1)
    tied_before = ((rows == values[:, None]) & (index < targets[:, None])).sum(1)
    return higher + tied_before


def _best_ranks(matrix: torch.Tensor, targets: torch.Tensor, limit: int) -> torch.Tensor:
    """Best rank over each row's targets, ranks of ``limit`` or more reported as ``limit``.

    Args:
        matrix: (n, m) scores of n queries against m candidates (a view is fine).
        targets: (n, K) right candidates of each query, -1 padded.
        limit: only ranks below it are needed exactly (R@k needs k).

    Returns:
        (n,) int64; the largest int64 for a query without targets.

    Only the ``limit`` best scores of a row are compared (``topk``, as the official code): every
    candidate scoring above the limit-th value is among them, so the rank of a target scoring
    above it is exact from them alone; a target scoring below it ranks at ``limit`` or worse; a
    target equal to it (ties may continue past the list) is ranked by a full scan of its row.
    """
    n, m = matrix.shape
    kk = min(limit, m)
    out = torch.empty(n, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, m))
    for start in range(0, n, step):
        rows = matrix[start : start + step].contiguous()  # (c, m)
        valid = targets[start : start + step] >= 0
        cand = targets[start : start + step].clamp(min=0)  # (c, K)
        value = rows.gather(1, cand)
        top_values, top_index = rows.topk(kk, dim=1)  # (c, kk)
        top_values, top_index = top_values.unsqueeze(1), top_index.unsqueeze(1)
        higher = (top_values > value.unsqueeze(2)).sum(2)
        tied = ((top_values == value.unsqueeze(2)) & (top_index < cand.unsqueeze(2))).sum(2)
        rank = higher + tied
        kth = top_values[:, 0, -1:]  # (c, 1)
        rank[value < kth] = kk
        edge = ((value == kth) & valid).nonzero()
        for e in range(0, len(edge), step):
            r, k = edge[e : e + step].unbind(1)
            rank[r, k] = _exact_ranks(rows[r], cand[r, k], value[r, k])
        rank = rank.clamp(max=kk).masked_fill(~valid, _NEVER)
        out[start : start + step] = rank.min(1).values
    return out


@torch.no_grad()
def retrieval_ranks(
    scores: torch.Tensor,
    txt2img,
    *,
    limit: Optional[int] = None,
    ir_scores: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of the right answers (ties to the lower index; module docstring).

    Args:
        scores: (I, T) float, higher = better.
        txt2img: (T,) image index of each text.
        limit: if given, ranks of ``limit`` or more are reported as ``limit`` (much faster:
            R@k needs ``limit = k``).
        ir_scores: (I, T) scores that rank the images of each text (IR), when they differ from
            ``scores`` (ITM re-ranking of the ITC top-k: ``RetrievalScores.t2i``); default
            ``scores``.

    Returns:
        (tr_ranks, ir_ranks): (I,) best rank among each image's texts in its row (the largest
        int64 for an image without texts) and (T,) rank of each text's image in its column.
    """
    txt2img = _check(scores, txt2img)
    if ir_scores is None:
        ir_scores = scores
    else:
        _check(ir_scores, txt2img)
        if ir_scores.shape != scores.shape:
            raise ValueError(
                f"ir_scores {tuple(ir_scores.shape)} and scores {tuple(scores.shape)} differ"
            )
    scores, ir_scores = scores.detach().cpu(), ir_scores.detach().cpu()
    num_images, num_texts = scores.shape
    own = _texts_of_images(txt2img, num_images)
    tr_ranks = _best_ranks(scores, own, limit or num_texts)
    ir_ranks = _best_ranks(ir_scores.t(), txt2img.unsqueeze(1), limit or num_images)
    return tr_ranks, ir_ranks


def retrieval_recall(
    scores: torch.Tensor,
    txt2img: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    ir_scores: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """IR and TR Recall@k in percent, as the official ``compute_irtr_recall`` (module docstring).

    Args:
        scores: (num_images, num_texts) float, higher = better match.
        txt2img: image index of each text (an image may have several texts).
        ks: the k of R@k (official 1, 5, 10).
        ir_scores: separate scores for IR (re-ranked ITM, :func:`retrieval_ranks`); TR then
            comes from ``scores`` alone.

    Returns:
        ``{"ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "ir_mean", "tr_mean",
        "r_mean"}`` (keys follow ``ks``), percentages.
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    limit = max(int(k) for k in ks)
    tr_ranks, ir_ranks = retrieval_ranks(scores, txt2img, limit=limit, ir_scores=ir_scores)
    out: Dict[str, float] = {}
    for task, ranks in (("ir", ir_ranks), ("tr", tr_ranks)):
        for k in ks:
            hits = (ranks < int(k)).double()
            out[f"{task}_r{k}"] = 100.0 * hits.mean().item()
    out["ir_mean"] = sum(out[f"ir_r{k}"] for k in ks) / len(ks)
    out["tr_mean"] = sum(out[f"tr_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["ir_mean"] + out["tr_mean"]) / 2
    return out


def save_retrieval_scores(
    path: PathLike,
    scores: torch.Tensor,
    txt2img: Sequence[int],
    meta: Optional[Dict[str, Any]] = None,
) -> None:
    """Write a score matrix, the image of each text and JSON metadata (dataset name, score kind,
    image / caption ids, ...) to a safetensors file, atomically (temporary file, then rename)."""
    txt2img = _check(scores, txt2img)
    try:
        meta_json = json.dumps(meta or {})
    except TypeError as e:
        raise ValueError(f"retrieval score metadata must be JSON-serialisable: {e}") from e
    data = save(
        {"scores": scores.detach().cpu().contiguous(), "txt2img": txt2img.contiguous()},
        metadata={"format": SCORES_FORMAT, "meta": meta_json},
    )
    with atomic_open(path, "wb") as f:
        f.write(data)


def load_retrieval_scores(path: PathLike) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Read a file of :func:`save_retrieval_scores`.

    Returns:
        (scores (I, T) float, txt2img (T,) int64, meta dict).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a fiber-det retrieval score file, or inconsistent contents.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"retrieval score file not found: {path}")
    not_ours = (
        f"{path} is not a fiber-det retrieval score file (safetensors with 'scores', 'txt2img' "
        "and format metadata, written by fiber_det.evaluation.save_retrieval_scores)"
    )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != SCORES_FORMAT or set(f.keys()) != {"scores", "txt2img"}:
                raise ValueError(not_ours)
            scores, txt2img = f.get_tensor("scores"), f.get_tensor("txt2img")
    except SafetensorError as e:
        raise ValueError(f"{not_ours}: {e}") from e
    try:
        meta = json.loads(metadata.get("meta", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable metadata ({e})") from e
    _check(scores, txt2img)
    return scores, txt2img.long(), meta
