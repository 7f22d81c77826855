"""Prompts at the model boundary: empty prompts and prompts over the token budget."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from fiber_det.text import build_detection_prompt, spans_to_positive_map, tokenize_prompts


@pytest.mark.parametrize("caption", ["", "   "])
def test_empty_prompt_is_a_clear_error(tokenizer, caption):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        tokenize_prompts(tokenizer, [caption], max_length=64)
    with pytest.raises(ValueError, match="at least one name"):
        build_detection_prompt([])


def test_long_prompt_is_truncated_explicitly_with_a_warning(tokenizer, tiny_cfg, caplog):
    names = [f"red circle {i}" for i in range(40)]
    prompt = build_detection_prompt(names)
    with caplog.at_level(logging.WARNING, logger="fiber_det.text.tokenizer"):
        tok = tokenize_prompts(tokenizer, [prompt.caption, "blue square"], max_length=64)
    assert tok.truncated == [True, False]
    assert tok.input_ids.shape == (2, 64)
    assert tok.attention_mask[0].all() and tok.input_ids[0, -1].item() == tokenizer.eos_token_id
    messages = [r.getMessage() for r in caplog.records]
    assert any("truncated to 64" in m and "red circle 0" in m for m in messages)
    # names after the cut have no tokens; names before it keep theirs; the model runs
    pmap = spans_to_positive_map(tok.encodings, prompt.spans, 64)
    assert pmap[0].sum() > 0 and pmap[-1].sum() == 0
    model = build_model(tiny_cfg).eval()
    x = {
        "image": torch.rand(3, 64, 64) * 255,
        "input_ids": tok.input_ids[0],
        "attention_mask": tok.attention_mask[0],
        "positive_map": pmap,
    }
    with torch.no_grad():
        inst = model([x])[0]["instances"]
    assert (inst.pred_classes < len(names)).all()
