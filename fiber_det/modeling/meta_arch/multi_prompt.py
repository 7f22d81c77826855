"""One image, many prompts: reuse the pre-fusion work of an early-fusion backbone.

In FIBER the first Swin blocks and RoBERTa layers see only their own modality (FIBER-B: 18 of 24
blocks, 6 of 12 layers), so for an image queried with P prompts (LVIS: 31 chunks of 40 names)

* the pre-fusion image part runs **once per image** instead of P times;
* the pre-fusion text part runs **once per distinct prompt** and is cached across images (a fixed
  vocabulary is tokenized into the same P prompts for every image);
* only the fused tail, the FPN and the head run per prompt, with up to ``prompt_batch_size``
  prompts batched against the shared image tokens (expanded views, no copies).

Every operation after the split is per-sample (LayerNorm, GroupNorm, per-sample pools), so the
results equal one forward per prompt (the official protocol) up to float summation order.
GLIP/FIBER recompute everything per chunk; Grounding DINO (mmdetection) reuses its image backbone
only because its fusion starts after it.
"""

from collections import OrderedDict
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor

from ..backbone.fiber_backbone import TextState

__all__ = [
    "TextStateCache",
    "merge_prompt_results",
    "split_prompts",
    "stack_text_states",
    "weights_version",
]


def weights_version(tensors: Iterable[Tensor]) -> Tuple:
    """A cheap token that changes whenever one of ``tensors`` is modified or replaced: each
    tensor's storage address and version counter (``Tensor._version``, bumped by every in-place
    operation: ``load_state_dict``, optimizer steps, ``with torch.no_grad(): p.mul_(2)``).

    Edits through ``p.data`` bypass the version counter, as they bypass autograd.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


class TextStateCache:
    """LRU cache of pre-fusion text states, keyed by the prompt's tokens and the dtype state.

    The entries are only valid for the weights they were computed with: :meth:`validate` is
    given the current :func:`weights_version` of the text encoder and drops every entry when it
    changed, so a load, an optimizer step or an in-place edit of the weights never serves a
    stale state. Used without autograd only (a cached state has no graph).
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._store: OrderedDict[Tuple, TextState] = OrderedDict()
        self._version: Tuple | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(input_ids: Tensor, attention_mask: Tensor) -> Tuple:
        """The real tokens, the padded length, the device and the autocast dtype (if any)."""
        n = int(attention_mask.sum())
        device = input_ids.device.type
        amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return (
            tuple(input_ids.reshape(-1)[:n].tolist()),
            int(input_ids.numel()),
            str(input_ids.device),
            amp,
        )

    def validate(self, version: Tuple) -> None:
        """Drop every entry if the weights' version changed since they were cached."""
        if version != self._version:
            self._store.clear()
            self._version = version

    def get(self, key: Tuple):
        state = self._store.get(key)
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return state

    def put(self, key: Tuple, state: TextState) -> None:
        if self.capacity <= 0:
            return
        self._store[key] = state
        self._store.move_to_end(key)
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def stack_text_states(states: Sequence[TextState]) -> TextState:
    """Concatenate (1, T_i, D) states into (P, max T, D), padding with masked zeros."""
    length = max(s.hidden.shape[1] for s in states)
    hidden, masks = [], []
    for s in states:
        pad = length - s.hidden.shape[1]
        hidden.append(torch.nn.functional.pad(s.hidden, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(s.mask, (0, pad), value=False))
    return TextState(hidden=torch.cat(hidden), mask=torch.cat(masks))


def split_prompts(x: Dict) -> List[Dict]:
    """The prompts of an input dict: ``x["prompts"]`` or the single prompt it carries."""
    prompts = x.get("prompts")
    if prompts:
        return list(prompts)
    return [{k: x[k] for k in ("input_ids", "attention_mask", "positive_map")}]


def merge_prompt_results(parts: Sequence[Instances], sizes: Sequence[int]) -> Instances:
    """Concatenate per-prompt Instances, offsetting labels by the label counts of earlier prompts,
    sorted by score."""
    offset, shifted = 0, []
    for inst, n in zip(parts, sizes):
        inst.pred_classes = inst.pred_classes + offset
        shifted.append(inst)
        offset += n
    merged = Instances.cat(shifted)
    order = merged.scores.argsort(descending=True, stable=True)
    return merged[order]
