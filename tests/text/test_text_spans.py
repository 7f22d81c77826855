"""Span helpers: validity, and MDETR's left/right swap with span bookkeeping."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fiber_det.text import is_valid_span, span_text, swap_left_right


def test_valid_spans():
    assert is_valid_span([0, 3], 3) and is_valid_span((2, 3), 3)
    assert not is_valid_span([0, 4], 3) and not is_valid_span([2, 2], 3)
    assert not is_valid_span([-1, 2], 3) and not is_valid_span([0, 1, 2], 3)
    assert not is_valid_span([0.5, 2], 3)


def test_swap_left_right_moves_spans_with_the_words():
    caption = "the left man holds a bright cup right of the Left dog"
    spans = [[(0, 12)], [(19, 31)], [(32, 37)], [(45, 53)]]
    new, moved = swap_left_right(caption, spans)
    assert new == "the right man holds a bright cup left of the Right dog"  # "bright" stays
    assert [span_text(new, s) for s in moved] == [
        "the right man",
        "a bright cup",
        "left",
        "Right dog",
    ]


def test_swap_without_left_or_right_is_identity():
    caption, spans = "a man with a dog", [[(0, 5)], [(11, 16)]]
    assert swap_left_right(caption, spans) == (caption, spans)


words = st.sampled_from(["left", "right", "Left", "man", "dog", "bright", "lefty", "a"])


@settings(max_examples=100, deadline=None)
@given(ws=st.lists(words, min_size=1, max_size=12), data=st.data())
def test_swap_is_an_involution_and_keeps_word_spans(ws, data):
    caption = " ".join(ws)
    starts = [sum(len(w) + 1 for w in ws[:k]) for k in range(len(ws))]
    i = data.draw(st.integers(0, len(ws) - 1))
    j = data.draw(st.integers(i, len(ws) - 1))
    span = [(starts[i], starts[j] + len(ws[j]))]
    new, (moved,) = swap_left_right(caption, [span])
    swap = {"left": "right", "right": "left", "Left": "Right"}
    assert span_text(new, moved) == " ".join(swap.get(w, w) for w in ws[i : j + 1])
    back, (again,) = swap_left_right(new, [moved])
    assert (back, again) == (caption, span)
