"""Two CPU processes (gloo) through detectron2's ``launch`` train the coarse model as one process
with the same total batch: the loader's shards, DDP, gradient accumulation, the all-gathered ITC
queue and batch (``MODEL.COARSE.GATHER_BATCH``) and the ITM hard negatives.

Both runs accumulate 2 forward passes per step (batch 4): one process reads micro-batches of 2,
each of two processes micro-batches of 1, so that the gathered micro-batch is in the same order
as the single process's (ranks take alternate stream positions) and the hard negatives, drawn
with one shared generator, are the same. MLM is off: under DDP each process averages its own
masked tokens, which is not the mean over the whole batch unless both have as many.
"""

import functools

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.engine import launch
from detectron2.utils import comm

from fiber_det.engine import Trainer

from .coarse_data import write_colour_pairs
from .test_coarse_train import NAME, coarse_train_cfg
from .test_train import LossRecorder

ITERS = 4
KEYS = ("loss_itc", "loss_itm")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class LossesByKey(LossRecorder):
    def after_step(self):
        if not comm.is_main_process():  # detectron2 gathers the metrics on the main process
            return
        storage = self.trainer.storage
        self.losses[self.trainer.iter] = {k: storage.history(k).latest() for k in KEYS}


def _main(tokenizer_dir, output_dir, per_device, out_file):
    torch.set_num_threads(1)
    cfg = coarse_train_cfg(
        tokenizer_dir, output_dir,
        "MODEL.COARSE.GATHER_BATCH", True, "MODEL.COARSE.MLM_LOSS_WEIGHT", 0.0,
        "SOLVER.FIBER.IMS_PER_DEVICE", per_device, "SOLVER.MAX_ITER", ITERS,
        "SOLVER.CHECKPOINT_PERIOD", 1000,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    rec = LossesByKey()
    trainer.register_hooks([rec])
    trainer.train()
    if comm.is_main_process():  # the logged losses are the mean over the processes
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        queue = {k: v.clone() for k, v in model.queue.state_dict().items()}
        torch.save({"losses": rec.losses, "queue": queue, "k": trainer.accumulate_steps}, out_file)


def test_two_processes_equal_one_process_with_the_same_total_batch(
    tmp_path, tokenizer_dir, monkeypatch
):
    write_colour_pairs(tmp_path / "pairs", NAME)
    # fork: the workers inherit the registered dataset and the imported modules
    monkeypatch.setattr(
        mp, "start_processes", functools.partial(mp.start_processes, start_method="fork")
    )
    runs = {}
    for procs, per_device in ((1, 2), (2, 1)):
        out = tmp_path / f"out{procs}.pth"
        args = (str(tokenizer_dir), str(tmp_path / f"run{procs}"), per_device, str(out))
        launch(_main, procs, dist_url=f"file://{tmp_path}/init{procs}", args=args)
        runs[procs] = torch.load(out, weights_only=True)
    one, two = runs[1], runs[2]
    assert one["k"] == two["k"] == 2
    assert sorted(one["losses"]) == sorted(two["losses"]) == list(range(ITERS))
    for it in range(ITERS):
        for key in KEYS:
            assert two["losses"][it][key] == pytest.approx(one["losses"][it][key], rel=1e-4), (
                it,
                key,
            )
    assert len({round(one["losses"][i]["loss_itc"], 4) for i in range(ITERS)}) == ITERS
    for key, value in one["queue"].items():
        diff = float((two["queue"][key].float() - value.float()).abs().max())
        assert diff < (1e-4 if key in ("image_queue", "text_queue") else 1e-6), (key, diff)
    assert int(two["queue"]["queue_total"]) == 4 * ITERS
