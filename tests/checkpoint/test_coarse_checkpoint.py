"""Checkpoints of the coarse-grained model: official Lightning files, its own checkpoints (with
the queue), stage 1 -> 2, uni-modal initialisation and refusals. The FIBER-B key layout itself
is checked against shared/parity/official_coarse_keys.json in tests/modeling/test_coarse_parity.py.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from transformers import RobertaConfig, RobertaModel

from fiber_det.checkpoint import CheckpointError, FIBERCheckpointer
from fiber_det.checkpoint.coarse import to_official_coarse_state_dict
from fiber_det.checkpoint.pretrained import load_pretrained_encoders
from tests.paths import load_tool

from ..modeling.coarse_inputs import pairs, tiny_coarse_config, tiny_coarse_model

QUEUES = ("image_queue", "text_queue", "queue_ptr", "queue_total")


def _official_file(model, path, *, rank_output_shift=0.5, extras=True):
    """``model``'s weights written as the official coarse model saves them: Lightning wrapper,
    official names, plus what only the official model has (its buffers, queues, unused gates and
    LayerNorms, the text pooler, the ImageNet head) and a ``rank_output`` that differs from the
    ITM classifier's row 1."""
    sd = {k: v.clone() for k, v in to_official_coarse_state_dict(model.state_dict()).items()}
    sd["rank_output.weight"] = sd["rank_output.weight"] + rank_output_shift
    if extras:
        d = 64
        sd["text_transformer.encoder.layer.0.alpha_t2i"] = torch.ones(1)  # layer 0 is unfused
        for i in (1, 2):
            for p in ("weight", "bias"):
                sd[
                    f"text_transformer.encoder.layer.{i}.crossattention_t2i.output.LayerNorm.{p}"
                ] = torch.randn(d)
        sd["text_transformer.pooler.dense.weight"] = torch.randn(d, d)
        sd["text_transformer.pooler.dense.bias"] = torch.randn(d)
        sd["text_transformer.embeddings.position_ids"] = torch.arange(130)[None]
        sd["vit_model.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4).long()
        sd["vit_model.layers.2.blocks.1.attn_mask"] = torch.zeros(4, 4, 4)
        sd["vit_model.head.weight"] = torch.randn(10, 256)
        sd["image_input_queue"] = torch.randn(8, 3, 64, 64)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 100}, path)
    return sd


@pytest.fixture(scope="module")
def source():
    return tiny_coarse_model(seed=11).eval()


def test_official_lightning_file_loads_into_the_coarse_model(source, tmp_path):
    path = tmp_path / "fiber_pretrain.ckpt"
    sd = _official_file(source, path)
    model = tiny_coarse_model(seed=12)
    checkpointer = FIBERCheckpointer(model)
    checkpointer.load(str(path))
    report = checkpointer.last_conversion_report
    assert report.missing == {}, report.missing
    own, ref = model.state_dict(), source.state_dict()
    params = [n for n, _ in model.named_parameters()]
    assert sum(report.converted.values()) == len(params)
    for name in params:
        if name.startswith("itm_score.fc."):
            continue
        assert torch.equal(own[name], ref[name]), name
    # rank_output is written over row 1 of the ITM classifier, as the official load does
    w = own["itm_score.fc.weight"]
    assert torch.equal(w[0], ref["itm_score.fc.weight"][0])
    assert torch.equal(w[1:], sd["rank_output.weight"])
    assert any("rank_output.weight differs" in n for n in report.notes)
    dropped = {reason: len(keys) for reason, keys in report.dropped.items()}
    assert dropped["ITC queue (the official loader drops it too)"] == 7
    assert dropped["buffer, rebuilt by the model"] == 3
    assert dropped["defined but unused by the official model (gate of an unfused text layer)"] == 1
    unused_norms = "defined but unused by the official model (cross-attention output LayerNorm)"
    assert dropped[unused_norms] == 4
    assert dropped["text pooler (unused by the coarse model)"] == 2
    assert dropped["ImageNet classifier of the Swin"] == 1
    assert int(model.queue.queue_total) == 0  # the queue is not taken from the file
    assert "official coarse-grained FIBER checkpoint" in report.format()


def test_official_file_through_model_weights(source, tmp_path):
    path = tmp_path / "fiber_coco_irtr_itm.ckpt"
    _official_file(source, path, extras=False)
    cfg = tiny_coarse_config(["MODEL.WEIGHTS", str(path)])
    model = build_model(cfg)
    FIBERCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    w = model.backbone.language.encoder.layer[2].crossattention_t2i.self.key.weight
    assert torch.equal(
        w, source.backbone.language.encoder.layer[2].crossattention_t2i.self.key.weight
    )


def _official_bias_resize(table, new_window):
    """The official ``swin_adapt_position_encoding`` recipe, written out."""
    old = int(round(table.shape[0] ** 0.5))
    new = 2 * new_window - 1
    grid = table.transpose(0, 1).view(-1, old, old)
    grid = F.interpolate(grid.unsqueeze(0), size=(new, new), mode="bicubic")
    return grid.squeeze(0).permute(1, 2, 0).contiguous().view(-1, table.shape[1])


def test_position_tables_follow_the_image_size(source, tmp_path):
    """A 64-pixel checkpoint (window 2) into a 128-pixel model (window 4): tables resized."""
    path = tmp_path / "fiber_pretrain.ckpt"
    _official_file(source, path, extras=False)
    opts = ["INPUT.COARSE.IMAGE_SIZE", 128, "MODEL.SWIN.WINDOW_SIZE", 4]
    model = tiny_coarse_model(opts)
    checkpointer = FIBERCheckpointer(model)
    checkpointer.load(str(path))
    assert len(checkpointer.last_conversion_report.resized) == 5  # one per block
    key = "backbone.body.layers.2.blocks.1.attn.relative_position_bias_table"
    want = _official_bias_resize(source.state_dict()[key], 4)
    assert torch.allclose(model.state_dict()[key], want, atol=1e-6)


def test_own_checkpoint_resumes_with_its_queue(tmp_path):
    model = tiny_coarse_model(seed=3).train()
    model(pairs(4, seed=1))  # fills half of the queue, allocates the image queue
    DetectionCheckpointer(model, str(tmp_path)).save("model_0000001")
    fresh = tiny_coarse_model(seed=4)
    assert fresh.queue.image_input_queue.numel() == 0
    FIBERCheckpointer(fresh).load(str(tmp_path / "model_0000001.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert int(fresh.queue.queue_total) == 4
    fresh.reset_queue()
    assert int(fresh.queue.queue_total) == 0 and int(fresh.queue.queue_ptr) == 0


def test_own_checkpoint_of_another_size_loads_without_its_queue(tmp_path):
    model = tiny_coarse_model(seed=3).train()
    model(pairs(4, seed=1))
    DetectionCheckpointer(model, str(tmp_path)).save("m")
    opts = ["INPUT.COARSE.IMAGE_SIZE", 128, "MODEL.SWIN.WINDOW_SIZE", 4]
    big = tiny_coarse_model(opts)
    FIBERCheckpointer(big).load(str(tmp_path / "m.pth"))
    key = "backbone.body.layers.0.blocks.0.attn.relative_position_bias_table"
    assert big.state_dict()[key].shape == (49, 1)
    assert int(big.queue.queue_total) == 0
    assert torch.equal(big.temp, model.temp)


@pytest.mark.parametrize("layout", ["official", "own"])
def test_coarse_checkpoints_initialise_the_detector(source, layout, tiny_cfg, tmp_path):
    """Stage 1 -> 2: an official coarse file or a FIBERCoarse checkpoint gives the detector every
    backbone tensor but the detection output norms; FPN and head start from scratch."""
    path = tmp_path / "stage1.pth"
    if layout == "official":
        _official_file(source, path, extras=False)
    else:
        DetectionCheckpointer(source, str(tmp_path)).save("stage1")
    detector = build_model(tiny_cfg)
    checkpointer = FIBERCheckpointer(detector)
    checkpointer.load(str(path))
    report = checkpointer.last_conversion_report
    own = detector.state_dict()
    backbone = [n for n, _ in detector.named_parameters() if n.startswith("backbone.")]
    out_norms = [n for n in backbone if re.match(r"backbone\.body\.norm\d\.", n)]
    expected = [n for n in backbone if n not in out_norms and not n.startswith("backbone.fpn.")]
    assert report.num_loaded == len(expected)
    same = [n for n in expected if "relative_position_bias_table" not in n]  # resized: window 2->4
    for name in same:
        assert torch.equal(own[name], source.state_dict()[name]), name


def test_unimodal_initialisation_of_the_coarse_model(tmp_path):
    """MODEL.SWIN.WEIGHTS (Microsoft layout, written from timm's Swin) and MODEL.LANGUAGE.WEIGHTS
    (a Hugging Face folder): everything but the fusion modules and the coarse heads loads, the
    Swin's final norm included (the official stage 1 keeps it)."""
    timm = pytest.importorskip("timm")
    from ..checkpoint.test_pretrained_loaders import _microsoft_layout

    swin = timm.models.swin_transformer.SwinTransformer(
        img_size=64,
        patch_size=4,
        window_size=2,
        embed_dim=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        num_classes=10,
    )
    torch.save(_microsoft_layout(swin.state_dict()), tmp_path / "swin_22k.pth")
    rcfg = RobertaConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
    )
    RobertaModel(rcfg).save_pretrained(tmp_path / "roberta-base")
    cfg = tiny_coarse_config(
        [
            "MODEL.SWIN.WEIGHTS",
            str(tmp_path / "swin_22k.pth"),
            "MODEL.LANGUAGE.WEIGHTS",
            str(tmp_path / "roberta-base"),
        ]
    )
    model = build_model(cfg)
    swin_report, text_report = load_pretrained_encoders(model, cfg)
    body = [n for n, _ in model.backbone.body.named_parameters()]
    i2t = [n for n in body if "_i2t" in n]
    assert swin_report.num_loaded == len(body) - len(i2t)
    assert sorted(swin_report.missing) == ["swin i2t fusion"]
    assert torch.equal(model.backbone.body.norm.weight, swin.norm.weight)
    text = [n for n, _ in model.backbone.language.named_parameters()]
    assert text_report.num_loaded == len(text) - len([n for n in text if "_t2i" in n])


def test_files_of_other_models_are_refused(source, tiny_cfg, tmp_path):
    model = tiny_coarse_model()
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.layer.0.weight": torch.zeros(2)}}, other)
    for target in (model, build_model(tiny_cfg)):
        with pytest.raises(CheckpointError, match="Lightning checkpoint of another model"):
            FIBERCheckpointer(target).load(str(other))
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"classifier.weight": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="checkpoint of another model"):
        FIBERCheckpointer(model).load(str(plain))
    fine = tmp_path / "fiber_coco.pth"
    torch.save({"model": {"fusion_backbone.backbone.body.norm1.weight": torch.zeros(64)}}, fine)
    with pytest.raises(CheckpointError, match="fine-grained .* cannot initialise the coarse"):
        FIBERCheckpointer(model).load(str(fine))


def test_official_files_that_do_not_fit_are_refused(source, tmp_path):
    wide = tiny_coarse_model(["MODEL.COARSE.HIDDEN_SIZE", 32])
    path = tmp_path / "wide.ckpt"
    _official_file(wide, path, extras=False)
    with pytest.raises(CheckpointError, match=r"tensors do not fit the model"):
        FIBERCheckpointer(tiny_coarse_model()).load(str(path))
    deeper = tmp_path / "deeper.ckpt"
    sd = to_official_coarse_state_dict(source.state_dict())
    sd["text_transformer.encoder.layer.7.output.dense.weight"] = torch.zeros(64, 128)
    torch.save({"state_dict": sd}, deeper)
    with pytest.raises(CheckpointError, match="no place in this model"):
        FIBERCheckpointer(tiny_coarse_model()).load(str(deeper))


def test_convert_tool_reads_a_fibercoarse_checkpoint(source, tmp_path):
    """tools/convert_coarse_checkpoint.py on fiber_det's own stage-1 output (stage 1 -> 2)."""
    DetectionCheckpointer(source, str(tmp_path)).save("model_final")
    cli = load_tool("convert_coarse_checkpoint")
    out = tmp_path / "stage2_init.pth"
    config = "tiny/fiber_tiny.yaml"
    args = [str(tmp_path / "model_final.pth"), str(out), "--config-file", config]
    assert cli.main(args + ["--fusion-version", "v3"]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    key = "backbone.language.encoder.layer.2.crossattention_t2i.self.value.weight"
    assert torch.equal(converted[key], source.state_dict()[key])
    assert "backbone.body.layers.3.blocks.0.attn.norm_i2t_i.weight" in converted


def meter_lightning_file(path, source) -> None:
    """A METER Lightning checkpoint (Dou et al. 2022, the model FIBER's stage 1 grew from): the
    same ``vit_model.`` / ``text_transformer.`` / ``cross_modal_*`` prefixes and heads, but a CLIP
    ViT and separate co-attention layers (METER ``meter/modules/meter_module.py``)."""
    sd = {
        k: v.clone()
        for k, v in to_official_coarse_state_dict(source.state_dict()).items()
        if k.startswith(("text_transformer.", "cross_modal_", "itm_score.", "mlm_score."))
    }
    sd["vit_model.visual.conv1.weight"] = torch.randn(8, 3, 4, 4)
    sd["vit_model.visual.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(24, 8)
    sd["cross_modal_image_layers.0.attention.self.query.weight"] = torch.randn(64, 64)
    sd["cross_modal_text_layers.0.crossattention.self.key.weight"] = torch.randn(64, 64)
    sd["token_type_embeddings.weight"] = torch.randn(2, 64)
    torch.save({"state_dict": sd, "epoch": 10}, path)


def test_lightning_file_of_a_related_model_is_refused_by_name(source, tmp_path):
    """A file that shares FIBER's key prefixes but not its architecture: a clear refusal that
    names the model, whether loaded directly, through MODEL.WEIGHTS or by the converter tool."""
    path = tmp_path / "meter_clip16_288_roberta_pretrain.ckpt"
    meter_lightning_file(path, source)
    message = r"METER-style .*vit_model\.visual\..*cross_modal_image_layers.*not .*FIBER"
    with pytest.raises(CheckpointError, match=message):
        FIBERCheckpointer(tiny_coarse_model()).load(str(path))
    cfg = tiny_coarse_config(["MODEL.WEIGHTS", str(path)])
    with pytest.raises(CheckpointError, match=message):
        FIBERCheckpointer(build_model(cfg)).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    out = tmp_path / "converted.pth"
    with pytest.raises(CheckpointError, match=message):
        load_tool("convert_coarse_checkpoint").main([str(path), str(out)])
    assert not out.exists()
