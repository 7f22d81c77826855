"""The tiny model trains on CPU: the loss falls, checkpoints are atomic, --resume is exact."""

import os
import shutil

import pytest
import torch
from detectron2.engine import HookBase

from fiber_det.engine import Trainer

MAX_ITER, PERIOD = 30, 10


class LossRecorder(HookBase):
    """Collect the logged total loss of every iteration."""

    def __init__(self):
        self.losses = {}

    def after_step(self):
        self.losses[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _train(cfg, resume=False):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    rec = LossRecorder()
    trainer.register_hooks([rec])
    trainer.train()
    return trainer, rec.losses


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer_dir, shapes_data):
    from fiber_det.utils.testing import get_config

    out = tmp_path_factory.mktemp("tiny_run")

    def cfg_for(output_dir):
        return get_config(
            "tiny/fiber_tiny_train.yaml",
            [
                "MODEL.LANGUAGE.TOKENIZER",
                str(tokenizer_dir),
                # detection and grounding data mixed, the grounding set copied twice
                "DATASETS.TRAIN",
                f"('{shapes_data['det']}', '{shapes_data['grounding']}')",
                "DATALOADER.FIBER.COPIES",
                "[1, 2]",
                "SOLVER.MAX_ITER",
                MAX_ITER,
                "SOLVER.CHECKPOINT_PERIOD",
                PERIOD,
                "SOLVER.FIBER.MODEL_EMA",
                0.9,
                "SOLVER.FIBER.WEIGHT_DECAY_SCHEDULE",
                True,
                "SOLVER.CLIP_GRADIENTS.ENABLED",
                True,
                "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                "full_model",
                "OUTPUT_DIR",
                str(output_dir),
            ],
        )

    trainer, losses = _train(cfg_for(out / "a"))
    return {"cfg_for": cfg_for, "out": out, "losses": losses, "trainer": trainer}


def test_loss_falls(tiny_run):
    losses = [tiny_run["losses"][i] for i in range(MAX_ITER)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_checkpoints_hold_model_optimizer_ema_and_iteration(tiny_run):
    out = tiny_run["out"] / "a"
    names = sorted(os.listdir(out))
    assert {"model_0000009.pth", "model_0000019.pth", "model_final.pth"} <= set(names)
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [n for n in names if n.endswith(".tmp")]
    mode = (out / "model_final.pth").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # not the 0600 of a temporary file
    ckpt = torch.load(out / "model_0000019.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 19 and ckpt["trainer"]["iteration"] == 19
    assert "optimizer" in ckpt["trainer"]["_trainer"]
    ema, model = ckpt["model_ema"], ckpt["model"]
    assert set(ema) == set(model) and not torch.equal(ema["head.bias0"], model["head.bias0"])
    assert (out / "metrics.json").is_file()


def test_a_crash_during_a_save_leaves_the_previous_checkpoint(tiny_run, monkeypatch):
    out = tiny_run["out"] / "a"
    ckpt = tiny_run["trainer"].checkpointer
    before = (out / "model_final.pth").read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_final")
    assert (out / "model_final.pth").read_bytes() == before
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_resume_continues_at_the_same_iteration_with_the_same_loss(tiny_run):
    """An interruption after iteration 19's checkpoint: --resume gives the uninterrupted run."""
    src, dst = tiny_run["out"] / "a", tiny_run["out"] / "b"
    dst.mkdir()
    shutil.copy(src / "model_0000019.pth", dst / "model_0000019.pth")
    (dst / "last_checkpoint").write_text("model_0000019.pth")
    trainer, losses = _train(tiny_run["cfg_for"](dst), resume=True)
    assert trainer.start_iter == 20 and sorted(losses) == list(range(20, MAX_ITER))
    want = [tiny_run["losses"][i] for i in range(20, MAX_ITER)]
    assert [losses[i] for i in range(20, MAX_ITER)] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_trainer_seeds_the_model_initialisation(train_cfg, tmp_path):
    """With SEED >= 0 a Trainer built outside train_net (no default_setup: the demo, a notebook)
    starts from the same weights every time, whatever the global RNGs held before."""

    def initial_weights(seed, rng_noise):
        torch.manual_seed(rng_noise)  # a different global RNG state each time
        cfg = train_cfg("SEED", seed, output_dir=tmp_path / f"out_{seed}_{rng_noise}")
        model = Trainer(cfg).model
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = initial_weights(3, 111), initial_weights(3, 222)
    assert torch.equal(a, b)
    assert not torch.equal(a, initial_weights(4, 111))


def test_auto_termination_stops_the_loop_through_its_hook(train_cfg, shapes_data, monkeypatch):
    """MetricMonitor ends detectron2's loop after PATIENCE evaluations below the best: the last
    weights are saved as model_final, the hooks' after_train still run, a resume does nothing."""
    values = iter([10.0, 9.0, 8.0, 7.0, 6.0])
    monkeypatch.setattr(
        Trainer, "test", classmethod(lambda cls, cfg, model: {"v": {"bbox": {"AP": next(values)}}})
    )
    cfg = train_cfg(
        "SOLVER.MAX_ITER", 20, "TEST.EVAL_PERIOD", 2, "DATASETS.TEST", f"('{shapes_data['det']}',)",
        "SOLVER.FIBER.AUTO_TERMINATE_PATIENCE", 2, "SOLVER.FIBER.MONITOR_METRIC", "bbox/AP",
    )  # fmt: skip
    trainer, losses = _train(cfg)
    # evaluations after iterations 1, 3, 5: best, worse, worse -> stop at 5
    assert trainer.iter == 5 and max(losses) == 4  # hooks after the evaluation skip iteration 5
    out = cfg.OUTPUT_DIR
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "model_best.pth"))
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert os.path.isfile(os.path.join(out, "metrics.json"))  # the writers' after_train ran
    again = Trainer(cfg)
    again.resume_or_load(resume=True)
    assert again.monitor.should_stop and again.train() is None


def test_a_step_drops_the_last_gradients_before_its_forward(train_cfg):
    """The gradients of the previous step are freed before the forward pass (not after it, as
    detectron2 does by default), so that they are not held beside the activations."""
    trainer = Trainer(train_cfg("SOLVER.MAX_ITER", 3))
    held = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: held.append(sum(p.grad is not None for p in m.parameters()))
    )
    trainer.train()
    assert len(held) == 3 and held == [0, 0, 0]
    # the steps did make gradients (so the check above could see them)
    assert sum(p.grad is not None for p in trainer.model.parameters()) > 0
