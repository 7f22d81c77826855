"""Two processes (gloo, DDP) with MODEL.COARSE.GATHER_BATCH give the losses and the ITC queue of
one process with the whole batch: the all-gathered queue update, ITC keys over every process's
batch and hard negatives drawn with one shared generator."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from .coarse_inputs import pairs, tiny_coarse_model

OPTS = ["MODEL.COARSE.GATHER_BATCH", True]
BATCH, STEPS = 4, 2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _run(model, batch, steps):
    """Losses of ``steps`` SGD steps on ``batch``; the model may be wrapped in DDP."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    history = []
    for _ in range(steps):
        losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def _worker(rank, world_size, init_file, out_file):
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        model = tiny_coarse_model(OPTS, seed=0).train()
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        part = BATCH // world_size
        batch = pairs(BATCH, seed=1)[rank * part : (rank + 1) * part]
        history = _run(ddp, batch, STEPS)
        gathered = [None] * world_size
        dist.all_gather_object(gathered, history)
        if rank == 0:
            queue = {k: v.clone() for k, v in model.queue.state_dict().items()}
            torch.save({"histories": gathered, "queue": queue}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    out_file = tmp_path / "out.pth"
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, start_method="fork"
    )
    two = torch.load(out_file, weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_coarse_model(OPTS, seed=0).train()
        single = _run(model, pairs(BATCH, seed=1), STEPS)
    finally:
        torch.set_num_threads(threads)
    for step in range(STEPS):
        for key, value in single[step].items():
            mean = sum(h[step][key] for h in two["histories"]) / 2  # what DDP optimises
            assert mean == pytest.approx(value, rel=1e-4), (step, key, mean, value)
    assert single[1]["loss_itc"] != pytest.approx(single[0]["loss_itc"], rel=1e-3)
    for key, value in model.queue.state_dict().items():
        diff = float((two["queue"][key].float() - value.float()).abs().max())
        assert diff < (1e-4 if key in ("image_queue", "text_queue") else 1e-6), (key, diff)
    assert int(two["queue"]["queue_total"]) == BATCH * STEPS
