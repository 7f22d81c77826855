"""The ITC queue of the coarse-grained FIBER model (ALBEF's memory queue, with raw inputs).

ALBEF (Li et al., NeurIPS 2021) keeps the image and text embeddings of past batches as extra
negatives of the contrastive loss. FIBER's coarse-grained model (``microsoft/FIBER``
``coarse_grained/fiber/modules/fiber_module.py``, ``_dequeue_and_enqueue``) also keeps the raw
inputs of those entries (images, token ids, masks), so that the hard negatives of image-text
matching can be drawn from the queue as well as from the batch. Entries of every process are
all-gathered before they are enqueued, so all processes hold the same queue.

Memory: the raw-image queue holds up to ``size x 3 x S x S`` floats, 7.25 GB for FIBER-B (4096
entries of 384 x 384) in every process, and is part of the model's state_dict (a resumed run
continues with the same queue). It grows with the entries written (doubling, up to ``size``), so
that a model built for inference or evaluation does not pay for it, and one that enqueued a few
batches pays for those only.
"""

from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ITCQueue", "gather_across_processes", "world_size"]


def world_size() -> int:
    """Number of processes of the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_across_processes(x: Tensor, *, with_grad: bool = False) -> Tensor:
    """Concatenate ``x`` of every process along dim 0, in rank order (equal shapes required).

    Without ``with_grad`` the result carries no gradient (ALBEF's ``concat_all_gather``); with it,
    gradients flow back to each process's own part (``torch.distributed.nn.all_gather``).
    """
    if world_size() == 1:
        return x
    if with_grad:
        from torch.distributed.nn.functional import all_gather  # noqa: PLC0415  needs dist

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class ITCQueue(nn.Module):
    """Ring buffer of ``size`` ITC embeddings (image and text) and, optionally, their inputs.

    Buffers (official names): ``image_queue``, ``text_queue`` (D, size); ``image_input_queue``
    (size, 3, S, S), ``text_input_queue``, ``text_input_mask_queue`` (size, L) when inputs are
    kept; ``queue_ptr`` (next slot), ``queue_total`` (entries ever enqueued).

    Args:
        dim (int): embedding width D.
        size (int): number of entries (official 4096).
        image_size (int): S, side of the queued images.
        text_len (int): L, length of the queued token ids.
        keep_inputs (bool): also keep the raw inputs (hard negatives from the queue, official).
        normalize_init (bool): L2-normalise the initial random embeddings (ALBEF does; the
            official FIBER model does not: its initial queue is ``randn``, of norm ~sqrt(D)).
        pad_token_id (int): id used to pad queued texts to L.
    """

    def __init__(
        self,
        *,
        dim: int,
        size: int,
        image_size: int,
        text_len: int,
        keep_inputs: bool = True,
        normalize_init: bool = False,
        pad_token_id: int = 1,
    ):
        super().__init__()
        if size < 1:
            raise ValueError(f"MODEL.COARSE.QUEUE_SIZE must be >= 1, got {size}")
        self.size = size
        self.image_size = image_size
        self.text_len = text_len
        self.keep_inputs = keep_inputs
        self.normalize_init = normalize_init
        self.pad_token_id = pad_token_id
        self.register_buffer("image_queue", torch.empty(dim, size))
        self.register_buffer("text_queue", torch.empty(dim, size))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue_total", torch.zeros(1, dtype=torch.long))
        if keep_inputs:
            # Grows with the entries written (or to a checkpoint's): see the module docstring.
            self.register_buffer("image_input_queue", torch.empty(0, 3, image_size, image_size))
            self.register_buffer("text_input_queue", torch.empty(size, text_len, dtype=torch.long))
            self.register_buffer("text_input_mask_queue", torch.empty_like(self.text_input_queue))
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue, as a newly built official model (random embeddings, nothing filled).

        Call it when a checkpoint initialises a new training (fine-tuning) rather than resumes
        one: the official loader drops the queues of the checkpoints it starts from."""
        for buf in (self.image_queue, self.text_queue):
            buf.normal_()
            if self.normalize_init:
                buf.copy_(F.normalize(buf, dim=0))
        self.queue_ptr.zero_()
        self.queue_total.zero_()
        if self.keep_inputs:
            self.text_input_queue.fill_(self.pad_token_id)
            self.text_input_mask_queue.zero_()

    @property
    def num_filled(self) -> int:
        """Entries holding enqueued data: ``min(queue_total, size)``; they are the first ones."""
        return min(int(self.queue_total), self.size)

    def filled_inputs(self) -> Tuple[Tensor, Tensor, Tensor]:
        """(images (n, 3, S, S), input_ids (n, L), attention_mask (n, L)) of the filled entries."""
        if not self.keep_inputs:
            raise RuntimeError(
                "this queue keeps no inputs (MODEL.COARSE.HARD_NEGATIVES_FROM_QUEUE)"
            )
        n = min(self.num_filled, self.image_input_queue.shape[0])
        return (
            self.image_input_queue[:n],
            self.text_input_queue[:n],
            self.text_input_mask_queue[:n],
        )

    def pad_text(self, x: Tensor, value: int) -> Tensor:
        """(B, T) -> (B, L) padded with ``value`` (T <= L)."""
        if x.shape[1] > self.text_len:
            raise ValueError(
                f"text of {x.shape[1]} tokens does not fit the ITC queue "
                f"(INPUT.COARSE.MAX_TEXT_LEN {self.text_len}): truncate captions to "
                "MAX_TEXT_LEN in the mapper"
            )
        return F.pad(x, (0, self.text_len - x.shape[1]), value=value)

    @torch.no_grad()
    def enqueue(
        self,
        image_feat: Tensor,
        text_feat: Tensor,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> None:
        """Write a batch (already gathered from every process) at ``queue_ptr``, wrapping around.

        Args:
            image_feat, text_feat (Tensor): (N, D) embeddings.
            images (Tensor): (N, 3, S, S); input_ids, attention_mask (Tensor): (N, T), T <= L.
                Required when the queue keeps inputs.
        """
        n = image_feat.shape[0]
        if n > self.size:
            raise ValueError(
                f"a batch of {n} pairs (all processes) does not fit an ITC queue of {self.size}: "
                "raise MODEL.COARSE.QUEUE_SIZE or lower the batch"
            )
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=self.image_queue.device)) % self.size
        self.image_queue[:, slots] = image_feat.detach().t().to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feat.detach().t().to(self.text_queue.dtype)
        if self.keep_inputs:
            if images is None or input_ids is None or attention_mask is None:
                raise ValueError("this ITC queue keeps the inputs: pass images, ids and masks")
            self._grow_images(int(slots.max()) + 1, images.dtype)
            self.image_input_queue[slots] = images.detach().to(self.image_input_queue.dtype)
            self.text_input_queue[slots] = self.pad_text(input_ids, self.pad_token_id)
            self.text_input_mask_queue[slots] = self.pad_text(attention_mask, 0)
        self.queue_ptr[0] = (ptr + n) % self.size
        self.queue_total[0] += n

    def _grow_images(self, rows: int, dtype: torch.dtype) -> None:
        """Make the raw-image queue hold at least ``rows`` entries (doubling, at most ``size``)."""
        have = self.image_input_queue.shape[0]
        if rows <= have:
            return
        rows = min(self.size, max(rows, 2 * have))
        s = self.image_size
        grown = self.image_input_queue.new_zeros((rows, 3, s, s), dtype=dtype)
        grown[:have] = self.image_input_queue
        self.image_input_queue = grown

    def adopt_image_queue_shape(self, incoming: Tensor) -> None:
        """Size the raw-image queue like ``incoming`` from a checkpoint (which holds as many
        entries as had been written when it was saved); other shapes are left to the load to
        refuse."""
        s, n = self.image_size, incoming.shape[0]
        if self.keep_inputs and tuple(incoming.shape[1:]) == (3, s, s) and n <= self.size:
            self.image_input_queue = self.image_input_queue.new_empty((n, 3, s, s))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "image_input_queue" in state_dict:
            self.adopt_image_queue_shape(state_dict[prefix + "image_input_queue"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
