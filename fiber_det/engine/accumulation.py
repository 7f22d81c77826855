"""Gradient accumulation: one optimizer step over several forward passes.

The official coarse-grained recipes train with a batch of 4096 image-text pairs (1024 in retrieval
fine-tuning) on GPUs that hold 8 to 128 each: PyTorch Lightning's ``accumulate_grad_batches =
batch_size // (per_gpu_batchsize x GPUs)`` (microsoft/FIBER ``coarse_grained/run.py``) sums the
gradients of that many forward passes before each optimizer step. Here it is a detectron2 step
runner (:class:`AccumulatingTrainer`, a ``SimpleTrainer``) that the :class:`~.trainer.Trainer`
composes when ``SOLVER.FIBER.IMS_PER_DEVICE`` asks for it:

* one trainer iteration is one optimizer step (``MAX_ITER``, the LR schedule, checkpoints and
  ``--resume`` count optimizer steps, as Lightning's ``max_steps``); it reads
  :func:`accumulation_steps` micro-batches of ``IMS_PER_DEVICE`` images per process;
* each micro-batch's losses are divided by the number of micro-batches before ``backward`` (the
  gradient of the mean loss, as Lightning), and logged averaged over them;
* the model runs each micro-batch as a training step of its own: the ITC queue of the coarse model
  is updated after every micro-batch, as in the official accumulation;
* under DDP, gradients are all-reduced once per step (``no_sync`` for the earlier micro-batches);
  with AMP (GPU), one ``GradScaler`` scales every micro-batch and steps once.
"""

import time
from contextlib import nullcontext
from typing import Dict

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.parallel import DistributedDataParallel

__all__ = ["AccumulatingTrainer", "accumulation_steps"]


def accumulation_steps(ims_per_batch: int, ims_per_device: int, world_size: int) -> int:
    """Forward passes per optimizer step: ``ims_per_batch / (ims_per_device x world_size)``.

    Args:
        ims_per_batch: ``SOLVER.IMS_PER_BATCH``, images of one optimizer step (all processes).
        ims_per_device: ``SOLVER.FIBER.IMS_PER_DEVICE``; 0 means no accumulation.
        world_size: number of processes.
    Raises:
        ValueError: when the batch is not a whole number of forward passes.
    """
    if ims_per_device <= 0:
        return 1
    per_pass = ims_per_device * world_size
    if ims_per_batch % per_pass:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {ims_per_batch} is not a whole number of forward passes of "
            f"SOLVER.FIBER.IMS_PER_DEVICE {ims_per_device} x {world_size} processes: choose "
            "IMS_PER_DEVICE so that IMS_PER_DEVICE x processes divides IMS_PER_BATCH"
        )
    return ims_per_batch // per_pass


class AccumulatingTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step sums the gradients of ``accumulate_steps`` micro-batches.

    Args:
        model, data_loader, optimizer: as ``SimpleTrainer``; the loader yields micro-batches.
        accumulate_steps (int): micro-batches per optimizer step (>= 1).
        amp (bool): autocast to ``precision`` and scale the loss with ``grad_scaler`` (GPU).
        precision (torch.dtype): autocast dtype under AMP.
        grad_scaler: a ``torch.amp.GradScaler``; default one for CUDA when ``amp``.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        accumulate_steps: int,
        amp: bool = False,
        precision: torch.dtype = torch.float16,
        grad_scaler=None,
    ):
        super().__init__(model, data_loader, optimizer)
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.accumulate_steps = accumulate_steps
        self.amp = amp
        self.precision = precision
        if amp and grad_scaler is None:
            grad_scaler = torch.amp.GradScaler("cuda")
        self.grad_scaler = grad_scaler

    def _forward(self, data) -> Dict[str, torch.Tensor]:
        if not self.amp:
            return self.model(data)
        with torch.autocast("cuda", dtype=self.precision):
            return self.model(data)

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("[AccumulatingTrainer] the model was changed to eval mode")
        self.optimizer.zero_grad()
        k = self.accumulate_steps
        logged: Dict[str, torch.Tensor] = {}
        data_time = 0.0
        for i in range(k):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = i == k - 1
            sync = nullcontext()
            if not last and isinstance(self.model, DistributedDataParallel):
                sync = self.model.no_sync()
            with sync:
                loss_dict = self._forward(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                loss = sum(loss_dict.values()) / k
                (self.grad_scaler.scale(loss) if self.amp else loss).backward()
            for name, value in loss_dict.items():
                logged[name] = logged.get(name, 0.0) + value.detach() / k
        self.after_backward()
        self._write_metrics(logged, data_time)
        if self.amp:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self) -> Dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
