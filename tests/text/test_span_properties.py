"""Property tests (hypothesis) of the span -> token mapping on random names and captions."""

import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fiber_det.text import build_detection_prompt, spans_to_positive_map, tokenize_prompts

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Words mix the tokenizer's vocabulary with unseen letters, digits, accents and CJK characters
# (byte-level BPE: unseen characters become several byte tokens).
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüßøñ中猫"
_KNOWN = ["dog", "cat", "person", "red", "traffic", "light", "hydrant", "car", "man", "woman"]
word = st.one_of(st.sampled_from(_KNOWN), st.text(alphabet=_LETTERS, min_size=1, max_size=8))
# A name: words joined by a space or a hyphen (never starting or ending with punctuation, which
# the byte-level pre-tokenizer would merge with the ". " separator).
name = st.builds(
    lambda ws, seps: "".join(w + s for w, s in zip(ws, seps)) + ws[-1],
    st.lists(word, min_size=1, max_size=3),
    st.lists(st.sampled_from([" ", "-"]), min_size=2, max_size=2),
).map(lambda n: n)


def _decode_rows(tokenizer, tok, pmap):
    ids = tok.input_ids[0].tolist()
    return [tokenizer.decode([i for i, on in zip(ids, row.tolist()) if on]).strip() for row in pmap]


@SETTINGS
@given(names=st.lists(name, min_size=1, max_size=8))
def test_every_category_name_decodes_back(tokenizer, names):
    prompt = build_detection_prompt(names, clean=False)
    tok = tokenize_prompts(tokenizer, [prompt.caption], max_length=512, pad_to_max=False)
    assert not tok.truncated[0]
    pmap = spans_to_positive_map(tok.encodings, prompt.spans, tok.input_ids.shape[1])
    assert _decode_rows(tokenizer, tok, pmap) == [n.strip() for n in names]


@SETTINGS
@given(words=st.lists(word, min_size=1, max_size=20), data=st.data())
def test_word_aligned_spans_of_a_caption_decode_back(tokenizer, words, data):
    caption, starts = "", []
    for w in words:
        starts.append(len(caption) + (1 if caption else 0))
        caption += (" " if caption else "") + w
    i = data.draw(st.integers(0, len(words) - 1))
    j = data.draw(st.integers(i, len(words) - 1))
    span = (starts[i], starts[j] + len(words[j]))
    tok = tokenize_prompts(tokenizer, [caption], max_length=512, pad_to_max=False)
    pmap = spans_to_positive_map(tok.encodings, [[span]], tok.input_ids.shape[1])
    assert _decode_rows(tokenizer, tok, pmap) == [caption[span[0] : span[1]]]


@SETTINGS
@given(caption=st.text(alphabet=_LETTERS + "  .,", min_size=1, max_size=60), data=st.data())
def test_any_span_between_visible_characters_is_covered(tokenizer, caption, data):
    visible = [k for k, c in enumerate(caption) if not c.isspace()]
    if not visible:
        return
    start = data.draw(st.sampled_from(visible))
    end = data.draw(st.sampled_from([k + 1 for k in visible if k >= start]))
    tok = tokenize_prompts(tokenizer, [caption], max_length=512, pad_to_max=False)
    pmap = spans_to_positive_map(tok.encodings, [[(start, end)]], tok.input_ids.shape[1])
    (decoded,) = _decode_rows(tokenizer, tok, pmap)
    assert caption[start:end] in decoded  # whole tokens: the span, maybe a little more


@SETTINGS
@given(names=st.lists(name, min_size=3, max_size=12), max_length=st.integers(4, 24))
def test_truncation_is_never_silent(tokenizer, names, max_length, caplog):
    prompt = build_detection_prompt(names, clean=False)
    full = len(tokenizer(prompt.caption)["input_ids"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tok = tokenize_prompts(tokenizer, [prompt.caption], max_length=max_length)
    assert tok.truncated[0] == (full > max_length)
    assert ("truncated" in caplog.text) == (full > max_length)
    assert tok.input_ids.shape[1] == max_length
    pmap = spans_to_positive_map(tok.encodings, prompt.spans, max_length)
    # tokens past the cut are never mapped: the padding / </s> columns stay empty
    kept = int(tok.attention_mask[0].sum())
    assert pmap[:, kept - 1 :].sum() == 0
