"""Noun phrases of a caption without a parser: the phrases FIBER grounds when only a caption is
given (``FIBERPredictor`` with a ``str`` prompt).

A phrase is a maximal run of words that contains no function word and no punctuation between its
words. The official demo (GLIP/FIBER) runs NLTK's chunker for this; a word list keeps the
package free of NLTK models, which cannot be downloaded at run time.
"""

import re
from typing import List, Tuple

__all__ = ["find_noun_phrases"]

# Words that end a phrase: articles and determiners (dropped), prepositions, conjunctions,
# pronouns, auxiliaries and position words ("left of"). Everything else is part of a phrase.
_FUNCTION_WORDS = frozenset(
    """a an the this that these those some any each every no its their his her my your our
    of in on at to from with without by for near above below under over behind beside besides
    between into onto next left right across along around through inside outside beneath beyond
    toward towards against among upon about after before during up down off out front top bottom
    middle center centre side and or but nor so while as than then also is are was were be been
    being am has have had do does did can could will would should may might must it they he she
    we you i there here which who whom whose what where when how not very""".split()
)
# -ing words end a phrase ("a man wearing a hat"), except these nouns.
_ING_NOUNS = frozenset(
    "building clothing ring king thing string ceiling painting drawing earring wing swing "
    "spring evening morning railing sibling ping".split()
)
# A word: letters and digits of any script ("naïve", "café", "Zürich"), with inner ' or -.
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_MIN_ING_WORD = 5  # "king", "ring", "sing" are too short to be an -ing verb form


def _ends_phrase(word: str) -> bool:
    w = word.lower()
    return w in _FUNCTION_WORDS or (
        w.endswith("ing") and len(w) >= _MIN_ING_WORD and w not in _ING_NOUNS
    )


def find_noun_phrases(caption: str) -> List[Tuple[int, int]]:
    """Character spans ``[start, end)`` of the noun phrases of a caption (a heuristic).

    A phrase is a maximal run of words that contains no function word (article, preposition,
    conjunction, pronoun, auxiliary, position word, or a verb in -ing) and no punctuation between
    its words; articles are not part of the phrase. ``"the small red circle left of a blue
    square"`` gives ``"small red circle"`` and ``"blue square"``. Without any such run, the whole
    caption (stripped) is one phrase.
    """
    spans, start, end, last_end = [], None, None, 0
    for m in _WORD.finditer(caption):
        gap = caption[last_end : m.start()]
        if start is not None and (_ends_phrase(m.group()) or gap.strip()):
            spans.append((start, end))
            start = None
        if not _ends_phrase(m.group()):
            if start is None:
                start = m.start()
            end = m.end()
        last_end = m.end()
    if start is not None:
        spans.append((start, end))
    if not spans and caption.strip():
        s = len(caption) - len(caption.lstrip())
        spans.append((s, len(caption.rstrip())))
    return spans
