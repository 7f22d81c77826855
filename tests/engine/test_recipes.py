"""The recipe configs: each merges, names registered datasets, and holds the official values."""

from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

from fiber_det.solver import resolve_milestones
from fiber_det.utils.testing import get_config
from tests.paths import REPO_ROOT

RECIPES = sorted(
    p.name
    for p in (REPO_ROOT / "configs" / "fiber_b").glob("*.yaml")
    if not p.name.startswith(("Base-", "official_parity"))
)


def test_every_recipe_exists():
    want = {
        "pretrain_o365_goldg_flickr.yaml",
        "coco_finetune.yaml",
        "lvis_finetune.yaml",
        "refcoco_finetune.yaml",
        "refcoco+_finetune.yaml",
        "refcocog_finetune.yaml",
        "odinw_finetune.yaml",
        "odinw_1shot.yaml",
        "odinw_3shot.yaml",
        "odinw_5shot.yaml",
        "odinw_10shot.yaml",
        "custom_finetune.yaml",
    }
    assert want <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_merges_and_uses_the_official_optimizer(name):
    cfg = get_config(f"fiber_b/{name}")
    s = cfg.SOLVER
    assert (s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS, s.FIBER.OPTIMIZER) == (2.0, 0.0, "ADAMW")
    assert s.FIBER.PARAM_GROUPS == "official" and cfg.SEED >= 0
    assert "python tools/train_net.py" in Path(REPO_ROOT / "configs/fiber_b" / name).read_text()
    for ds in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert ds in DatasetCatalog or ds.startswith("custom_"), ds
    if not s.FIBER.USE_AUTOSTEP:
        max_iter = s.MAX_ITER if s.FIBER.MAX_EPOCH <= 0 else s.FIBER.MAX_EPOCH * 1000
        assert resolve_milestones(s.STEPS, max_iter) == [
            round(0.67 * max_iter),
            round(0.89 * max_iter),
        ]


def test_pretraining_recipe():
    cfg = get_config("fiber_b/pretrain_o365_goldg_flickr.yaml")
    s = cfg.SOLVER
    assert cfg.MODEL.SWIN.FROZEN_STAGES == 2
    assert (s.BASE_LR, s.FIBER.LANG_LR, s.WEIGHT_DECAY, s.IMS_PER_BATCH, s.MAX_ITER) == (
        1e-4,
        1e-5,
        0.01,
        64,
        800000,
    )
    assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, s.FIBER.MODEL_EMA) == (2000, 0.001, 0.999)
    assert s.FIBER.WEIGHT_DECAY_SCHEDULE and s.FIBER.WEIGHT_DECAY_SCHEDULE_RATIO == 0.667
    clip = s.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE) == (True, "full_model", 1.0)
    assert len(cfg.DATASETS.TRAIN) == 3 and list(cfg.DATALOADER.FIBER.COPIES) == [1, 1, 1]
    assert cfg.SOLVER.AMP.ENABLED


@pytest.mark.parametrize("name", ["coco_finetune.yaml", "lvis_finetune.yaml"])
def test_coco_lvis_recipes(name):
    cfg = get_config(f"fiber_b/{name}")
    s = cfg.SOLVER
    assert cfg.MODEL.SWIN.FROZEN_STAGES == -1
    assert (s.BASE_LR, s.FIBER.LANG_LR, s.WEIGHT_DECAY, s.IMS_PER_BATCH, s.FIBER.MAX_EPOCH) == (
        1e-5,
        1e-5,
        1e-4,
        32,
        24,
    )
    assert not s.CLIP_GRADIENTS.ENABLED and s.FIBER.MODEL_EMA == 0.999


@pytest.mark.parametrize("shot,copies", [(1, 8), (3, 4), (5, 2), (10, 1)])
def test_odinw_few_shot_recipes(shot, copies):
    cfg = get_config(f"fiber_b/odinw_{shot}shot.yaml")
    f = cfg.SOLVER.FIBER
    assert cfg.DATALOADER.FIBER.FEW_SHOT == shot and list(cfg.DATALOADER.FIBER.COPIES) == [copies]
    assert (f.USE_AUTOSTEP, f.STEP_PATIENCE, f.AUTO_TERMINATE_PATIENCE, f.MAX_EPOCH) == (
        True,
        3,
        8,
        200,
    )
    assert (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.IMS_PER_BATCH, f.MODEL_EMA) == (0.05, 4, 0.0)
    assert cfg.MODEL.SWIN.FROZEN_STAGES == 2 and f.EVAL_PER_EPOCH == 1.0


@pytest.mark.parametrize(
    "name", ["refcoco_finetune.yaml", "refcoco+_finetune.yaml", "refcocog_finetune.yaml"]
)
def test_refexp_recipes(name):
    cfg = get_config(f"fiber_b/{name}")
    assert cfg.MODEL.FIBER.FUSION_VERSION == "v3" and cfg.DATASETS.FIBER.FLIP_PROB == 0.0
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.FIBER.MAX_EPOCH) == (16, 20)
