"""Official freezes (frozen stages, text encoder, linear probe, prompt tuning) and model EMA."""

import pytest
import torch
from torch import nn

from fiber_det.engine import LINEAR_PROBE_PARAMS, ModelEMA, Trainer, scale_to_world


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_stages_two_freezes_patch_embedding_and_first_stage(tiny_cfg):
    tiny_cfg.MODEL.SWIN.FROZEN_STAGES = 2
    model = Trainer.build_model(tiny_cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(
        n.startswith(("backbone.body.patch_embed.", "backbone.body.layers.0.")) for n in frozen
    )
    assert any(n.startswith("backbone.body.layers.0.downsample") for n in frozen)


def test_language_freeze_keeps_the_text_encoder_in_eval_mode(tiny_cfg):
    tiny_cfg.MODEL.LANGUAGE.FREEZE = True
    model = Trainer.build_model(tiny_cfg)
    model.train()
    lang = model.backbone.language
    assert not any(p.requires_grad for p in lang.parameters())
    assert not lang.training and not lang.encoder.layer[-1].crossattention_t2i.training
    assert model.backbone.body.training and model.head.training
    assert _trainable(model) == {
        n for n, _ in model.named_parameters() if not n.startswith("backbone.language.")
    }


def test_image_backbone_freeze(tiny_cfg):
    tiny_cfg.MODEL.SWIN.FREEZE = True
    model = Trainer.build_model(tiny_cfg).train()
    assert not model.backbone.body.training
    assert not any(n.startswith("backbone.body.") for n in _trainable(model))
    assert any(n.startswith("backbone.language.") for n in _trainable(model))


def test_linear_probe_trains_only_the_final_prediction_layers(tiny_cfg):
    tiny_cfg.MODEL.FIBER.LINEAR_PROBE = True
    model = Trainer.build_model(tiny_cfg).train()
    assert _trainable(model) == {
        "head.bbox_pred.weight",
        "head.bbox_pred.bias",
        "head.centerness.weight",
        "head.centerness.bias",
        "head.text_proj.weight",
        "head.text_proj.bias",
        "head.log_scale",
        "head.bias_lang",
        "head.bias0",
    }
    assert all(n.startswith(LINEAR_PROBE_PARAMS) for n in _trainable(model))
    assert not any(
        m.training for m in (model.backbone.body, model.backbone.language, model.backbone.fpn)
    )


def test_prompt_tuning_trains_only_the_prompt_offsets(tiny_cfg):
    tiny_cfg.MODEL.FIBER.USE_PROMPT_TUNING = True
    model = Trainer.build_model(tiny_cfg).train()
    assert _trainable(model) == {"backbone.tunable_linear.weight"}
    tiny_cfg.MODEL.FIBER.LINEAR_PROBE = True  # GLIP "language_prompt_v4": both
    both = _trainable(Trainer.build_model(tiny_cfg))
    assert "backbone.tunable_linear.weight" in both and "head.bias0" in both and len(both) == 10


def _toy():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    m.register_buffer("index", torch.tensor([3, 4]))
    return m


def test_ema_averages_the_state_dict_and_swaps_for_evaluation():
    model = _toy()
    ema = ModelEMA(model, 0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model.index.fill_(7)
    ema.update(model)
    sd = ema.state_dict()
    assert torch.allclose(sd["0.weight"], w0 + 0.1)
    assert torch.allclose(sd["1.running_mean"], torch.full((2,), 0.2))  # buffers averaged
    assert sd["index"].tolist() == [7, 7] and sd["index"].dtype == torch.long  # copied
    trained = model[0].weight.detach().clone()
    with ema.apply_to(model):
        assert torch.allclose(model[0].weight, w0 + 0.1)
    assert torch.equal(model[0].weight, trained)  # restored


def test_ema_state_roundtrip_with_ddp_prefix():
    model = _toy()
    ema = ModelEMA(model, 0.99)
    saved = {f"module.{k}": v + 1 for k, v in ema.state_dict().items() if v.is_floating_point()}
    saved.update(
        {f"module.{k}": v for k, v in ema.state_dict().items() if not v.is_floating_point()}
    )
    other = ModelEMA(_toy(), 0.99)
    other.load_state_dict(saved)
    assert other.loaded_from_checkpoint
    assert torch.allclose(other.state_dict()["0.bias"], ema.state_dict()["0.bias"] + 1)
    with pytest.raises(KeyError, match="does not fit the model"):
        other.load_state_dict({"0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="MODEL_EMA"):
        ModelEMA(model, 1.0)


def test_load_ema_weights_for_evaluation(tiny_cfg):
    from fiber_det.checkpoint import load_ema_weights

    model = Trainer.build_model(tiny_cfg)
    ema = {
        f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    before = model.head.bias0.detach().clone()
    assert not load_ema_weights(model, {"model": {}})
    assert load_ema_weights(model, {"model_ema": ema})
    assert torch.allclose(model.head.bias0, before + 1)


def test_reference_world_size_scaling_keeps_fractional_steps(tiny_cfg):
    tiny_cfg.merge_from_list(
        [
            "SOLVER.REFERENCE_WORLD_SIZE",
            8,
            "SOLVER.IMS_PER_BATCH",
            16,
            "SOLVER.MAX_ITER",
            1000,
            "SOLVER.STEPS",
            (0.67, 900),
            "SOLVER.FIBER.LANG_LR",
            1e-5,
            "SOLVER.BASE_LR",
            1e-4,
        ]
    )
    out = scale_to_world(tiny_cfg, 16)
    assert out.SOLVER.IMS_PER_BATCH == 32 and out.SOLVER.MAX_ITER == 500
    assert tuple(out.SOLVER.STEPS) == (0.67, 450)
    assert out.SOLVER.FIBER.LANG_LR == pytest.approx(2e-5)
    assert out.SOLVER.BASE_LR == pytest.approx(2e-4)
