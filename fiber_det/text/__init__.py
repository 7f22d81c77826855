"""Text side of the data pipeline: tokenizer loading, prompts, span -> token maps, chunking.

Tokenisation happens in the data mappers and the predictor, never inside the model.
"""

from .captions import EncodedCaptions, encode_captions, mask_tokens_for_mlm, special_token_mask
from .noun_phrases import find_noun_phrases
from .od_to_grounding import (
    SampledPrompt,
    count_name_tokens,
    full_category_prompt,
    num_negatives_from_control,
    sampled_category_prompt,
)
from .prompts import (
    Prompt,
    build_detection_prompt,
    chunk_names,
    clean_name,
    span_tokens,
    spans_to_positive_map,
    vocabulary_prompts,
)
from .spans import is_valid_span, span_text, swap_left_right
from .tokenizer import TokenizedPrompts, build_offline_tokenizer, load_tokenizer, tokenize_prompts

__all__ = [
    "EncodedCaptions",
    "Prompt",
    "SampledPrompt",
    "TokenizedPrompts",
    "build_detection_prompt",
    "build_offline_tokenizer",
    "chunk_names",
    "clean_name",
    "count_name_tokens",
    "find_noun_phrases",
    "encode_captions",
    "full_category_prompt",
    "is_valid_span",
    "load_tokenizer",
    "mask_tokens_for_mlm",
    "num_negatives_from_control",
    "sampled_category_prompt",
    "span_text",
    "special_token_mask",
    "span_tokens",
    "spans_to_positive_map",
    "swap_left_right",
    "tokenize_prompts",
    "vocabulary_prompts",
]
