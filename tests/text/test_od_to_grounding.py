"""Detection annotations as training captions (official od -> grounding rules)."""

import random

import pytest

from fiber_det.text import (
    count_name_tokens,
    full_category_prompt,
    num_negatives_from_control,
    sampled_category_prompt,
    vocabulary_prompts,
)

NAMES = ["person", "bicycle", "car", "traffic_light", "fire hydrant", "stop sign", "dog", "cat"]


def _names_in(prompt):
    return [prompt.caption[s:e] for ((s, e),) in prompt.spans]


def test_full_prompt_lists_every_category_once_shuffled():
    rng = random.Random(0)
    orders = set()
    for _ in range(20):
        p = full_category_prompt(NAMES, shuffle=True, rng=rng)
        assert sorted(p.label_ids) == list(range(len(NAMES)))
        assert _names_in(p) == [NAMES[c].replace("_", " ") for c in p.label_ids]
        assert p.caption.count(". ") == len(NAMES) - 1
        orders.add(tuple(p.label_ids))
    assert len(orders) > 1
    fixed = full_category_prompt(NAMES, shuffle=False)
    assert fixed.caption.startswith("person. bicycle. car. traffic light. fire hydrant")


def test_sampled_prompt_keeps_all_positives_and_excludes_them_from_negatives():
    costs = [3] * len(NAMES)
    rng = random.Random(1)
    for _ in range(50):
        sp = sampled_category_prompt(
            NAMES, [2, 2, 6], name_tokens=costs, max_tokens=254, num_negatives=3, rng=rng
        )
        labels = sp.prompt.label_ids
        assert {2, 6} <= set(labels) and len(labels) == len(set(labels))
        assert 2 <= len(labels) <= 5 and not sp.dropped
        assert sp.num_tokens == 3 * len(labels) <= 254


def test_sampled_prompt_respects_the_budget_and_reports_dropped_positives():
    costs = [5, 5, 5, 5, 5, 5, 5, 5]
    rng = random.Random(2)
    for _ in range(50):
        sp = sampled_category_prompt(
            NAMES, [0, 1, 2, 3], name_tokens=costs, max_tokens=12, num_negatives=85, rng=rng
        )
        kept = [c for c in sp.prompt.label_ids if c in (0, 1, 2, 3)]
        assert len(kept) == 2 and sorted(kept + sp.dropped) == [0, 1, 2, 3]
        assert sp.num_tokens <= 12
        assert set(sp.prompt.label_ids) <= {0, 1, 2, 3}  # no room left for negatives


def test_negatives_stop_at_the_first_that_does_not_fit():
    costs = [1, 100, 1, 1, 1, 1, 1, 1]
    rng = random.Random(3)
    seen_long = False
    for _ in range(100):
        sp = sampled_category_prompt(NAMES, [0], name_tokens=costs, max_tokens=10, rng=rng)
        assert sp.num_tokens <= 10
        seen_long |= 1 in sp.prompt.label_ids
    assert not seen_long


def test_control_probabilities():
    rng = random.Random(4)
    assert {num_negatives_from_control((1, 0, 0, 0), 85, rng) for _ in range(10)} == {1}
    assert {num_negatives_from_control((0, 1, 0, 0), 85, rng) for _ in range(10)} == {0}
    assert {num_negatives_from_control((0, 0, 1, 0), 85, rng) for _ in range(10)} == {85}
    drawn = {num_negatives_from_control((0, 0, 0, 0.2), 5, rng) for _ in range(200)}
    assert drawn == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="CONTROL_PROB must have 4 values"):
        num_negatives_from_control((0.5, 0.5), 85)


def test_name_token_costs(tokenizer):
    costs = count_name_tokens(tokenizer, ["dog", "traffic_light", "bow_(weapon)"])
    assert costs[0] == len(tokenizer.tokenize("dog. "))
    assert costs[1] == len(tokenizer.tokenize("traffic light. "))
    assert costs[2] == len(tokenizer.tokenize("bow . "))


def test_vocabulary_prompts_fixed_and_packed(tokenizer):
    names = [f"dog {i}" for i in range(30)]
    fixed = vocabulary_prompts(names, tokenizer=tokenizer, max_tokens=256, chunk_size=7)
    assert [len(p) for p in fixed] == [7, 7, 7, 7, 2]
    assert [i for p in fixed for i in p.label_ids] == list(range(30))
    packed = vocabulary_prompts(names, tokenizer=tokenizer, max_tokens=32, chunk_size=-1)
    assert len(packed) > 1 and [i for p in packed for i in p.label_ids] == list(range(30))
    assert all(len(tokenizer(p.caption)["input_ids"]) <= 32 for p in packed)
    one = vocabulary_prompts(names[:3], [10, 11, 12], tokenizer=tokenizer, max_tokens=64)
    assert len(one) == 1 and one[0].label_ids == [10, 11, 12]
    with pytest.raises(ValueError, match="lower the chunk size"):
        vocabulary_prompts(names, tokenizer=tokenizer, max_tokens=16, chunk_size=10)
