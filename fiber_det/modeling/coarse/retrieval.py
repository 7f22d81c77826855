"""Image-text retrieval scores of a coarse-grained FIBER model (IR / TR on Flickr30k, COCO).

* :func:`itc_scores`: cosine similarities of the uni-modal ITC embeddings for all pairs (the
  official ``compute_itc_recall``), one encoder pass per image and per caption.
* :func:`itm_scores`: the ITM "match" logit of every pair, as the official ``compute_itm_recall``
  ranks them (``rank_output(cls_feats)``, i.e. ``itm_logits[:, 1]``, see
  :class:`~fiber_det.modeling.coarse.heads.ITMHead`). The official code runs the whole model for
  every pair (1k x 5k forwards on Flickr30k); here the pre-fusion image part runs once per image
  and the pre-fusion text part once per caption, and only the fused tail runs per pair (the
  cached path of the detector's multi-prompt inference): the same scores, a fraction of the work.
  With ``topk`` > 0, ITM only scores the ITC top-k texts of each image and the ITC top-k images of
  each text, as ALBEF's re-ranking (Li et al. 2021: k = 128 on Flickr30k, 256 on COCO).

The matrices are (num_images, num_texts), higher = better, as
``fiber_det.evaluation.retrieval.retrieval_recall`` and ``save_retrieval_scores`` take them.
Memory: the pre-fusion states of every caption are kept (T x L x 768 floats: 0.6 GB for the 5k
Flickr30k captions at L = 40, 3 GB for COCO's 25k).
"""

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, List, Tuple, Union

import torch
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

from ..backbone.fiber_backbone import TextState
from ..backbone.swin import SwinState

if TYPE_CHECKING:
    from ..meta_arch.coarse import FIBERCoarse

__all__ = ["RetrievalScores", "index_states", "itc_scores", "itm_scores"]

logger = logging.getLogger(__name__)

Images = Union[Tensor, Iterable[Tensor]]


@dataclass
class RetrievalScores:
    """Scores of every image (rows) with every text (columns).

    Attributes:
        i2t (Tensor): (I, T) scores that rank the texts of each image (text retrieval, TR).
        t2i (Tensor): (I, T) scores that rank the images of each text (image retrieval, IR).
            Equal to ``i2t`` unless re-ranking: then ``i2t[i]`` holds ITM scores for the ITC
            top-k texts of image i, ``t2i[:, j]`` for the ITC top-k images of text j, and
            ``-inf`` elsewhere (recall@K is exact for K <= k).
    """

    i2t: Tensor
    t2i: Tensor


def index_states(state: Union[SwinState, TextState], index: Tensor):
    """The pre-fusion state of the batch rows ``index`` (a new batch, in that order)."""
    if isinstance(state, TextState):
        return TextState(hidden=state.hidden[index], mask=state.mask[index])
    outputs = {k: v[index] for k, v in state.outputs.items()}
    return replace(state, tokens=state.tokens[index], outputs=outputs)


def _image_batches(images: Images) -> Iterable[Tensor]:
    return images.split(1) if isinstance(images, Tensor) and images.dim() == 4 else images


def _text_batches(input_ids: Tensor, attention_mask: Tensor, batch_size: int):
    if input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} differ"
        )
    return zip(input_ids.split(batch_size), attention_mask.split(batch_size))


@torch.no_grad()
def itc_scores(
    model: "FIBERCoarse",
    images: Images,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    batch_size: int = 256,
) -> Tensor:
    """(I, T) cosine similarities of the ITC embeddings.

    Args:
        images: (I, 3, S, S) normalised images, or an iterable of such batches.
        input_ids, attention_mask (Tensor): (T, L) tokenized captions.
        batch_size (int): captions encoded together.
    """
    dev = model.device
    image_feats = torch.cat([model.encode_image_itc(b.to(dev)) for b in _image_batches(images)])
    text_feats = torch.cat(
        [
            model.encode_text_itc(ids.to(dev), mask.to(dev))
            for ids, mask in _text_batches(input_ids, attention_mask, batch_size)
        ]
    )
    return image_feats @ text_feats.t()


def _topk_candidates(itc: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Bool (I, T) masks: the ITC top-k texts of each image, the ITC top-k images of each text."""
    rows = torch.zeros_like(itc, dtype=torch.bool)
    rows.scatter_(1, itc.topk(min(k, itc.shape[1]), dim=1).indices, True)
    cols = torch.zeros_like(itc, dtype=torch.bool)
    cols.scatter_(0, itc.topk(min(k, itc.shape[0]), dim=0).indices, True)
    return rows, cols


def _text_prefusion(model, input_ids, attention_mask, batch_size) -> TextState:
    dev = model.device
    states: List[TextState] = [
        model.encode_text_prefusion(ids.to(dev), mask.to(dev))
        for ids, mask in _text_batches(input_ids, attention_mask, batch_size)
    ]
    return TextState(
        hidden=torch.cat([s.hidden for s in states]), mask=torch.cat([s.mask for s in states])
    )


@torch.no_grad()
def itm_scores(
    model: "FIBERCoarse",
    images: Images,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    itc: Tensor | None = None,
    topk: int | None = None,
    batch_size: int | None = None,
    image_rows: Tensor | None = None,
) -> RetrievalScores:
    """ITM match logits of image-text pairs, from cached pre-fusion states.

    Args:
        images: (I, 3, S, S) normalised images, or an iterable of such batches.
        input_ids, attention_mask (Tensor): (T, L) tokenized captions.
        itc (Tensor, optional): (I, T) ITC scores (:func:`itc_scores`), needed for ``topk``.
        topk (int): 0 scores every pair (official); k > 0 re-ranks the ITC top-k (ALBEF);
            default ``model.rerank_topk`` (``MODEL.COARSE.RERANK_TOPK``).
        batch_size (int): pairs run together through the fused tail (and captions encoded
            together); default ``model.itm_batch_size`` (``MODEL.COARSE.ITM_BATCH_SIZE``).
    Returns:
        RetrievalScores (see there; ``i2t is t2i`` without re-ranking).
    """
    topk = model.rerank_topk if topk is None else topk
    batch_size = model.itm_batch_size if batch_size is None else batch_size
    if topk < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    if topk and itc is None:
        raise ValueError("re-ranking (topk > 0) needs the ITC scores: pass itc=itc_scores(...)")
    texts = _text_prefusion(model, input_ids, attention_mask, batch_size)
    num_texts = texts.hidden.shape[0]
    if itc is not None and itc.shape[1] != num_texts:
        raise ValueError(f"itc has {itc.shape[1]} columns for {num_texts} texts")
    candidates = _topk_candidates(itc, topk) if topk else None
    if image_rows is not None and itc is None:
        raise ValueError("image_rows index the rows of itc: pass itc too")
    head = model._head("itm_score")
    dev = model.device
    rows: List[Tensor] = []
    for batch in _image_batches(images):
        states = model.encode_image_prefusion(batch.to(dev))
        for j in range(states.tokens.shape[0]):
            i = len(rows)
            if image_rows is not None:
                if i >= len(image_rows):
                    raise ValueError(f"more images than the {len(image_rows)} image_rows")
                i = int(image_rows[i])
            row = torch.full((num_texts,), float("-inf"), device=dev)
            if candidates is None:
                todo = torch.arange(num_texts, device=dev)
            else:
                todo = (candidates[0][i] | candidates[1][i]).nonzero().flatten().to(dev)
            image = index_states(states, torch.tensor([j], device=dev))
            for chunk in todo.split(batch_size):
                cls = model.fuse_states(image, index_states(texts, chunk)).cls_feats
                row[chunk] = head(cls)[:, 1].float()
            rows.append(row)
            log_every_n_seconds(logging.INFO, f"ITM retrieval scores: {len(rows)} images", n=30)
    scores = torch.stack(rows) if rows else torch.empty(0, num_texts, device=dev)
    expected = len(image_rows) if image_rows is not None else len(itc if itc is not None else rows)
    if scores.shape[0] != expected:
        raise ValueError(f"{scores.shape[0]} images for {expected} rows of itc / image_rows")
    if candidates is None:
        return RetrievalScores(i2t=scores, t2i=scores)
    if image_rows is not None:
        candidates = tuple(c[image_rows.to(c.device)] for c in candidates)
    inf = torch.tensor(float("-inf"), device=scores.device)
    return RetrievalScores(
        i2t=torch.where(candidates[0].to(scores.device), scores, inf),
        t2i=torch.where(candidates[1].to(scores.device), scores, inf),
    )
