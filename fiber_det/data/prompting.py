"""Prompt tokenisation with a cache, and the per-dataset vocabulary the mappers read.

Tokenising the same category prompt for every image of a dataset is wasteful: the
:class:`PromptEncoder` caches (input_ids, attention_mask, positive_map) per (caption, spans).
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog

from ..text import (
    build_detection_prompt,
    count_name_tokens,
    spans_to_positive_map,
    tokenize_prompts,
)

__all__ = ["DatasetVocabulary", "EncodedPrompt", "PromptEncoder", "dataset_vocabulary"]


@dataclass
class EncodedPrompt:
    """A tokenized prompt and its label -> token map.

    Attributes:
        input_ids (Tensor): (L,) long.
        attention_mask (Tensor): (L,) long.
        positive_map (Tensor): (num_labels, L) float, 1 where a label covers a token.
        label_ids (list[int]): per label, an id for the caller (e.g. contiguous category id).
        truncated (bool): the caption lost tokens to the length limit.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positive_map: torch.Tensor
    label_ids: List[int] = field(default_factory=list)
    truncated: bool = False

    def as_input(self) -> Dict[str, torch.Tensor]:
        """The model-input fields (CONTRACT.md section 2)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "positive_map": self.positive_map,
        }


class PromptEncoder:
    """Tokenize a caption and map character spans to tokens, with an LRU cache.

    Args:
        tokenizer: a fast (RoBERTa) tokenizer.
        max_length: ``MODEL.LANGUAGE.MAX_QUERY_LEN``; longer captions are truncated with a warning
            (:func:`fiber_det.text.tokenize_prompts`).
        pad_to_max: pad to ``max_length`` (official) or to the caption's length.
        cache_size: prompts kept in the cache.

    Cached tensors are shared between images: treat them as read-only.
    """

    def __init__(self, tokenizer, *, max_length: int, pad_to_max: bool, cache_size: int = 256):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_max = pad_to_max
        self.cache_size = cache_size
        self._cache: OrderedDict[Tuple, EncodedPrompt] = OrderedDict()

    def encode(
        self,
        caption: str,
        spans: Sequence[Sequence[Tuple[int, int]]],
        label_ids: Optional[Sequence[int]] = None,
        *,
        cache: bool = True,
    ) -> EncodedPrompt:
        """Tokenize ``caption``; row i of the positive map covers the tokens of ``spans[i]``."""
        key = None
        if cache:
            key = (caption, tuple(tuple(tuple(s) for s in group) for group in spans))
            key += (tuple(label_ids) if label_ids is not None else None,)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        tok = tokenize_prompts(
            self.tokenizer, [caption], max_length=self.max_length, pad_to_max=self.pad_to_max
        )
        length = tok.input_ids.shape[1]
        encoded = EncodedPrompt(
            input_ids=tok.input_ids[0],
            attention_mask=tok.attention_mask[0],
            positive_map=spans_to_positive_map(tok.encodings, spans, length),
            label_ids=list(label_ids) if label_ids is not None else list(range(len(spans))),
            truncated=tok.truncated[0],
        )
        if key is not None:
            self._cache[key] = encoded
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return encoded


@dataclass
class DatasetVocabulary:
    """What a mapper needs to know about a detection dataset to write its prompts.

    Attributes:
        names (list[str]): category names by contiguous id (``thing_classes``).
        dataset_id_to_contiguous (dict[int, int]): ``thing_dataset_id_to_contiguous_id``.
        train_prompt (str): "full" or "sampled" (see :mod:`fiber_det.text.od_to_grounding`).
        eval_chunk_size (int or None): per-dataset chunk size for evaluation prompts (D3: 1, one
            description per prompt); None uses ``TEST.FIBER.CHUNK_SIZE``.
    """

    names: List[str]
    dataset_id_to_contiguous: Dict[int, int] = field(default_factory=dict)
    train_prompt: str = "full"
    eval_chunk_size: Optional[int] = None
    _name_tokens: Optional[List[int]] = None
    _full_prompt_tokens: Optional[int] = None

    def name_tokens(self, tokenizer, separator: str) -> List[int]:
        """Token cost of each name in a training caption (computed once)."""
        if self._name_tokens is None:
            self._name_tokens = count_name_tokens(tokenizer, self.names, separator)
        return self._name_tokens

    def full_prompt_tokens(self, tokenizer, separator: str) -> int:
        """Tokens (without special tokens) of the caption listing every name (computed once)."""
        if self._full_prompt_tokens is None:
            caption = build_detection_prompt(self.names, separator=separator).caption
            ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
            self._full_prompt_tokens = len(ids)
        return self._full_prompt_tokens


def dataset_vocabulary(name: str) -> DatasetVocabulary:
    """The vocabulary of a registered detection dataset, from its metadata.

    Raises:
        KeyError: the metadata has no ``thing_classes`` yet (the dataset is loaded lazily: load it
            with ``DatasetCatalog.get`` first, as ``build_fiber_*_loader`` do).
    """
    meta = MetadataCatalog.get(name)
    names = meta.get("thing_classes", None)
    if not names:
        raise KeyError(
            f"dataset {name!r} has no 'thing_classes' in its metadata: load it first "
            "(DatasetCatalog.get), e.g. through fiber_det.data.build_fiber_train_loader / "
            "build_fiber_test_loader, before mapping its images"
        )
    return DatasetVocabulary(
        names=list(names),
        dataset_id_to_contiguous=dict(meta.get("thing_dataset_id_to_contiguous_id", {}) or {}),
        train_prompt=meta.get("train_prompt", "full"),
        eval_chunk_size=meta.get("eval_prompt_chunk_size", None),
    )
