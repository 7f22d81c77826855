"""Detection prompts from category names, spans to token maps, and vocabulary chunking.

Official rules (``microsoft/FIBER`` ``engine/inference.py``: ``clean_name``,
``create_queries_and_maps``, ``create_positive_dict``):

* a name is cleaned by removing a parenthesised part, ``_`` -> space, double space -> single
  (``"bow_(weapon)"`` -> ``"bow "``: the trailing space is kept, as officially);
* names are joined with ``". "``; each name's character span is recorded;
* a span's tokens run from ``char_to_token(start)`` to ``char_to_token(end - 1)``, falling back
  to ``start + 1``, ``start + 2`` and ``end - 2``, ``end - 3`` when a character maps to no token
  (spaces, stripped characters); a span that still cannot be located has no tokens.

Deviation (a fix that changes nothing for ASCII text): when the span's last character is split
over several byte-level tokens (a character the BPE vocabulary lacks, e.g. CJK), all of them are
included; the official code keeps only the first, which decodes to a broken character.
"""

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = [
    "Prompt",
    "clean_name",
    "build_detection_prompt",
    "spans_to_positive_map",
    "chunk_names",
    "vocabulary_prompts",
]

Span = Tuple[int, int]


def clean_name(name: str) -> str:
    """Official category-name cleaning (see module docstring)."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


@dataclass
class Prompt:
    """A caption and, per label, its character spans.

    Attributes:
        caption (str): the text given to the model.
        spans (list[list[(int, int)]]): per label, [start, end) character spans in ``caption``.
        names (list[str]): per label, a display name (category or phrase text).
        label_ids (list[int]): per label, an id for the caller (e.g. contiguous category id).
    """

    caption: str
    spans: List[List[Span]]
    names: List[str] = field(default_factory=list)
    label_ids: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans)


def build_detection_prompt(
    names: Sequence[str],
    label_ids: Sequence[int] | None = None,
    separator: str = ". ",
    clean: bool = True,
    prefixes: Sequence[str] | None = None,
    suffixes: Sequence[str] | None = None,
) -> Prompt:
    """Join category names into a detection caption (official ``create_queries_and_maps``).

    Args:
        names: category names, in label order.
        label_ids: an id per name (default 0..n-1).
        separator: official ``". "``.
        clean: apply :func:`clean_name`.
        prefixes, suffixes: optional text around each name (ODinW "caption prompts"); only the
            name itself is the label's span.
    """
    if not names:
        raise ValueError("empty category list: a detection prompt needs at least one name")
    caption, spans, shown = "", [], []
    for i, raw in enumerate(names):
        name = clean_name(raw) if clean else raw
        if not name.strip():
            raise ValueError(f"category name {raw!r} is empty after cleaning")
        if prefixes is not None:
            caption += prefixes[i]
        start = len(caption)
        caption += name
        spans.append([(start, len(caption))])
        shown.append(name.strip())
        if suffixes is not None:
            caption += suffixes[i]
        if i != len(names) - 1:
            caption += separator
    ids = list(label_ids) if label_ids is not None else list(range(len(names)))
    return Prompt(caption=caption, spans=spans, names=shown, label_ids=ids)


def _char_to_token(encoding, batch_index: int, char: int) -> int | None:
    if char < 0:
        return None
    try:
        return encoding.char_to_token(batch_index, char)
    except (IndexError, ValueError, TypeError):
        return None


def span_tokens(encoding, span: Span, batch_index: int = 0) -> Tuple[int, int] | None:
    """First and last token of a character span, with the official fallbacks; None if lost."""
    beg, end = span
    first = _char_to_token(encoding, batch_index, beg)
    if first is None:
        first = _char_to_token(encoding, batch_index, beg + 1)
        if first is None:
            first = _char_to_token(encoding, batch_index, beg + 2)
    last = _char_to_token(encoding, batch_index, end - 1)
    if last is None:
        last = _char_to_token(encoding, batch_index, end - 2)
        if last is None:
            last = _char_to_token(encoding, batch_index, end - 3)
    if first is None or last is None:
        return None
    # A character outside the BPE vocabulary is split over several byte-level tokens, and
    # char_to_token gives only the first: extend to every token that starts inside the span.
    while True:
        nxt = _token_chars(encoding, batch_index, last + 1)
        if nxt is None or nxt.start >= end:
            break
        last += 1
    return first, last


def _token_chars(encoding, batch_index: int, token: int):
    try:
        return encoding.token_to_chars(batch_index, token)
    except (IndexError, ValueError, TypeError):
        return None


def spans_to_positive_map(
    encoding, spans: Sequence[Sequence[Span]], length: int, batch_index: int = 0
) -> torch.Tensor:
    """(num_labels, length) binary map: label i covers the tokens of all its spans.

    Args:
        encoding: a fast tokenizer's ``BatchEncoding`` of the caption.
        spans: per label, a list of [start, end) character spans.
        length: number of token columns (the padded prompt length).
        batch_index: which caption of ``encoding``.
    """
    pmap = torch.zeros(len(spans), length)
    for i, label_spans in enumerate(spans):
        for span in label_spans:
            found = span_tokens(encoding, span, batch_index)
            if found is None:
                continue
            first, last = found
            if first < length:
                pmap[i, first : min(last, length - 1) + 1] = 1.0
    return pmap


def chunk_names(
    names: Sequence[str],
    chunk_size: int = 40,
    tokenizer=None,
    max_tokens: int | None = None,
    separator: str = ". ",
) -> List[List[int]]:
    """Split a vocabulary into prompts; returns the name indices of each chunk.

    * ``chunk_size > 0``: fixed chunks of that many names, in order (official LVIS protocol:
      1203 names in 31 prompts of 40);
    * ``chunk_size <= 0``: greedy packing of consecutive names up to ``max_tokens`` tokens per
      prompt (special tokens included), which needs ``tokenizer``.

    A name that alone exceeds the budget is an error that names it. When ``max_tokens`` and
    ``tokenizer`` are given, fixed chunks are checked against the budget too.
    """
    if not names:
        raise ValueError("empty vocabulary")
    if chunk_size > 0:
        chunks = [
            list(range(i, min(i + chunk_size, len(names))))
            for i in range(0, len(names), chunk_size)
        ]
        if tokenizer is not None and max_tokens is not None:
            for c in chunks:
                n = _prompt_tokens(tokenizer, [names[i] for i in c], separator)
                if n > max_tokens:
                    raise ValueError(
                        f"a chunk of {len(c)} names needs {n} tokens > {max_tokens}: lower the "
                        "chunk "
                        "size (TEST.FIBER.CHUNK_SIZE) or use packed chunks (CHUNK_SIZE -1)"
                    )
        return chunks
    if tokenizer is None or max_tokens is None:
        raise ValueError("packed chunks need a tokenizer and max_tokens")
    chunks, current = [], []
    for i, name in enumerate(names):
        if _prompt_tokens(tokenizer, [name], separator) > max_tokens:
            raise ValueError(
                f"category name {name!r} alone needs more than {max_tokens} tokens and cannot be "
                "put in any prompt: shorten it"
            )
        if (
            current
            and _prompt_tokens(tokenizer, [names[j] for j in current + [i]], separator) > max_tokens
        ):
            chunks.append(current)
            current = []
        current.append(i)
    chunks.append(current)
    return chunks


def _prompt_tokens(tokenizer, names: Sequence[str], separator: str) -> int:
    caption = build_detection_prompt(names, separator=separator).caption
    return len(tokenizer(caption)["input_ids"])


def vocabulary_prompts(
    names: Sequence[str],
    label_ids: Optional[Sequence[int]] = None,
    *,
    tokenizer,
    max_tokens: int,
    chunk_size: int = -1,
    separator: str = ". ",
) -> List[Prompt]:
    """Evaluation prompts for a vocabulary, in label order (``TEST.FIBER.CHUNK_SIZE``).

    Follows the official ``create_queries_and_maps`` / ``TEST.CHUNKED_EVALUATION``
    (``microsoft/FIBER`` ``engine/inference.py``): names cleaned and joined with ``separator``.

    Args:
        names: category names in label order.
        label_ids: an id per name (default 0..n-1), copied to each prompt's ``label_ids``.
        tokenizer: the fast tokenizer (to check budgets).
        max_tokens: token budget of a prompt, special tokens included (``MAX_QUERY_LEN``).
        chunk_size: ``> 0`` fixed chunks of that many names (official LVIS: 40; 1 is one prompt
            per name, e.g. D3 descriptions); ``<= 0`` greedy packing up to ``max_tokens`` (one
            prompt when everything fits, e.g. COCO's 80 names).

    Raises:
        ValueError: a chunk or a name that does not fit, naming the fix.
    """
    ids = list(label_ids) if label_ids is not None else list(range(len(names)))
    if len(ids) != len(names):
        raise ValueError(f"{len(ids)} label ids for {len(names)} names")
    chunks = chunk_names(
        names, chunk_size, tokenizer=tokenizer, max_tokens=max_tokens, separator=separator
    )
    return [
        build_detection_prompt(
            [names[i] for i in c], label_ids=[ids[i] for i in c], separator=separator
        )
        for c in chunks
    ]
