"""The coarse-grained model trains through the Trainer: the loss falls, --resume reproduces the
uninterrupted run, a new run from a checkpoint empties the ITC queue, gradient accumulation sums
the micro-batches (the queue updated after each)."""

import copy
import shutil

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from fiber_det.engine import Trainer
from fiber_det.engine.accumulation import AccumulatingTrainer, accumulation_steps
from fiber_det.utils.testing import get_config
from tests.modeling.coarse_inputs import pairs, tiny_coarse_model

from .coarse_data import write_colour_pairs
from .test_train import _train

NAME = "fiber_test_coarse_train_pairs"
MAX_ITER, PERIOD = 24, 12


@pytest.fixture(scope="module")
def coarse_pairs(tmp_path_factory):
    return write_colour_pairs(tmp_path_factory.mktemp("coarse_pairs"), NAME)


def coarse_train_cfg(tokenizer_dir, output_dir, *opts):
    return get_config(
        "tiny/coarse_tiny.yaml",
        [
            "MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir),
            "DATASETS.TRAIN", f"('{NAME}',)", "DATASETS.TEST", "()",
            "SOLVER.IMS_PER_BATCH", 4, "SOLVER.BASE_LR", 1e-3, "SOLVER.WEIGHT_DECAY", 0.01,
            "SOLVER.FIBER.PARAM_GROUPS", "official_coarse",
            "SOLVER.FIBER.LR_MULT_HEAD", 5.0, "SOLVER.FIBER.LR_MULT_CROSS_MODAL", 5.0,
            "SOLVER.FIBER.ADAMW_BETAS", (0.9, 0.98),
            "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.FIBER.WARMUP_FRACTION", 0.1,
            "SOLVER.WARMUP_FACTOR", 0.0, "SOLVER.MAX_ITER", MAX_ITER,
            "SOLVER.CHECKPOINT_PERIOD", PERIOD, "SOLVER.FIBER.LOG_PERIOD", 1,
            "OUTPUT_DIR", str(output_dir), "SEED", 0, "DATALOADER.NUM_WORKERS", 0,
            *opts,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory, tokenizer_dir, coarse_pairs):
    out = tmp_path_factory.mktemp("coarse_run")
    trainer, losses = _train(coarse_train_cfg(tokenizer_dir, out / "a"))
    return {"out": out, "losses": losses, "trainer": trainer}


def test_the_coarse_model_learns(coarse_run):
    losses = [coarse_run["losses"][i] for i in range(MAX_ITER)]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.85 * first, losses
    model = coarse_run["trainer"].model
    assert int(model.queue.queue_total) == 4 * MAX_ITER  # every batch went through the queue
    lrs = [g["lr"] for g in coarse_run["trainer"].optimizer.param_groups]
    assert max(lrs) < 1e-3 / MAX_ITER  # polynomial decay to 0


def test_resume_reproduces_the_uninterrupted_run(coarse_run, tokenizer_dir):
    src, dst = coarse_run["out"] / "a", coarse_run["out"] / "b"
    dst.mkdir()
    name = f"model_{PERIOD - 1:07d}.pth"
    shutil.copy(src / name, dst / name)
    (dst / "last_checkpoint").write_text(name)
    trainer, losses = _train(coarse_train_cfg(tokenizer_dir, dst), resume=True)
    assert trainer.start_iter == PERIOD and sorted(losses) == list(range(PERIOD, MAX_ITER))
    want = [coarse_run["losses"][i] for i in range(PERIOD, MAX_ITER)]
    assert [losses[i] for i in range(PERIOD, MAX_ITER)] == pytest.approx(want, rel=1e-5)


def test_a_new_run_from_a_checkpoint_starts_with_an_empty_queue(coarse_run, tokenizer_dir):
    weights = coarse_run["out"] / "a" / "model_final.pth"
    cfg = coarse_train_cfg(tokenizer_dir, coarse_run["out"] / "c", "MODEL.WEIGHTS", str(weights))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert int(trainer.model.queue.queue_total) == 0
    saved = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    assert int(saved["queue.queue_total"]) == 4 * MAX_ITER
    # the weights themselves were loaded
    w = "cross_modal_text_transform.weight"
    assert torch.equal(trainer.model.state_dict()[w], saved[w])


def test_accumulation_steps_from_the_per_device_batch():
    assert accumulation_steps(4096, 8, 64) == 8  # official pre-training: 64 GPUs x 8
    assert accumulation_steps(1024, 0, 8) == 1
    with pytest.raises(ValueError, match="IMS_PER_DEVICE"):
        accumulation_steps(4096, 24, 8)


def _list_loader(batches):
    return iter(batches)


def test_two_micro_batches_equal_one_batch_of_twice_the_size():
    """A loss that is a mean over samples: 2 x B accumulated is one step of 2B, exactly."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 3)

    class Regression(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, batch):
            xs, ys = zip(*batch)
            return {"loss": ((self.fc(torch.stack(xs)) - torch.stack(ys)) ** 2).mean()}

    data = list(zip(x, y))
    big, small = Regression(), None
    small = copy.deepcopy(big)
    one = SimpleTrainer(big, _list_loader([data]), torch.optim.SGD(big.parameters(), lr=0.1))
    acc = AccumulatingTrainer(
        small,
        _list_loader([data[:4], data[4:]]),
        torch.optim.SGD(small.parameters(), lr=0.1),
        accumulate_steps=2,
    )
    with EventStorage():
        one.run_step()
        acc.run_step()
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_accumulation_updates_the_itc_queue_after_each_micro_batch():
    """The coarse model under accumulation: gradients of (micro-batch 1 with the queue before it)
    + (micro-batch 2 with the queue holding micro-batch 1), halved, then one optimizer step."""
    model = tiny_coarse_model(seed=0).train()
    manual = copy.deepcopy(model)
    b1, b2 = pairs(2, seed=1), pairs(2, seed=2)
    acc = AccumulatingTrainer(
        model,
        _list_loader([b1, b2]),
        torch.optim.SGD(model.parameters(), lr=0.5),
        accumulate_steps=2,
    )
    opt = torch.optim.SGD(manual.parameters(), lr=0.5)
    torch.manual_seed(7)
    with EventStorage() as storage:
        acc.run_step()
    logged = storage.history("total_loss").latest()
    torch.manual_seed(7)
    total = 0.0
    for batch in (b1, b2):
        losses = manual(batch)
        (sum(losses.values()) / 2).backward()
        total += float(sum(losses.values()).detach()) / 2
    opt.step()
    assert logged == pytest.approx(total, rel=1e-6)
    assert int(model.queue.queue_total) == 4 and int(model.queue.queue_ptr) == 4
    for (name, a), b in zip(model.named_parameters(), manual.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), b in zip(model.queue.named_buffers(), manual.queue.buffers()):
        assert torch.equal(a, b), name


def test_resume_with_gradient_accumulation(coarse_pairs, tokenizer_dir, tmp_path):
    """Iterations count optimizer steps: a resumed run re-enters the stream at step x batch."""
    opts = ["SOLVER.FIBER.IMS_PER_DEVICE", 2, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2]
    trainer, losses = _train(coarse_train_cfg(tokenizer_dir, tmp_path / "a", *opts))
    assert trainer.accumulate_steps == 2 and int(trainer.model.queue.queue_total) == 16
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "model_0000001.pth", tmp_path / "b" / "model_0000001.pth")
    (tmp_path / "b" / "last_checkpoint").write_text("model_0000001.pth")
    resumed, again = _train(coarse_train_cfg(tokenizer_dir, tmp_path / "b", *opts), resume=True)
    assert resumed.start_iter == 2
    assert [again[i] for i in (2, 3)] == pytest.approx([losses[i] for i in (2, 3)], rel=1e-5)
