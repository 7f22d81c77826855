"""The coarse-grained recipes (configs/fiber_b/coarse/): each merges, names registered datasets,
and holds the values of the official task configs (microsoft/FIBER coarse_grained/fiber/config.py,
written out below)."""

from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

from fiber_det.data.datasets.builtin import OFFICIAL_PAIR_MIXES
from fiber_det.engine.accumulation import accumulation_steps
from fiber_det.utils.testing import get_config
from tests.paths import REPO_ROOT

FOLDER = REPO_ROOT / "configs" / "fiber_b" / "coarse"

# The official values: `config()` defaults updated by each named config.
DEFAULTS = dict(
    learning_rate=1e-5, weight_decay=0.01, decay_power=1, end_lr=0, lr_mult_head=5,
    lr_mult_cross_modal=5, max_text_len=40, image_size=384, mlm_prob=0.15,
    train_transform="albef", val_transform="albef", seed=0,
)  # fmt: skip
# task_finetune_irtr_{itc,itm}_{coco,f30k}, and the per-GPU batch of the official README commands
RETRIEVAL = dict(
    batch_size=1024, max_epoch=10, warmup_steps=0.1, learning_rate=2e-5, max_text_len=50,
    train_transform="albef_randaug", gpus=8,
)  # fmt: skip
OFFICIAL = {
    "pretrain.yaml": dict(
        loss_names={"itm": 1, "mlm": 1, "itc": 1}, batch_size=4096, max_steps=100000,
        warmup_steps=0.1, per_gpu_batchsize=8, gpus=64,
    ),
    **{
        f"{data}_{loss}.yaml": dict(
            RETRIEVAL, loss_names={loss: 1}, data=data, image_size=576 if loss == "itc" else 384,
            per_gpu_batchsize=128 if loss == "itc" else 8,
        )
        for data in ("coco", "f30k")
        for loss in ("itc", "itm")
    },
}  # fmt: skip


def test_every_recipe_exists():
    recipes = {p.name for p in FOLDER.glob("*.yaml") if not p.name.startswith("Base-")}
    assert set(OFFICIAL) | {"official_parity.yaml"} == recipes


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_holds_the_official_values(name):
    want = dict(DEFAULTS, **OFFICIAL[name])
    cfg = get_config(f"fiber_b/coarse/{name}")
    s, c, co = cfg.SOLVER, cfg.INPUT.COARSE, cfg.MODEL.COARSE
    assert cfg.MODEL.META_ARCHITECTURE == "FIBERCoarse"
    # optimizer and schedule (set_schedule)
    assert (s.FIBER.OPTIMIZER, tuple(s.FIBER.ADAMW_BETAS), s.FIBER.ADAMW_EPS) == (
        "ADAMW",
        (0.9, 0.98),
        1e-8,
    )
    assert s.FIBER.PARAM_GROUPS == "official_coarse"
    assert s.BASE_LR == pytest.approx(want["learning_rate"])
    assert s.WEIGHT_DECAY == want["weight_decay"]
    assert (s.FIBER.LR_MULT_HEAD, s.FIBER.LR_MULT_CROSS_MODAL) == (
        want["lr_mult_head"],
        want["lr_mult_cross_modal"],
    )
    assert (s.LR_SCHEDULER_NAME, s.WARMUP_FACTOR, s.FIBER.WARMUP_FRACTION) == (
        "WarmupPolyLR",
        0.0,
        want["warmup_steps"],
    )
    assert (s.FIBER.POLY_POWER, s.FIBER.POLY_END_LR) == (want["decay_power"], want["end_lr"])
    assert s.IMS_PER_BATCH == want["batch_size"]
    if "max_steps" in want:
        assert (s.MAX_ITER, s.FIBER.MAX_EPOCH) == (want["max_steps"], 0)
    else:
        assert s.FIBER.MAX_EPOCH == want["max_epoch"]
    # Lightning's accumulate_grad_batches with the official GPUs and per-GPU batch
    official_accumulation = want["batch_size"] // (want["per_gpu_batchsize"] * want["gpus"])
    assert s.FIBER.IMS_PER_DEVICE == want["per_gpu_batchsize"]
    assert accumulation_steps(s.IMS_PER_BATCH, s.FIBER.IMS_PER_DEVICE, want["gpus"]) == (
        official_accumulation
    )
    assert s.AMP.ENABLED and cfg.SEED == want["seed"]
    # data
    assert (c.IMAGE_SIZE, c.MAX_TEXT_LEN, c.MLM_PROB) == (
        want["image_size"],
        want["max_text_len"],
        want["mlm_prob"],
    )
    assert (c.TRAIN_TRANSFORM, c.TEST_TRANSFORM) == (
        want["train_transform"],
        want["val_transform"],
    )
    assert cfg.MODEL.SWIN.WINDOW_SIZE == want["image_size"] // 32
    assert cfg.DATASETS.COARSE.SAMPLE_BY == "caption"
    # losses (loss_names)
    losses = {"itc": co.ITC_LOSS_WEIGHT, "itm": co.ITM_LOSS_WEIGHT, "mlm": co.MLM_LOSS_WEIGHT}
    assert losses == {k: float(want["loss_names"].get(k, 0)) for k in losses}
    for ds in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert ds in DatasetCatalog, ds
    text = Path(FOLDER / name).read_text()
    assert "python tools/train_net.py" in text and f"{name}" in text


def test_pretraining_data_and_initialisation():
    cfg = get_config("fiber_b/coarse/pretrain.yaml")
    assert tuple(cfg.DATASETS.TRAIN) == OFFICIAL_PAIR_MIXES["pretrain"]
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.SWIN.WEIGHTS.endswith("swin_base_patch4_window12_384_22k.pth")
    assert cfg.MODEL.LANGUAGE.WEIGHTS.endswith("roberta-base")
    assert cfg.MODEL.SWIN.DROP_PATH_RATE == 0.1 and cfg.MODEL.LANGUAGE.HIDDEN_DROPOUT == 0.1


@pytest.mark.parametrize("data", ["coco", "f30k"])
def test_retrieval_recipes_train_on_train_val_and_test_on_test(data):
    for loss in ("itc", "itm"):
        cfg = get_config(f"fiber_b/coarse/{data}_{loss}.yaml")
        assert tuple(cfg.DATASETS.TRAIN) == OFFICIAL_PAIR_MIXES[f"{data}_retrieval_train"]
        assert tuple(cfg.DATASETS.TEST) == (f"{data}_caption_karpathy_test",)
