"""Captions of image-text pairs as model inputs: fixed-length encoding and MLM masking.

Stage 1 of FIBER (coarse-grained pre-training, microsoft/FIBER ``coarse_grained/``) feeds each
caption as ``<s> tokens </s>`` padded with ``<pad>`` to ``max_text_len`` (official 40), truncated
from the right (the official ``tokenizer(text, padding="max_length", truncation=True, ...)`` in
``datasets/base_dataset.py``), and masks 15% of the tokens for MLM by the rules of transformers'
``DataCollatorForLanguageModeling`` (``datamodules/datamodule_base.py``). The collator masks a
whole batch; :func:`mask_tokens_for_mlm` masks one sample with the same rules and the same order of
random draws from the global torch generator, so that a data loader seeded per worker (detectron2)
makes it reproducible.
"""

from typing import List, NamedTuple, Sequence

import torch

__all__ = [
    "MLM_MASK_TOKEN_PROB",
    "MLM_RANDOM_TOKEN_PROB",
    "EncodedCaptions",
    "encode_captions",
    "mask_tokens_for_mlm",
    "special_token_mask",
]

# DataCollatorForLanguageModeling's defaults: of the tokens chosen for MLM, 80% become <mask>,
# 10% a random token, 10% stay as they are.
MLM_MASK_TOKEN_PROB = 0.8
MLM_RANDOM_TOKEN_PROB = 0.1
IGNORE_INDEX = -100  # label of the tokens that are not predicted (torch cross_entropy default)


class EncodedCaptions(NamedTuple):
    """Captions encoded to a fixed length.

    Attributes:
        input_ids (Tensor): (K, L) int64, ``<s> ... </s>`` then the pad id.
        attention_mask (Tensor): (K, L) int64, 1 on the real tokens.
        num_tokens (list[int]): tokens of each caption before truncation, special tokens included.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    num_tokens: List[int]

    def truncated(self, max_length: int) -> List[bool]:
        return [n > max_length for n in self.num_tokens]


def encode_captions(tokenizer, captions: Sequence[str], max_length: int) -> EncodedCaptions:
    """Encode captions as ``tokenizer(c, padding="max_length", truncation=True, max_length=L)``.

    One tokenizer call without truncation gives the full lengths (so the caller can count the
    truncated captions); the tokens are then cut to ``max_length - 2`` from the right, which is what
    the tokenizer's truncation does for a single sequence.

    Args:
        tokenizer: a RoBERTa-style tokenizer (``cls_token_id``, ``sep_token_id``, ``pad_token_id``).
        captions: K strings.
        max_length: L, special tokens included (``INPUT.COARSE.MAX_TEXT_LEN``).
    """
    if max_length < 3:
        raise ValueError(f"INPUT.COARSE.MAX_TEXT_LEN must be at least 3, got {max_length}")
    pieces = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    input_ids = torch.full((len(pieces), max_length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pieces), max_length), dtype=torch.long)
    budget = max_length - 2
    for i, ids in enumerate(pieces):
        kept = [tokenizer.cls_token_id, *ids[:budget], tokenizer.sep_token_id]
        input_ids[i, : len(kept)] = torch.as_tensor(kept, dtype=torch.long)
        attention_mask[i, : len(kept)] = 1
    return EncodedCaptions(input_ids, attention_mask, [len(ids) + 2 for ids in pieces])


def special_token_mask(input_ids: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """Bool tensor shaped like ``input_ids``: True on special and pad tokens (never masked)."""
    return torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype))


def mask_tokens_for_mlm(
    input_ids: torch.Tensor,
    *,
    special_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
):
    """Mask one caption for MLM exactly as ``DataCollatorForLanguageModeling`` masks a batch row.

    Each non-special token is chosen with probability ``mlm_probability``; a chosen token becomes
    ``<mask>`` with probability 0.8, else a uniformly random id of ``[0, vocab_size)`` with
    probability 0.5 (10% overall; the random id may be any token, as in the collator), else stays.
    The random draws (bernoulli, bernoulli, bernoulli, randint, from the global torch generator)
    are the collator's, in its order: with the same seed, the result equals the collator's on a
    batch of this one sample.

    Args:
        input_ids: (L,) int64.
        special_mask: (L,) bool, True where a token may not be chosen (:func:`special_token_mask`).
        mask_token_id: id of ``<mask>``.
        vocab_size: ``len(tokenizer)`` (random replacements are drawn from it).
        mlm_probability: ``INPUT.COARSE.MLM_PROB`` (official 0.15).

    Returns:
        (mlm_input_ids, mlm_labels): (L,) int64 each; labels are the original ids at the chosen
        positions and -100 elsewhere.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"INPUT.COARSE.MLM_PROB must be in [0, 1], got {mlm_probability}")
    labels = input_ids.clone()
    inputs = input_ids.clone()
    probability = torch.full(labels.shape, float(mlm_probability))
    probability.masked_fill_(special_mask, 0.0)
    chosen = torch.bernoulli(probability).bool()
    labels[~chosen] = IGNORE_INDEX
    replaced = torch.bernoulli(torch.full(labels.shape, MLM_MASK_TOKEN_PROB)).bool() & chosen
    inputs[replaced] = mask_token_id
    random_share = MLM_RANDOM_TOKEN_PROB / (1.0 - MLM_MASK_TOKEN_PROB)
    randomized = torch.bernoulli(torch.full(labels.shape, random_share)).bool()
    randomized &= chosen & ~replaced
    random_ids = torch.randint(vocab_size, labels.shape, dtype=torch.long)
    inputs[randomized] = random_ids[randomized]
    return inputs, labels
