"""Character spans in captions: validation, text of a span, and the MDETR left/right swap.

Spans are ``[start, end)`` character offsets into a caption, as in MDETR's annotations
(``tokens_positive``, ``tokens_positive_eval``) and in :class:`fiber_det.text.Prompt`.
"""

import re
from typing import List, Sequence, Tuple

__all__ = ["is_valid_span", "span_text", "swap_left_right"]

Span = Tuple[int, int]

_LEFT_RIGHT = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
_SWAP.update({"LEFT": "RIGHT", "RIGHT": "LEFT"})


def is_valid_span(span: Sequence[int], caption_length: int) -> bool:
    """True if ``span`` is two integers with ``0 <= start < end <= caption_length``."""
    if len(span) != 2:
        return False
    start, end = span
    if not (isinstance(start, int) and isinstance(end, int)):
        return False
    return 0 <= start < end <= caption_length


def span_text(caption: str, spans: Sequence[Span]) -> str:
    """The text of one label's spans, joined by a space (for logs and tests)."""
    return " ".join(caption[s:e] for s, e in spans)


def swap_left_right(
    caption: str, span_groups: Sequence[Sequence[Span]]
) -> Tuple[str, List[List[Span]]]:
    """Swap the words "left" and "right" in a caption and move the spans with the text.

    MDETR (Kamath et al. 2021, ``ashkamath/mdetr`` ``datasets/transforms.py``) swaps "left" and
    "right" in the caption when an image is flipped, with plain substring replacement that leaves
    the character spans pointing at the old offsets ("left" and "right" differ in length) and also
    rewrites words such as "bright". Here only whole words are swapped (case kept) and every span
    is remapped, so a span keeps covering the same words.

    Args:
        caption: the caption.
        span_groups: per label (or per box), a list of ``[start, end)`` spans.

    Returns:
        (new caption, span groups in the new caption).
    """
    pieces, segments, pos, shift = [], [], 0, 0
    for m in _LEFT_RIGHT.finditer(caption):
        pieces.append(caption[pos : m.start()])
        new_word = _SWAP[m.group(0)]
        pieces.append(new_word)
        segments.append((m.start(), m.end(), m.start() + shift, m.start() + shift + len(new_word)))
        shift += len(new_word) - len(m.group(0))
        pos = m.end()
    if not segments:
        return caption, [[tuple(s) for s in g] for g in span_groups]
    pieces.append(caption[pos:])

    def move(p: int) -> int:
        delta = 0
        for old_s, old_e, new_s, new_e in segments:
            if p <= old_s:
                break
            if p < old_e:  # inside a swapped word: keep the offset, clamped to the new word
                return min(new_s + (p - old_s), new_e)
            delta = new_e - old_e
        return p + delta

    moved = [[(move(s), move(e)) for s, e in group] for group in span_groups]
    return "".join(pieces), moved
