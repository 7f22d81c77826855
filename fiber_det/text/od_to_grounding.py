"""Detection annotations as grounding captions for training ("od -> grounding").

Follows microsoft/FIBER (inherited from microsoft/GLIP) ``data/datasets/od_to_grounding.py``:

* **full** (``convert_od_to_grounding_simple``; COCO and ODinW fine-tuning): the caption lists every
  category of the dataset, in a random order per image (unless shuffling is off), cleaned with
  :func:`fiber_det.text.clean_name` and joined with ``". "``;
* **sampled** (``check_for_positive_overflow`` + ``convert_object_detection_to_grounding_
  optimized_for_od``; Objects365 pre-training, LVIS fine-tuning): the positive categories of the
  image in random order, kept while their tokens fit the caption budget (official 254 = 256 minus
  ``<s>``/``</s>``), plus up to ``num_negatives`` (official 85) randomly sampled negative
  categories that still fit, all shuffled together. Positive categories that do not fit are
  returned so that the caller can drop (and count) their boxes.

The token cost of a name is that of ``clean_name(name) + ". "`` tokenized alone (official); names
cost a little less inside a caption, so the budget is conservative.

Control options (official ``generate_control_options_given_probabilities``): with probabilities
``(p_one_negative, p_one_positive, p_full, p_drop_positive)`` the number of sampled negatives is
1, 0, all (``num_negatives``) or uniform in 1..all. The official code asserts
``p_drop_positive == 0`` and always keeps all positives; here the fourth value is ignored. LVIS
fine-tuning uses ``(0, 0, 1, 0)``, the default.

Not implemented (off in every FIBER recipe): ``add_detection_prompt`` ("object detection : "
prefix), ``max_num_labels``, restricted negative lists, caption prompts (prefix/suffix per name)
during training.

Deviation (a fix): the official code samples negatives after dropping the positives that did not
fit, so a dropped positive category can come back as a *negative* label while its objects are
still in the image. Here every positive category of the image is excluded from the negatives.
"""

import random
from dataclasses import dataclass, field
from typing import List, Sequence

from .prompts import Prompt, build_detection_prompt, clean_name

__all__ = [
    "SampledPrompt",
    "count_name_tokens",
    "full_category_prompt",
    "num_negatives_from_control",
    "sampled_category_prompt",
]

# Official CONTROL_PROB used for LVIS fine-tuning: always "all positives + all sampled negatives".
DEFAULT_CONTROL_PROBS = (0.0, 0.0, 1.0, 0.0)


def count_name_tokens(tokenizer, names: Sequence[str], separator: str = ". ") -> List[int]:
    """Token cost of each name in a training caption: ``len(tokenize(clean_name(n) + sep))``."""
    return [len(tokenizer.tokenize(clean_name(n) + separator)) for n in names]


def full_category_prompt(
    names: Sequence[str],
    label_ids: Sequence[int] | None = None,
    *,
    shuffle: bool = True,
    separator: str = ". ",
    rng: random.Random | None = None,
) -> Prompt:
    """The whole category list as a caption (official ``convert_od_to_grounding_simple``).

    Args:
        names: category names, in contiguous id order.
        label_ids: an id per name (default: 0..n-1, the contiguous ids).
        shuffle: a new random order per call (official default for COCO / ODinW training).
        separator: official ``". "``.
        rng: random source (default: the ``random`` module, seeded by detectron2 per worker).

    Returns:
        Prompt whose ``label_ids`` give the category of each label, in caption order.
    """
    rng = rng or random
    ids = list(label_ids) if label_ids is not None else list(range(len(names)))
    order = list(range(len(names)))
    if shuffle:
        rng.shuffle(order)
    return build_detection_prompt(
        [names[i] for i in order], label_ids=[ids[i] for i in order], separator=separator
    )


def num_negatives_from_control(
    control_probs: Sequence[float], full_negative: int, rng: random.Random | None = None
) -> int:
    """Number of negatives to sample (official control options, see module docstring)."""
    if len(control_probs) != 4:
        raise ValueError(
            f"DATASETS.FIBER.CONTROL_PROB must have 4 values (one negative, one positive, full, "
            f"drop positive), got {list(control_probs)}"
        )
    rng = rng or random
    p_one_neg, p_one_pos, p_full = control_probs[0], control_probs[1], control_probs[2]
    r = rng.random()
    if r < p_one_neg:
        return 1
    if r < p_one_neg + p_one_pos:
        return 0
    if r < p_one_neg + p_one_pos + p_full:
        return full_negative
    return rng.randint(1, max(1, full_negative))


@dataclass
class SampledPrompt:
    """Result of :func:`sampled_category_prompt`.

    Attributes:
        prompt (Prompt): caption, spans and ``label_ids`` (category ids in caption order).
        dropped (list[int]): positive category ids that did not fit the budget.
        num_tokens (int): token cost of the caption (sum of the kept names' costs).
    """

    prompt: Prompt
    dropped: List[int] = field(default_factory=list)
    num_tokens: int = 0


def sampled_category_prompt(
    names: Sequence[str],
    positive_ids: Sequence[int],
    *,
    name_tokens: Sequence[int],
    max_tokens: int = 254,
    num_negatives: int = 85,
    control_probs: Sequence[float] = DEFAULT_CONTROL_PROBS,
    separator: str = ". ",
    rng: random.Random | None = None,
) -> SampledPrompt:
    """All positives that fit plus sampled negatives (Objects365 / LVIS training caption).

    Args:
        names: the dataset's category names, indexed by contiguous id.
        positive_ids: contiguous ids of the image's boxes (repeats allowed).
        name_tokens: per category, its token cost (:func:`count_name_tokens`).
        max_tokens: caption budget without special tokens (official 254).
        num_negatives: at most this many negatives are sampled (official ``RANDOM_SAMPLE_NEG``
            85).
        control_probs: official control probabilities (see module docstring).
        separator: official ``". "``.
        rng: random source (default: the ``random`` module).

    Returns:
        SampledPrompt. With no positive and no negative that fits, the caption falls back to the
        cheapest category alone, so that a caption is never empty.
    """
    rng = rng or random
    if len(name_tokens) != len(names):
        raise ValueError(f"name_tokens has {len(name_tokens)} entries for {len(names)} names")
    positives = sorted(set(int(c) for c in positive_ids))
    rng.shuffle(positives)
    kept, used = [], 0
    for c in positives:
        if used + name_tokens[c] > max_tokens:
            break  # official: the first positive that overflows ends the list
        kept.append(c)
        used += name_tokens[c]
    dropped = positives[len(kept) :]

    negatives = _sample_negatives(len(names), set(positives), num_negatives, control_probs, rng)
    budget = max_tokens - used
    screened = []
    for c in negatives:
        budget -= name_tokens[c]
        if budget <= 0:  # official pre-screen: stop at the first negative that does not fit
            break
        screened.append(c)
    labels = screened + kept
    if not labels:
        labels = [min(range(len(names)), key=lambda c: name_tokens[c])]
    rng.shuffle(labels)
    prompt = build_detection_prompt(
        [names[c] for c in labels], label_ids=labels, separator=separator
    )
    return SampledPrompt(
        prompt=prompt, dropped=dropped, num_tokens=sum(name_tokens[c] for c in labels)
    )


def _sample_negatives(
    num_categories: int,
    positives: set,
    num_negatives: int,
    control_probs: Sequence[float],
    rng,
) -> List[int]:
    full_negative = min(max(num_negatives, 0), num_categories)
    n = min(num_negatives_from_control(control_probs, full_negative, rng), num_categories)
    if n <= 0:
        return []
    # Official: draw n categories among all of them, then remove the positives.
    drawn = rng.sample(range(num_categories), n)
    negatives = [c for c in drawn if c not in positives]
    rng.shuffle(negatives)
    return negatives
