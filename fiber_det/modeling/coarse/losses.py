"""Losses of the coarse-grained FIBER model: ITC with a queue, ITM with hard negatives, MLM.

As the official objectives (``microsoft/FIBER`` ``coarse_grained/fiber/modules/objectives.py``:
``compute_itc``, ``compute_itm_hardneg``, ``compute_mlm``), after ALBEF (Li et al., NeurIPS 2021)
for the contrastive queue and the hard-negative sampling:

* ITC: each image embedding is scored against the batch's text embeddings and the text queue
  (and vice versa), divided by a learned temperature; cross-entropy with the pair's own entry as
  the target, averaged over both directions. The keys (batch and queue) carry no gradient.
* ITM: for every pair, one negative text is drawn with probability ``softmax(sim_i2t)`` over the
  batch and the filled queue entries (the pair's own entry excluded), and one negative image
  likewise from ``softmax(sim_t2i)``; the fused model classifies the 3B pairs (B matches).
* MLM: cross-entropy of the fused text features' vocabulary logits at the masked tokens.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "hard_negative_weights",
    "itc_loss",
    "itc_similarities",
    "itm_labels",
    "mlm_loss",
    "sample_hard_negatives",
]

# Added to the hard-negative weights before sampling (official): a row whose only candidate is
# the pair itself (batch of one, empty queue) still has a valid distribution.
_SAMPLING_EPS = 1e-9


def itc_similarities(
    image_feat: Tensor,
    text_feat: Tensor,
    image_keys: Tensor,
    text_keys: Tensor,
    image_queue: Tensor,
    text_queue: Tensor,
    temperature: Tensor,
) -> Tuple[Tensor, Tensor]:
    """Similarities of the queries to the batch keys then the queue, over the temperature.

    Args:
        image_feat, text_feat (Tensor): (B, D) L2-normalised queries (this process's pairs).
        image_keys, text_keys (Tensor): (K, D) batch keys (the same pairs, or those of every
            process); used without gradient.
        image_queue, text_queue (Tensor): (D, Q) queued embeddings.
        temperature (Tensor): scalar, already clamped.
    Returns:
        (sim_i2t, sim_t2i): each (B, K + Q).
    """
    image_all = torch.cat([image_keys.t().detach(), image_queue.detach()], dim=1)
    text_all = torch.cat([text_keys.t().detach(), text_queue.detach()], dim=1)
    return image_feat @ text_all / temperature, text_feat @ image_all / temperature


def itc_loss(sim_i2t: Tensor, sim_t2i: Tensor, positives: Tensor) -> Tensor:
    """Mean of the image-to-text and text-to-image cross-entropies.

    Args:
        sim_i2t, sim_t2i (Tensor): (B, K + Q) from :func:`itc_similarities`.
        positives (Tensor): (B,) column of each pair's own key (``arange(B)`` on one process).
    """
    return (F.cross_entropy(sim_i2t, positives) + F.cross_entropy(sim_t2i, positives)) / 2


@torch.no_grad()
def hard_negative_weights(
    sim_i2t: Tensor, sim_t2i: Tensor, num_candidates: int, positives: Tensor
) -> Tuple[Tensor, Tensor]:
    """Sampling weights of the ITM negatives: softmax over the first ``num_candidates`` columns
    (the batch keys, then the filled queue entries), the pair's own column set to 0.

    Returns:
        (weights_i2t, weights_t2i): each (B, num_candidates); row i of ``weights_i2t`` weighs
        the candidate texts of image i, of ``weights_t2i`` the candidate images of text i.
    """
    rows = torch.arange(sim_i2t.shape[0], device=sim_i2t.device)
    out = []
    for sim in (sim_i2t, sim_t2i):
        w = F.softmax(sim[:, :num_candidates].float(), dim=1)
        w[rows, positives] = 0
        out.append(w)
    return out[0], out[1]


@torch.no_grad()
def sample_hard_negatives(
    weights_i2t: Tensor, weights_t2i: Tensor, generator: torch.Generator | None = None
) -> Tuple[Tensor, Tensor]:
    """One negative image per text and one negative text per image.

    Returns:
        (neg_image_index, neg_text_index): each (B,), candidate columns of the weights. The images
        are drawn first, as the official loop does (one draw per row; here one call for all rows).
    """
    neg_image = torch.multinomial(weights_t2i + _SAMPLING_EPS, 1, generator=generator)
    neg_text = torch.multinomial(weights_i2t + _SAMPLING_EPS, 1, generator=generator)
    return neg_image.squeeze(1), neg_text.squeeze(1)


def itm_labels(batch: int, device: torch.device) -> Tensor:
    """(3B,) labels of the ITM pairs in the official order: the B matches (1), then each image
    with its negative text (0), then each text with its negative image (0)."""
    labels = torch.zeros(3 * batch, dtype=torch.long, device=device)
    labels[:batch] = 1
    return labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the masked tokens.

    Args:
        logits (Tensor): (B, T, V); labels (Tensor): (B, T), -100 where not masked.
    Returns:
        scalar; 0 (with a gradient path) when nothing is masked, where the official loss is NaN.
    """
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
