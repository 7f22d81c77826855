"""Two processes (gloo): records gathered on the main process give the single-process numbers."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fiber_det.evaluation import LVISEvaluator

from . import cases

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")


def _worker(rank, world_size, init_file, tmp_dir, out_file):
    from pathlib import Path

    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        case_dir = Path(tmp_dir) / f"rank{rank}"
        case_dir.mkdir()
        name, inputs, outputs = cases.lvis_case(case_dir)
        ev = LVISEvaluator(name, distributed=True, output_dir=str(case_dir / "out"))
        ev.reset()
        # the chunk records of image 2 land on different processes
        for i in range(rank, len(inputs), world_size):
            ev.process([inputs[i]], [outputs[i]])
        res = ev.evaluate()
        if rank == 0:
            torch.save(dict(res), out_file)
        elif res:
            raise RuntimeError(f"rank {rank} returned results {res}")
    finally:
        dist.destroy_process_group()


def test_two_process_gather_equals_single_process(tmp_path, run_online):
    out_file = tmp_path / "res.pth"
    # fork: the workers inherit the imported modules (spawning re-imports torch and detectron2)
    args = (2, str(tmp_path / "init"), str(tmp_path), str(out_file))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="fork")
    gathered = torch.load(out_file, weights_only=False)["bbox"]
    name, inputs, outputs = cases.lvis_case(tmp_path)
    single = run_online(LVISEvaluator(name, distributed=False), inputs, outputs)["bbox"]
    assert gathered["AP"] == pytest.approx(single["AP"]) and single["AP"] > 0
    assert gathered.keys() == single.keys()
    saved = torch.load(tmp_path / "rank0" / "out" / "instances_predictions.pth")
    assert sorted(r["image_id"] for r in saved) == [1, 2, 2]
