"""Tokenizer loading (offline-first), an offline tokenizer builder, and prompt tokenisation.

The model never tokenizes: mappers and the predictor call :func:`tokenize_prompts` and pass
``input_ids`` / ``attention_mask`` tensors. Truncation is explicit and logged.
"""

import logging
import os
from pathlib import Path
from typing import Iterable, List, Sequence, Union

from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

__all__ = ["load_tokenizer", "build_offline_tokenizer", "tokenize_prompts", "TokenizedPrompts"]

logger = logging.getLogger(__name__)

ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def load_tokenizer(name_or_path: str):
    """Load a RoBERTa fast tokenizer from a folder or from the local Hugging Face cache.

    Never downloads: a Hub id that is not in the local cache raises an error that says how to get
    it (``huggingface-cli download roberta-base`` on a machine with network, or a local folder
    with ``vocab.json`` and ``merges.txt``).
    """
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
            raise FileNotFoundError(
                f"tokenizer folder {path} has neither tokenizer.json nor vocab.json + merges.txt"
            )
        return RobertaTokenizerFast.from_pretrained(str(path))
    try:
        return RobertaTokenizerFast.from_pretrained(name_or_path, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"tokenizer {name_or_path!r} is neither a folder nor in the local Hugging Face cache. "
            f"Download it once where there is network (`huggingface-cli download {name_or_path}`) "
            "or set MODEL.LANGUAGE.TOKENIZER to a folder with vocab.json and merges.txt"
        ) from e


def build_offline_tokenizer(
    texts: Iterable[str], out_dir: Union[str, Path], vocab_size: int = 1000
):
    """Train a small byte-level BPE tokenizer with RoBERTa's special tokens and save it.

    ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<mask>`` = 4, as in roberta-base, so
    the model's conventions (padding id 1, positions from 2) hold. Used by tests and the demo,
    where roberta-base cannot be downloaded.

    Returns:
        RobertaTokenizerFast loaded from ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=ROBERTA_SPECIAL_TOKENS
    )
    bpe.save_model(str(out_dir))
    return RobertaTokenizerFast.from_pretrained(str(out_dir))


class TokenizedPrompts:
    """Batch of tokenized prompts.

    Attributes:
        input_ids (Tensor): (B, L) long.
        attention_mask (Tensor): (B, L) long.
        encodings: the tokenizer's ``BatchEncoding`` (offsets, ``char_to_token``).
        truncated (list[bool]): whether each prompt lost tokens.
    """

    def __init__(self, encoding, truncated: List[bool]):
        self.encodings = encoding
        self.input_ids = encoding["input_ids"]
        self.attention_mask = encoding["attention_mask"]
        self.truncated = truncated

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_prompts(
    tokenizer,
    captions: Sequence[str],
    max_length: int = 256,
    pad_to_max: bool = True,
) -> TokenizedPrompts:
    """Tokenize captions for the model, padding to ``max_length`` (official) or the longest.

    An empty caption is an error. A caption longer than ``max_length`` tokens is truncated (the
    official behaviour) with a warning that names it and how many tokens were lost; spans in the
    lost part then have no tokens (see :func:`fiber_det.text.spans_to_positive_map`).
    """
    if isinstance(captions, str):
        captions = [captions]
    for i, c in enumerate(captions):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"prompt {i} is empty: give a caption or at least one category name")
    full_lengths = [
        len(ids) for ids in tokenizer(list(captions), add_special_tokens=True)["input_ids"]
    ]
    enc = tokenizer(
        list(captions),
        max_length=max_length,
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        return_tensors="pt",
        return_offsets_mapping=False,
    )
    truncated = [n > max_length for n in full_lengths]
    for c, n, t in zip(captions, full_lengths, truncated):
        if t:
            logger.warning(
                "prompt of %d tokens truncated to %d (MODEL.LANGUAGE.MAX_QUERY_LEN): %r. Names or "
                "phrases after the cut cannot be detected; split the vocabulary into chunks "
                "(fiber_det.text.chunk_names) instead.",
                n,
                max_length,
                c[:80] + ("..." if len(c) > 80 else ""),
            )
    return TokenizedPrompts(enc, truncated)
