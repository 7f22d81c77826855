"""The training step of the coarse-grained FIBER model: MLM, ITC (+ queue update), ITM.

In the official order (``fiber_module.py`` ``forward``: ``compute_mlm``, ``compute_itc``, then
``compute_itm_hardneg`` with the negatives drawn by ITC, or ``compute_itm`` without ITC). The
ITC queue is updated after the negatives are drawn, with the embeddings and inputs of every
process (all-gathered), as ``_dequeue_and_enqueue``.

``gather_batch`` (not official) makes a multi-process step equal to a one-process step over the
whole batch: ITC keys and hard-negative candidates come from every process's batch, and the
negatives are drawn from the full weight matrix with a generator seeded identically on every
process (from rank 0's RNG), each process keeping its own rows. Officially each process uses its
own batch (plus the shared queue) for both.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .losses import (
    hard_negative_weights,
    itc_loss,
    itc_similarities,
    itm_labels,
    mlm_loss,
    sample_hard_negatives,
)
from .queue import gather_across_processes, world_size

if TYPE_CHECKING:
    from ..meta_arch.coarse import FIBERCoarse

__all__ = ["CoarseLosses", "ITMNegatives"]


@dataclass
class ITMNegatives:
    """One negative image per text and one negative text per image of the batch.

    Attributes:
        images (Tensor): (B, 3, S, S) negative image of each text.
        input_ids, attention_mask (Tensor): (B, L) negative text of each image.
    """

    images: Tensor
    input_ids: Tensor
    attention_mask: Tensor


def _rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def _shared_generator(device: torch.device) -> torch.Generator:
    """A generator in the same state on every process, seeded from rank 0's default RNG."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.long)
    if world_size() > 1:
        seed = seed.to(device)
        dist.broadcast(seed, src=0)
    return torch.Generator(device=device).manual_seed(int(seed))


class CoarseLosses:
    """Weighted ITC, ITM and MLM losses of a :class:`FIBERCoarse` batch (weight 0 = off).

    Args:
        itc_weight, itm_weight, mlm_weight (float): loss weights (official: 1 each).
        gather_batch (bool): see the module docstring.
    """

    def __init__(
        self, *, itc_weight: float, itm_weight: float, mlm_weight: float, gather_batch: bool
    ):
        if min(itc_weight, itm_weight, mlm_weight) < 0:
            raise ValueError("MODEL.COARSE.*_LOSS_WEIGHT must be >= 0")
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.mlm_weight = mlm_weight
        self.gather_batch = gather_batch

    def __call__(self, model: "FIBERCoarse", batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``batch`` from :meth:`FIBERCoarse.batch_inputs` -> ``{"loss_mlm", "loss_itc",
        "loss_itm"}`` (those with weight > 0)."""
        losses: Dict[str, Tensor] = {}
        if self.mlm_weight > 0:
            logits = model.mlm_logits(
                batch["images"], batch["mlm_input_ids"], batch["attention_mask"]
            )
            losses["loss_mlm"] = self.mlm_weight * mlm_loss(logits, batch["mlm_labels"])
        negatives = None
        if self.itc_weight > 0:
            loss, negatives = self.itc(model, batch, with_negatives=self.itm_weight > 0)
            losses["loss_itc"] = self.itc_weight * loss
        if self.itm_weight > 0:
            if negatives is not None:
                losses["loss_itm"] = self.itm_weight * self.itm_hard(model, batch, negatives)
            else:
                losses["loss_itm"] = self.itm_weight * self.itm_random(model, batch)
        return losses

    # -- ITC -----------------------------------------------------------------------------------
    def itc(
        self, model: "FIBERCoarse", batch: Dict[str, Tensor], *, with_negatives: bool
    ) -> Tuple[Tensor, ITMNegatives | None]:
        """ITC loss, the ITM hard negatives (when asked), then the queue update."""
        queue = model.queue
        temp = model.clamp_temperature()
        inputs = (batch["images"], batch["input_ids"], batch["attention_mask"])
        gather_inputs = queue.keep_inputs or self.gather_batch
        if gather_inputs:  # equal lengths across processes and with the queued texts
            pad = model.pad_token_id
            inputs = (inputs[0], queue.pad_text(inputs[1], pad), queue.pad_text(inputs[2], 0))
        image_feat = model.encode_image_itc(inputs[0])
        text_feat = model.encode_text_itc(inputs[1], inputs[2])
        b = image_feat.shape[0]
        all_feats = tuple(gather_across_processes(x.detach()) for x in (image_feat, text_feat))
        all_inputs = tuple(gather_across_processes(x) for x in inputs) if gather_inputs else None
        if self.gather_batch:
            keys = all_feats
            positives = _rank() * b + torch.arange(b, device=image_feat.device)
        else:
            keys = (image_feat, text_feat)
            positives = torch.arange(b, device=image_feat.device)
        sims = itc_similarities(
            image_feat, text_feat, *keys, queue.image_queue, queue.text_queue, temp
        )
        loss = itc_loss(*sims, positives)
        negatives = None
        if with_negatives:
            if self.gather_batch:
                negatives = self._hard_negatives_gathered(model, b, all_feats, all_inputs)
            else:
                negatives = self._hard_negatives(model, sims, inputs)
        queued = all_inputs if queue.keep_inputs else (None, None, None)
        queue.enqueue(*all_feats, *queued)
        return loss, negatives

    @torch.no_grad()
    def _hard_negatives(self, model, sims, inputs, generator=None, rows=slice(None)):
        """Draw the ITM negatives among ``inputs`` (the batch keys of ``sims``) and the filled
        queue entries, from the rows ``rows`` of the weights (see losses)."""
        queue = model.queue
        images, ids, mask = inputs
        if queue.keep_inputs:
            q_images, q_ids, q_mask = queue.filled_inputs()
            images = torch.cat([images, q_images.to(images.dtype)])
            ids, mask = torch.cat([ids, q_ids]), torch.cat([mask, q_mask])
        positives = torch.arange(sims[0].shape[0], device=sims[0].device)
        weights = hard_negative_weights(*sims, images.shape[0], positives)
        neg_image, neg_text = sample_hard_negatives(*weights, generator=generator)
        neg_image, neg_text = neg_image[rows], neg_text[rows]
        return ITMNegatives(images[neg_image], ids[neg_text], mask[neg_text])

    @torch.no_grad()
    def _hard_negatives_gathered(self, model, b, all_feats, all_inputs) -> ITMNegatives:
        """Negatives drawn for every process's pairs with one shared generator; this process
        keeps the rows of its own pairs."""
        queue, temp = model.queue, model.temp.detach()
        sims = itc_similarities(*all_feats, *all_feats, queue.image_queue, queue.text_queue, temp)
        generator = _shared_generator(sims[0].device)
        rows = slice(_rank() * b, (_rank() + 1) * b)
        return self._hard_negatives(model, sims, all_inputs, generator, rows)

    # -- ITM -----------------------------------------------------------------------------------
    def itm_hard(self, model: "FIBERCoarse", batch: Dict[str, Tensor], neg: ITMNegatives) -> Tensor:
        """ITM over the B matches, B (image, negative text) and B (negative image, text) pairs."""
        images, ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
        length = max(ids.shape[1], neg.input_ids.shape[1])
        ids, neg_ids = (
            F.pad(x, (0, length - x.shape[1]), value=model.pad_token_id)
            for x in (ids, neg.input_ids)
        )
        mask, neg_mask = (F.pad(x, (0, length - x.shape[1])) for x in (mask, neg.attention_mask))
        logits = model.itm_logits(
            torch.cat([images, images, neg.images.to(images.dtype)]),
            torch.cat([ids, neg_ids, ids]),
            torch.cat([mask, neg_mask, mask]),
        )
        return F.cross_entropy(logits, itm_labels(images.shape[0], logits.device))

    def itm_random(self, model: "FIBERCoarse", batch: Dict[str, Tensor]) -> Tensor:
        """ITM without ITC (official ``compute_itm``): half of the pairs, at random, get another
        image. Officially that image is drawn from the dataset (``draw_false_image``); here it is
        another image of the batch, uniformly."""
        images = batch["images"]
        b = images.shape[0]
        if b < 2:
            raise ValueError("ITM without ITC draws negatives from the batch: use a batch >= 2")
        pos = b // 2
        labels = torch.cat([torch.ones(pos), torch.zeros(b - pos)]).long().to(images.device)
        labels = labels[torch.randperm(b, device=images.device)]
        other = (
            torch.arange(b, device=images.device) + torch.randint(1, b, (b,), device=images.device)
        ) % b
        chosen = torch.where(labels.bool(), torch.arange(b, device=images.device), other)
        logits = model.itm_logits(images[chosen], batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(logits, labels)
