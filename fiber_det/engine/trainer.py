"""``Trainer``: FIBER training on detectron2's trainer base and hooks.

The trainer is a detectron2 ``TrainerBase`` (its hook protocol and loop) with the ``build_*``
class methods of ``DefaultTrainer`` (``build_model``, ``build_optimizer``,
``build_lr_scheduler``, ``build_train_loader``, ``build_test_loader``, ``build_evaluator``,
``test``) and a ``SimpleTrainer`` / ``AMPTrainer`` for the step, as ``DefaultTrainer`` composes
them. It does not derive from ``DefaultTrainer``, whose constructor wraps every model with GPU
``device_ids`` (so no CPU multi-process training) and without ``find_unused_parameters``.
Everything FIBER adds to the standard loop is a hook (:mod:`.hooks`):

* :class:`FIBERLRScheduler`: the official schedules and the weight-decay schedule;
* :class:`EMAHook`: model EMA, saved in checkpoints as ``model_ema`` (optionally used for eval);
* :class:`ReseedHook`: dropout / drop-path draws seeded per iteration, so ``--resume`` continues
  with the random draws of the uninterrupted run;
* :class:`MetricMonitor`: the ODinW plateau schedule, ``model_best`` and early termination.

Before the model is built, the config is completed (:func:`prepare_training_config`: epochs ->
iterations, scaling to the number of processes) and the RNGs are seeded from ``SEED``. Also from
the official recipes (microsoft/FIBER ``engine/trainer.py``, ``solver/``,
``tools/train_net.py`` / ``finetune.py``): the official AdamW parameter groups, gradient
clipping, the official freezes (:mod:`.freeze`), gradient accumulation
(:class:`~.accumulation.AccumulatingTrainer`, ``SOLVER.FIBER.IMS_PER_DEVICE``; the coarse-grained
recipes' batch of 4096), the mixed, resumable training stream
(:func:`fiber_det.data.build_fiber_train_loader`), atomic checkpoints (``FIBERCheckpointer``: any
weights format in ``MODEL.WEIGHTS``; with it empty, ``MODEL.SWIN.WEIGHTS`` /
``MODEL.LANGUAGE.WEIGHTS`` initialise the encoders; what was loaded is written to
``OUTPUT_DIR/initialization.txt``), AMP on GPU, logs with ``lr`` / ``lr_lang``.
"""

import itertools
import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import FIBERCheckpointer
from ..checkpoint.pretrained import load_pretrained_encoders
from ..data import (
    FIBERDatasetMapper,
    PairDatasetMapper,
    TrainingSet,
    build_fiber_test_loader,
    build_fiber_train_loader,
    load_training_set,
)
from ..evaluation import build_evaluator
from ..solver import build_fiber_lr_scheduler, build_fiber_optimizer
from ..utils.io import atomic_open
from .accumulation import AccumulatingTrainer, accumulation_steps
from .ema import ModelEMA
from .freeze import apply_training_freezes
from .hooks import (
    EMAHook,
    FIBERLRScheduler,
    FIBERMetricPrinter,
    MetricMonitor,
    ReseedHook,
    TrainingStopped,
)

__all__ = ["Trainer", "prepare_training_config", "resolve_training_schedule", "scale_to_world"]

logger = logging.getLogger(__name__)


def resolve_training_schedule(cfg, num_images: int):
    """Epoch-based keys -> iterations (official ``MAX_EPOCH`` / ``CHECKPOINT_PER_EPOCH``).

    ``MAX_ITER = MAX_EPOCH * num_images // IMS_PER_BATCH`` (``num_images`` counts the copies);
    ``CHECKPOINT_PERIOD`` / ``TEST.EVAL_PERIOD`` = that many epochs of iterations. Returns a
    new config when something changes.
    """
    f = cfg.SOLVER.FIBER
    if f.MAX_EPOCH <= 0 and f.CHECKPOINT_PER_EPOCH <= 0 and f.EVAL_PER_EPOCH <= 0:
        return cfg
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    batch = cfg.SOLVER.IMS_PER_BATCH
    per_epoch = max(1, num_images // batch)
    if f.MAX_EPOCH > 0:
        cfg.SOLVER.MAX_ITER = max(1, f.MAX_EPOCH * num_images // batch)
    if f.CHECKPOINT_PER_EPOCH > 0:
        cfg.SOLVER.CHECKPOINT_PERIOD = max(1, int(per_epoch * f.CHECKPOINT_PER_EPOCH))
    if f.EVAL_PER_EPOCH > 0:
        cfg.TEST.EVAL_PERIOD = max(1, int(per_epoch * f.EVAL_PER_EPOCH))
    logger.info(
        "%d training images, %d images per batch: %d iterations per epoch; MAX_ITER %d, "
        "CHECKPOINT_PERIOD %d, EVAL_PERIOD %d",
        num_images,
        batch,
        per_epoch,
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.CHECKPOINT_PERIOD,
        cfg.TEST.EVAL_PERIOD,
    )
    if frozen:
        cfg.freeze()
    return cfg


def scale_to_world(cfg, world_size: int):
    """detectron2's linear scaling for ``SOLVER.REFERENCE_WORLD_SIZE`` (0: off;
    ``DefaultTrainer.auto_scale_workers``), which also scales ``SOLVER.FIBER.LANG_LR`` and keeps
    fractional ``SOLVER.STEPS`` (milestones given as fractions of the run) as fractions."""
    old = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if old == 0 or old == world_size:
        return cfg
    steps = list(cfg.SOLVER.STEPS)
    out = DefaultTrainer.auto_scale_workers(cfg, world_size)
    frozen = out.is_frozen()
    out.defrost()
    scale = world_size / old
    out.SOLVER.STEPS = tuple(s if s < 1 else int(round(s / scale)) for s in steps)
    out.SOLVER.FIBER.LANG_LR = cfg.SOLVER.FIBER.LANG_LR * scale
    if frozen:
        out.freeze()
    return out


def _check_monitoring(cfg) -> None:
    f = cfg.SOLVER.FIBER
    if (f.USE_AUTOSTEP or f.AUTO_TERMINATE_PATIENCE > 0) and (
        cfg.TEST.EVAL_PERIOD <= 0 or not cfg.DATASETS.TEST
    ):
        raise ValueError(
            "SOLVER.FIBER.USE_AUTOSTEP / AUTO_TERMINATE_PATIENCE follow a validation metric: set "
            "DATASETS.TEST and TEST.EVAL_PERIOD (or SOLVER.FIBER.EVAL_PER_EPOCH)"
        )


def prepare_training_config(cfg, num_images: int, world_size: int):
    """The config a run trains with: epoch-based keys resolved for ``num_images`` training
    images (:func:`resolve_training_schedule`), scaled to ``world_size`` processes
    (:func:`scale_to_world`), monitoring keys checked."""
    cfg = scale_to_world(resolve_training_schedule(cfg, num_images), world_size)
    _check_monitoring(cfg)
    return cfg


def _use_amp(cfg) -> bool:
    if not cfg.SOLVER.AMP.ENABLED:
        return False
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        return True
    logger.warning("SOLVER.AMP.ENABLED needs a GPU: training in float32 on %s", cfg.MODEL.DEVICE)
    return False


def _accumulation_steps(cfg) -> int:
    """Forward passes per optimizer step (``SOLVER.FIBER.IMS_PER_DEVICE``, :mod:`.accumulation`)."""
    return accumulation_steps(
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.FIBER.IMS_PER_DEVICE, comm.get_world_size()
    )


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (DDP with ``broadcast_buffers=False`` syncs only the
    parameters; buffers drawn at random, such as the coarse model's initial ITC queue, differ
    across processes, which are seeded with SEED + rank)."""
    if comm.get_world_size() == 1:
        return
    for buf in module.buffers():
        torch.distributed.broadcast(buf, src=0)


def _distributed(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """DDP over the processes of ``launch`` (CPU processes too, which detectron2's
    ``create_ddp_model`` does not handle), with ``SOLVER.FIBER.FIND_UNUSED_PARAMETERS``; the
    buffers of rank 0 are given to every process."""
    if comm.get_world_size() == 1:
        return model
    _broadcast_buffers(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    return DistributedDataParallel(
        model,
        device_ids=None if on_cpu else [comm.get_local_rank()],
        broadcast_buffers=False,
        find_unused_parameters=cfg.SOLVER.FIBER.FIND_UNUSED_PARAMETERS,
    )


class Trainer(TrainerBase):
    """FIBER trainer (see module docstring). Usage as detectron2's ``DefaultTrainer``::

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    Attributes:
        cfg: the config trained with (after :func:`prepare_training_config`).
        model, optimizer, data_loader: those of the step runner (as ``DefaultTrainer``).
        scheduler, checkpointer, ema (ModelEMA or None), monitor (MetricMonitor).
        init_reports: what the initialisation loaded (written to ``initialization.txt``).
    """

    def __init__(self, cfg):
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        training_set = load_training_set(cfg)
        cfg = prepare_training_config(cfg, len(training_set), comm.get_world_size())
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        if cfg.SEED >= 0:
            # As detectron2's default_setup does (train_net.py calls it too), so that a Trainer
            # built anywhere else (the demo, a notebook) initialises the same model every time.
            seed_all_rng(cfg.SEED + comm.get_rank())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, training_set=training_set, seed=self.seed)
        model = _distributed(model, cfg)
        self.accumulate_steps = _accumulation_steps(cfg)
        if self.accumulate_steps > 1:
            self._trainer = AccumulatingTrainer(
                model,
                data_loader,
                optimizer,
                accumulate_steps=self.accumulate_steps,
                amp=_use_amp(cfg),
            )
        else:
            step_runner = AMPTrainer if _use_amp(cfg) else SimpleTrainer
            self._trainer = step_runner(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        decay = cfg.SOLVER.FIBER.MODEL_EMA
        self.ema = ModelEMA(model, decay) if decay > 0 else None
        checkpointables = {"trainer": weakref.proxy(self)}
        if self.ema is not None:
            checkpointables["model_ema"] = self.ema
        self.checkpointer = FIBERCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE,
            **checkpointables,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.init_reports: List = []
        self.register_hooks(self.build_hooks())

    # -- the step runner's objects, as DefaultTrainer exposes them ------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self):
        return self._trainer.data_loader

    def run_step(self):
        self._trainer.iter = self.iter
        # The last step's gradients are dropped before the forward pass, not after it as
        # detectron2's step runners do by default, so that they are not held beside the
        # activations: the same gradients, 0.8 GB less peak memory for FIBER-B at 2 x 512^2 on
        # CPU (issue #14). Done here rather than with the runners' zero_grad_before_forward,
        # which detectron2 releases before 2023 do not have; their own zero_grad then finds
        # nothing to drop.
        self._trainer.optimizer.zero_grad()
        self._trainer.run_step()

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    # -- builders (detectron2's DefaultTrainer class methods) -----------------------------------
    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """detectron2's ``build_model`` plus the training freezes of ``cfg``."""
        model = build_model(cfg)
        apply_training_freezes(model, cfg)
        logger.debug("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_fiber_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_fiber_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(
        cls, cfg, training_set: Optional[TrainingSet] = None, seed: Optional[int] = None
    ):
        """The training loader of :func:`fiber_det.data.build_fiber_train_loader` (the
        :class:`PairDatasetMapper` for image-text pairs; micro-batches of
        ``SOLVER.FIBER.IMS_PER_DEVICE`` images per process with gradient accumulation)."""
        if training_set is None:
            training_set = load_training_set(cfg)
        if training_set.pairs:
            mapper = PairDatasetMapper(cfg, True)
        else:
            mapper = FIBERDatasetMapper(cfg, True, dataset_names=training_set.names)
        batch = cfg.SOLVER.IMS_PER_BATCH // _accumulation_steps(cfg)
        return build_fiber_train_loader(
            cfg, mapper, training_set=training_set, seed=seed, batch_size=batch
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_fiber_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators=None) -> Dict:
        """Evaluate ``model`` on every dataset of ``DATASETS.TEST`` (as ``DefaultTrainer.test``).

        Args:
            evaluators: one per test dataset, or None to build them with ``build_evaluator``.
        Returns:
            ``{dataset: results}``, or the results alone for a single dataset.
        """
        names = list(cfg.DATASETS.TEST)
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators for {len(names)} DATASETS.TEST")
        results = OrderedDict()
        for i, name in enumerate(names):
            evaluator = evaluators[i] if evaluators is not None else cls.build_evaluator(cfg, name)
            if hasattr(evaluator, "evaluate_model"):  # retrieval: its own loop over all pairs
                results[name] = evaluator.evaluate_model(model)
            else:
                loader = cls.build_test_loader(cfg, name)
                results[name] = inference_on_dataset(model, loader, evaluator)
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        return list(results.values())[0] if len(results) == 1 else results

    def build_writers(self) -> List:
        """Console printer (ETA, losses, ``lr`` / ``lr_lang``, memory), JSON and TensorBoard."""
        out = self.cfg.OUTPUT_DIR
        os.makedirs(out, exist_ok=True)
        window = max(self.cfg.SOLVER.FIBER.LOG_PERIOD, 1)
        return [
            FIBERMetricPrinter(self.max_iter, window_size=window),
            JSONWriter(os.path.join(out, "metrics.json"), window_size=window),
            TensorboardXWriter(out, window_size=window),
        ]

    def build_hooks(self) -> List:
        """detectron2's standard hooks (timer, checkpoints, evaluation, writers) and FIBER's."""
        cfg, f = self.cfg, self.cfg.SOLVER.FIBER
        ret = [hooks.IterationTimer()]
        if f.SEED_PER_ITERATION and cfg.SEED >= 0:
            ret.append(ReseedHook(self.seed))
        wd_ratio = f.WEIGHT_DECAY_SCHEDULE_RATIO if f.WEIGHT_DECAY_SCHEDULE else None
        ret.append(FIBERLRScheduler(self.optimizer, self.scheduler, weight_decay_ratio=wd_ratio))
        if self.ema is not None:
            ret.append(EMAHook(self.ema))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        self.monitor = MetricMonitor(
            f.MONITOR_METRIC, self.scheduler, self.checkpointer, f.AUTO_TERMINATE_PATIENCE
        )
        ret.append(self.monitor)
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=max(f.LOG_PERIOD, 1)))
        return ret

    def _evaluate(self) -> Dict:
        if self.ema is not None and self.cfg.SOLVER.FIBER.USE_EMA_FOR_EVAL:
            with self.ema.apply_to(self.model):
                results = self.test(self.cfg, self.model)
        else:
            results = self.test(self.cfg, self.model)
        self._last_eval_results = results
        self.monitor.report(results)  # may stop the training (TrainingStopped)
        return results

    # -- loading -------------------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR/last_checkpoint`` (``resume``) or initialise from
        ``MODEL.WEIGHTS`` (any format ``FIBERCheckpointer`` reads) or, when it is empty, from
        ``MODEL.SWIN.WEIGHTS`` / ``MODEL.LANGUAGE.WEIGHTS``."""
        weights = self.cfg.MODEL.WEIGHTS
        self.checkpointer.resume_or_load(weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        else:
            self._initialise_from_weights(weights)
        if self.ema is not None and not self.ema.loaded_from_checkpoint:
            self.ema.reset(self.model)
        sampler = getattr(self.data_loader, "sampler", None)
        if hasattr(sampler, "set_start_iter"):  # a custom build_train_loader may have none
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            sampler.set_start_iter(self.start_iter, per_rank)

    def _initialise_from_weights(self, weights: str) -> None:
        lang, swin = self.cfg.MODEL.LANGUAGE.WEIGHTS, self.cfg.MODEL.SWIN.WEIGHTS
        if weights:
            report = self.checkpointer.last_conversion_report
            if report is not None:
                self.init_reports.append(report)
            self._reset_queue(weights)
            if lang or swin:
                logger.warning(
                    "MODEL.WEIGHTS is set: MODEL.SWIN.WEIGHTS / MODEL.LANGUAGE.WEIGHTS are ignored"
                )
        else:
            inner = self.model.module if hasattr(self.model, "module") else self.model
            self.init_reports += load_pretrained_encoders(inner, self.cfg)
            if not (lang or swin):
                logger.warning(
                    "No MODEL.WEIGHTS / SWIN.WEIGHTS / LANGUAGE.WEIGHTS: training from scratch"
                )
        if self.init_reports and comm.is_main_process() and self.cfg.OUTPUT_DIR:
            path = os.path.join(self.cfg.OUTPUT_DIR, "initialization.txt")
            with atomic_open(path, "w") as fh:
                fh.write("\n\n".join(r.format() for r in self.init_reports) + "\n")

    def _start_data_stream(self) -> None:
        """Read the first batch before the loop, with the global RNG state kept.

        torch's DataLoader draws its base seed from the global RNG when its iterator starts,
        which inside the first step would shift that step's random draws (the coarse model's
        ITM hard negatives, dropout) after the per-iteration seeding, so that a resumed run
        would not draw what the uninterrupted run drew. Batches depend on their stream position
        only (``SeededMapDataset``), so reading one early changes no batch.
        """
        runner = self._trainer
        with torch.random.fork_rng(devices=[]):
            stream = runner._data_loader_iter
            first = next(stream)
        runner._data_loader_iter_obj = itertools.chain([first], stream)

    def _reset_queue(self, weights: str) -> None:
        """A new run from a coarse checkpoint starts with an empty ITC queue (the official loader
        drops the queues of the file it starts from); ``--resume`` keeps the saved queue."""
        inner = self.model.module if hasattr(self.model, "module") else self.model
        queue = getattr(inner, "queue", None)
        if queue is None or not hasattr(inner, "reset_queue"):
            return
        if queue.num_filled:
            logger.info(
                "New run from %s: its ITC queue (%d entries) is emptied", weights, queue.num_filled
            )
        inner.reset_queue()
        _broadcast_buffers(queue)  # its random initial entries differ per process

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> Optional[Dict]:
        """Train from ``start_iter`` to ``MAX_ITER`` with detectron2's loop, or until the
        :class:`MetricMonitor` stops it early.

        Returns:
            the last evaluation results, if any.
        """
        if self.monitor.should_stop:
            logger.info("This run already auto-terminated (see model_best.pth); nothing to do")
            return getattr(self, "_last_eval_results", None)
        self._start_data_stream()
        try:
            super().train(self.start_iter, self.max_iter)
        except TrainingStopped as stop:
            logger.info("%s", stop)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, getattr(self, "_last_eval_results", OrderedDict()))
        return getattr(self, "_last_eval_results", None)
