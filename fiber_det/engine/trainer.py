"""``Trainer``: detectron2's ``DefaultTrainer`` with the FIBER training recipe.

What it adds to ``DefaultTrainer`` (official behaviour: microsoft/FIBER ``engine/trainer.py``,
``solver/``, ``tools/train_net.py`` / ``finetune.py``):

* the official AdamW parameter groups, gradient clipping and schedules
  (:mod:`fiber_det.solver`), the weight-decay schedule, epochs -> iterations
  (``SOLVER.FIBER.MAX_EPOCH``), the ODinW plateau schedule with early termination;
* the official freezes (:mod:`fiber_det.engine.freeze`);
* the mixed, resumable training stream (:mod:`fiber_det.engine.data`) with reproducible
  per-image randomness, and per-iteration reseeding, so ``--resume`` continues with the batches
  and random draws of the uninterrupted run (``SEED`` >= 0). Two cases shift the stream after a
  resume: batches replaced for too many images without boxes (``MAX_NEG_PER_BATCH``) before the
  interruption, and aspect-ratio grouping (``DATALOADER.ASPECT_RATIO_GROUPING``) with images of
  both orientations or several loader workers (the same images, grouped into other batches);
* model EMA saved in checkpoints as ``model_ema`` (optionally used for evaluation);
* atomic checkpoints; ``MODEL.WEIGHTS`` may be an official or a coarse-grained FIBER file; with
  ``MODEL.WEIGHTS`` empty, ``MODEL.SWIN.WEIGHTS`` / ``MODEL.LANGUAGE.WEIGHTS`` initialise the
  encoders; what was loaded is written to ``OUTPUT_DIR/initialization.txt``;
* AMP on GPU (detectron2's ``AMPTrainer``; off on CPU), logs with ``lr`` / ``lr_lang``.
"""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from ..checkpoint.pretrained import load_pretrained_encoders
from ..solver import build_fiber_lr_scheduler, build_fiber_optimizer
from ..utils.io import atomic_open
from .checkpoint import FIBERTrainingCheckpointer
from .custom_data import register_custom_datasets
from .data import build_mixed_train_loader, load_training_set
from .ema import ModelEMA
from .freeze import apply_training_freezes
from .hooks import EMAHook, FIBERLRScheduler, FIBERMetricPrinter, MetricMonitor, ReseedHook

__all__ = ["Trainer", "resolve_training_schedule"]

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


def _use_amp(cfg) -> bool:
    if not cfg.SOLVER.AMP.ENABLED:
        return False
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        return True
    logger.warning("SOLVER.AMP.ENABLED needs a GPU: training in float32 on %s", cfg.MODEL.DEVICE)
    return False


def _check_monitoring(cfg) -> None:
    f = cfg.SOLVER.FIBER
    if (f.USE_AUTOSTEP or f.AUTO_TERMINATE_PATIENCE > 0) and (
        cfg.TEST.EVAL_PERIOD <= 0 or not cfg.DATASETS.TEST
    ):
        raise ValueError(
            "SOLVER.FIBER.USE_AUTOSTEP / AUTO_TERMINATE_PATIENCE follow a validation metric: set "
            "DATASETS.TEST and TEST.EVAL_PERIOD (or SOLVER.FIBER.EVAL_PER_EPOCH)"
        )


class Trainer(DefaultTrainer):
    """FIBER trainer (see module docstring). Usage as detectron2's::

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        register_custom_datasets(cfg)
        training_set = load_training_set(cfg)
        cfg = resolve_training_schedule(cfg, len(training_set))
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        _check_monitoring(cfg)
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        if cfg.SEED >= 0:
            # As detectron2's default_setup does (train_net.py calls it too), so that a Trainer
            # built anywhere else (the demo, a notebook) initialises the same model every time.
            seed_all_rng(cfg.SEED + comm.get_rank())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, training_set=training_set, seed=self.seed)
        on_cpu = next(model.parameters()).device.type == "cpu"
        device_ids = None if on_cpu else [comm.get_local_rank()]
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=cfg.SOLVER.FIBER.FIND_UNUSED_PARAMETERS,
            device_ids=device_ids,
        )
        self._trainer = (AMPTrainer if _use_amp(cfg) else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        decay = cfg.SOLVER.FIBER.MODEL_EMA
        self.ema = ModelEMA(model, decay) if decay > 0 else None
        checkpointables = {"trainer": weakref.proxy(self)}
        if self.ema is not None:
            checkpointables["model_ema"] = self.ema
        self.checkpointer = FIBERTrainingCheckpointer(model, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.init_reports = []
        self.register_hooks(self.build_hooks())

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """detectron2's linear scaling for ``SOLVER.REFERENCE_WORLD_SIZE`` (0: off), which also
        scales ``SOLVER.FIBER.LANG_LR`` and keeps fractional ``SOLVER.STEPS`` as fractions."""
        old = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old == 0 or old == num_workers:
            return cfg
        steps = list(cfg.SOLVER.STEPS)
        out = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        frozen = out.is_frozen()
        out.defrost()
        scale = num_workers / old
        out.SOLVER.STEPS = tuple(s if s < 1 else int(round(s / scale)) for s in steps)
        out.SOLVER.FIBER.LANG_LR = cfg.SOLVER.FIBER.LANG_LR * scale
        if frozen:
            out.freeze()
        return out

    # -- builders ----------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg):
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
    def build_train_loader(cls, cfg, training_set=None, seed=None):
        """The mixed, resumable training loader (:func:`build_mixed_train_loader`)."""
        from ..data import FIBERDatasetMapper

        if training_set is None:
            register_custom_datasets(cfg)
            training_set = load_training_set(cfg)
        if seed is None:
            seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        mapper = FIBERDatasetMapper(cfg, True, dataset_names=list(cfg.DATASETS.TRAIN))
        return build_mixed_train_loader(cfg, training_set, mapper, seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from ..data import build_fiber_test_loader

        register_custom_datasets(cfg)
        return build_fiber_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    def build_writers(self):
        """Console printer (ETA, losses, ``lr`` / ``lr_lang``, memory), JSON and TensorBoard."""
        out = self.cfg.OUTPUT_DIR
        os.makedirs(out, exist_ok=True)
        period = self.cfg.SOLVER.FIBER.LOG_PERIOD
        return [
            FIBERMetricPrinter(self.max_iter, window_size=max(period, 1)),
            JSONWriter(os.path.join(out, "metrics.json"), window_size=max(period, 1)),
            TensorboardXWriter(out, window_size=max(period, 1)),
        ]

    def build_hooks(self):
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

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self):
        if self.ema is not None and self.cfg.SOLVER.FIBER.USE_EMA_FOR_EVAL:
            with self.ema.apply_to(self.model):
                results = self.test(self.cfg, self.model)
        else:
            results = self.test(self.cfg, self.model)
        self._last_eval_results = results
        self.monitor.report(results)
        return results

    # -- loading -------------------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True):
        """Resume from ``OUTPUT_DIR/last_checkpoint`` (``resume``) or initialise from
        ``MODEL.WEIGHTS`` (official, coarse-grained or detectron2 file) or, when it is empty,
        from ``MODEL.SWIN.WEIGHTS`` / ``MODEL.LANGUAGE.WEIGHTS``."""
        weights = self.cfg.MODEL.WEIGHTS
        self.checkpointer.resume_or_load(weights, resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if resumed:
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
            report = getattr(self.checkpointer, "last_conversion_report", None)
            if report is not None:
                self.init_reports.append(report)
            if lang or swin:
                logger.warning(
                    "MODEL.WEIGHTS is set: MODEL.SWIN.WEIGHTS / MODEL.LANGUAGE.WEIGHTS are ignored"
                )
        else:
            inner = self.model.module if hasattr(self.model, "module") else self.model
            self.init_reports += [r for r in load_pretrained_encoders(inner, self.cfg) if r]
            if not (lang or swin):
                logger.warning(
                    "No MODEL.WEIGHTS / SWIN.WEIGHTS / LANGUAGE.WEIGHTS: training from scratch"
                )
        if self.init_reports and comm.is_main_process() and self.cfg.OUTPUT_DIR:
            path = os.path.join(self.cfg.OUTPUT_DIR, "initialization.txt")
            with atomic_open(path, "w") as fh:
                fh.write("\n\n".join(r.format() for r in self.init_reports) + "\n")

    # -- the loop ------------------------------------------------------------------------------
    def train(self):
        """Train from ``start_iter`` to ``MAX_ITER`` (or an early termination).

        Returns:
            the last evaluation results, if any.
        """
        if self.monitor.should_stop:
            logger.info("This run already auto-terminated (see model_best.pth); nothing to do")
            return getattr(self, "_last_eval_results", None)
        logger.info("Starting training from iteration %d", self.start_iter)
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for iteration in range(self.start_iter, self.max_iter):
                    self.iter = iteration
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.monitor.should_stop:
                        self.checkpointer.save("model_final", iteration=self.iter)
                        break
                self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, getattr(self, "_last_eval_results", OrderedDict()))
        return getattr(self, "_last_eval_results", None)
