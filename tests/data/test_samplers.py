"""The training stream: official concatenation with copies, ratios, sharding, resumption."""

import random
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from fiber_det.data import (
    MixedTrainingSampler,
    NegativeBatchFilter,
    PositionedSampler,
    SeededMapDataset,
    build_train_sampler,
    few_shot_subset,
    load_training_set,
)


def _take(sampler, n):
    return list(islice(iter(sampler), n))


def test_concatenation_copies_each_dataset_a_whole_number_of_times():
    s = MixedTrainingSampler([3, 5], copies=[2, 1], seed=1, rank=0, world_size=1)
    assert s.pass_length == 11
    first_pass = [i for _, i in _take(s, 11)]
    counts = Counter(first_pass)
    assert all(counts[i] == 2 for i in range(3)) and all(counts[i] == 1 for i in range(3, 8))
    second = [i for _, i in _take(s, 22)[11:]]
    assert sorted(second) == sorted(first_pass) and second != first_pass  # a new order per pass


def test_ranks_split_the_single_process_stream():
    """Positions r, r + W, ...: the images of an iteration do not depend on the process count."""
    single = _take(MixedTrainingSampler([7, 4], seed=3, rank=0, world_size=1), 24)
    ranks = [_take(MixedTrainingSampler([7, 4], seed=3, rank=r, world_size=2), 12) for r in (0, 1)]
    for it in range(6):  # total batch 4 = 2 per rank
        one = single[4 * it : 4 * it + 4]
        two = ranks[0][2 * it : 2 * it + 2] + ranks[1][2 * it : 2 * it + 2]
        assert sorted(one) == sorted(two)


def test_resume_continues_the_stream():
    full = _take(MixedTrainingSampler([5, 9], seed=0, rank=1, world_size=2), 40)
    resumed = MixedTrainingSampler([5, 9], seed=0, rank=1, world_size=2)
    resumed.set_start_iter(7, batch_size_per_rank=2)  # 7 iterations x 2 images x 2 ranks
    assert _take(resumed, 26) == full[14:40]


def test_sampling_ratios_option():
    s = MixedTrainingSampler([10, 1000], ratios=[0.5, 0.5], seed=0, rank=0, world_size=1)
    idx = [i for _, i in _take(s, 4000)]
    small = sum(1 for i in idx if i < 10) / len(idx)
    assert 0.45 < small < 0.55  # the 10-image dataset is seen half of the time
    assert all(0 <= i < 1010 for i in idx)


def _ann(*cats):
    return {"annotations": [{"category_id": c} for c in cats]}


def test_few_shot_follows_the_official_greedy_rule():
    dicts = [_ann(0), _ann(0, 1), _ann(1), _ann(0), _ann(2), _ann(1, 2)]
    assert few_shot_subset(dicts, 1) == [dicts[0], dicts[1], dicts[4]]
    kept = few_shot_subset(dicts, 2)
    assert kept == [dicts[0], dicts[1], dicts[2], dicts[4], dicts[5]]
    shuffled = few_shot_subset(dicts, 1, seed=3)
    order = list(dicts)
    random.Random(3).shuffle(order)
    assert shuffled[0] is order[0]


def test_seeded_images_do_not_depend_on_the_global_rng():
    def mapper(d):
        return {"x": np.random.rand(), "y": random.random(), "z": torch.rand(1).item(), **d}

    ds = SeededMapDataset([{"i": 0}, {"i": 1}], mapper, seed=5)
    a = ds[(10, 1)]
    np.random.seed(123)
    random.seed(9)
    before = torch.random.get_rng_state()
    b = ds[(10, 1)]
    assert a == b and a["i"] == 1
    assert torch.equal(before, torch.random.get_rng_state())  # global state restored
    assert ds[(11, 1)]["x"] != a["x"]


def test_negative_batches_are_replaced():
    from detectron2.structures import Instances

    def batch(n_neg, n=4):
        return [
            {"instances": Instances((1, 1), gt_classes=torch.zeros(0 if i < n_neg else 1))}
            for i in range(n)
        ]

    loader = [batch(4), batch(1), batch(0), batch(2)]
    kept = list(NegativeBatchFilter(loader, 0.25))
    assert kept == [loader[1], loader[2]]  # all-negative and 2/4 > 0.25 replaced
    assert len(list(NegativeBatchFilter(loader, 1.0))) == 4


def test_training_set_copies_and_errors(train_cfg, shapes_data):
    cfg = train_cfg(
        "DATASETS.TRAIN",
        f"('{shapes_data['det']}', '{shapes_data['grounding']}')",
        "DATALOADER.FIBER.COPIES",
        "[1, 3]",
    )
    ts = load_training_set(cfg)
    assert [len(d) for d in ts.dicts] == [8, 8] and len(ts) == 32
    cfg.DATALOADER.FIBER.COPIES = [1]
    with pytest.raises(ValueError, match="one per dataset"):
        load_training_set(cfg)


def test_detectron2_samplers_as_resumable_position_streams():
    """TrainingSampler / RepeatFactorTrainingSampler through PositionedSampler: the rank's index
    stream numbered by global position, and a resume continues it exactly."""
    for make in (
        lambda: TrainingSampler(11, seed=4),
        lambda: RepeatFactorTrainingSampler(torch.tensor([1.0] * 8 + [3.5] * 3), seed=4),
    ):
        plain = [int(i) for i in islice(iter(make()), 30)]
        stream = _take(PositionedSampler(make(), rank=1, world_size=2), 30)
        assert [i for _, i in stream] == plain  # the wrapped sampler's own indices
        assert [p for p, _ in stream] == [2 * k + 1 for k in range(30)]  # rank 1 of 2
        resumed = PositionedSampler(make(), rank=1, world_size=2)
        resumed.set_start_iter(4, batch_size_per_rank=3)
        assert _take(resumed, 18) == stream[12:30]


def _with_sampler(cfg, name, *opts):
    cfg.merge_from_list(["DATALOADER.SAMPLER_TRAIN", name, *opts])
    return build_train_sampler(cfg, load_training_set(cfg), seed=3)


def test_sampler_train_option_selects_the_stream(train_cfg, shapes_data):
    both = f"('{shapes_data['det']}', '{shapes_data['grounding']}')"
    mixed = _with_sampler(train_cfg("DATASETS.TRAIN", both), "MixedTrainingSampler")
    assert isinstance(mixed, MixedTrainingSampler) and mixed.sizes == [8, 8]
    plain = _with_sampler(train_cfg("DATASETS.TRAIN", both), "TrainingSampler")
    assert isinstance(plain.sampler, TrainingSampler) and plain.sampler._size == 16
    rfs = _with_sampler(
        train_cfg(), "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", 4.0
    )
    assert isinstance(rfs.sampler, RepeatFactorTrainingSampler)
    # both categories are in every image (f = 1): LVIS repeat factor max(1, sqrt(t / f)) = 2
    assert torch.equal(rfs.sampler._int_part, torch.full((8,), 2.0))
    with pytest.raises(ValueError, match="need DATALOADER.SAMPLER_TRAIN MixedTrainingSampler"):
        _with_sampler(
            train_cfg("DATASETS.TRAIN", both, "DATALOADER.FIBER.COPIES", "[1, 2]"),
            "TrainingSampler",
        )
    with pytest.raises(ValueError, match="is not supported"):
        _with_sampler(train_cfg(), "InfiniteSampler")
