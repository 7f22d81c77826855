"""The noun-phrase heuristic used when a caption comes without phrase spans."""

import pytest

from fiber_det.text import find_noun_phrases


@pytest.mark.parametrize(
    "caption, phrases",
    [
        ("A man wearing a red hat, sitting on a bench.", ["man", "red hat", "bench"]),
        ("two dogs and a cat", ["two dogs", "cat"]),
        ("a building next to the big tree", ["building", "big tree"]),
        ("the", ["the"]),
        # words of any script are words: "naïve" and "café" are not split at their accents
        ("a naïve man near the café", ["naïve man", "café"]),
        ("Straße in Zürich, Ελλάδα", ["Straße", "Zürich", "Ελλάδα"]),
        ("a well-known dog's toy", ["well-known dog's toy"]),
    ],
)
def test_noun_phrase_heuristic(caption, phrases):
    assert [caption[s:e] for s, e in find_noun_phrases(caption)] == phrases
