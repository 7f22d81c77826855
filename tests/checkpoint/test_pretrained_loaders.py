"""Swin ImageNet (Microsoft / timm layouts) and roberta-base initialisation.

The synthetic files are written by the reference implementations themselves (timm's Swin,
transformers' RobertaForMaskedLM) so that their key layout is the real one; the Microsoft layout
is timm's layout with the documented renames reversed (patch merging at the end of each stage,
``head`` instead of ``head.fc``).
"""

import re

import pytest
import torch
from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel

from fiber_det.checkpoint.pretrained import load_roberta_pretrained, load_swin_pretrained
from fiber_det.modeling.backbone import FusionRobertaModel, FusionSwinTransformer

timm = pytest.importorskip("timm")

SWIN = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)


def _timm_swin():
    torch.manual_seed(3)
    m = timm.models.swin_transformer.SwinTransformer(
        img_size=128, patch_size=4, num_classes=10, **SWIN
    )
    return m.eval()


def _microsoft_layout(timm_sd):
    out = {}
    for k, v in timm_sd.items():
        k = re.sub(
            r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k
        )
        out[k.replace("head.fc.", "head.")] = v
    # buffers that Microsoft's release saves
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return {"model": out}


def _our_swin(num_fused=2):
    return FusionSwinTransformer(
        **SWIN, num_fused_blocks=num_fused, text_dim=64, out_indices=(1, 2, 3)
    ).eval()


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_swin_loads_and_matches_the_reference_forward(layout, tmp_path):
    ref = _timm_swin()
    sd = ref.state_dict() if layout == "timm" else _microsoft_layout(ref.state_dict())
    path = tmp_path / "swin.pth"
    torch.save(sd, path)
    swin = _our_swin(num_fused=0)
    report = load_swin_pretrained(swin, str(path))
    ours_params = dict(swin.named_parameters())
    expected = [k for k in ours_params if not re.match(r"norm\d\.", k)]  # output norms are new
    assert report.num_loaded == len(expected)
    assert sorted(report.missing) == ["swin output norms (detection)"]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = ref.layers(ref.patch_embed(x))  # (B, H, W, C) before the classifier norm
        state = swin.run(swin.embed(x), sum(SWIN["depths"]))
    assert torch.allclose(state.tokens.view_as(want), want, atol=1e-5)


def test_swin_into_the_fused_model_reports_what_starts_from_scratch(tmp_path):
    ref = _timm_swin()
    path = tmp_path / "swin.pth"
    torch.save(_microsoft_layout(ref.state_dict()), path)
    swin = _our_swin(num_fused=2)
    report = load_swin_pretrained(swin, str(path))
    fusion = [k for k, _ in swin.named_parameters() if "_i2t" in k]
    assert len(fusion) == 2 * 7  # qkv_text (w, b), qkv_i2t (w, b), proj_i2t (w, b), alpha
    assert sorted(report.missing["swin i2t fusion"]) == sorted(fusion)
    assert report.num_loaded == len(ref.state_dict()) - 4  # all but head.fc.* and the final norm
    skipped = {r: len(v) for r, v in report.skipped.items()}
    assert skipped["ImageNet classifier (head, final norm)"] == 4
    assert skipped["buffers rebuilt by the model"] == 2


def test_swin_window_size_change_resizes_the_bias_tables(tmp_path):
    ref = _timm_swin()
    swin = FusionSwinTransformer(
        embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=6, num_fused_blocks=0
    )
    report = load_swin_pretrained(swin, ref.state_dict())
    assert len(report.resized) == 5  # one table per block
    assert swin.layers[0].blocks[0].attn.relative_position_bias_table.shape == (121, 1)


def test_swin_of_another_width_is_a_clear_error():
    ref = _timm_swin()
    swin = FusionSwinTransformer(
        embed_dim=48, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4, num_fused_blocks=0
    )
    with pytest.raises(ValueError, match="do not fit the model"):
        load_swin_pretrained(swin, ref.state_dict())


def _roberta_config():
    return RobertaConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
    )


@pytest.mark.parametrize("hf_class", [RobertaForMaskedLM, RobertaModel])
def test_roberta_loads_from_a_hf_folder_and_matches_the_reference(hf_class, tmp_path):
    cfg = _roberta_config()
    torch.manual_seed(5)
    hf = hf_class(cfg).eval()
    hf.save_pretrained(tmp_path)  # model.safetensors, HF's real key layout
    ours = FusionRobertaModel(cfg, image_dims=(32, 64)).eval()  # last two layers fused
    report = load_roberta_pretrained(ours, str(tmp_path))
    fusion = [k for k, _ in ours.named_parameters() if "_t2i" in k]
    assert sorted(report.missing["roberta t2i fusion"]) == sorted(fusion)
    assert report.num_loaded == len(list(ours.parameters())) - len(fusion)
    if hf_class is RobertaForMaskedLM:
        assert "task heads (lm_head, pooler)" in report.skipped
    ids = torch.tensor([[0, 5, 17, 33, 2, 1, 1]])
    mask = (ids != 1).long()
    base = hf.roberta if hf_class is RobertaForMaskedLM else hf
    with torch.no_grad():
        want = base(input_ids=ids, attention_mask=mask).last_hidden_state
        h = ours.embed(ids)
        m = mask.bool()[:, None, None, :]
        img = [torch.zeros(1, 4, 32), torch.zeros(1, 4, 64)]
        for i in range(3):  # gates are 0: the fused layers behave as plain RoBERTa layers
            h = ours.encoder.layer[i](h, m, img[i - 1] if i else None)
    assert torch.allclose(h[mask.bool()], want[mask.bool()], atol=1e-5)


def test_roberta_from_a_single_bin_file_with_prefix(tmp_path):
    cfg = _roberta_config()
    hf = RobertaForMaskedLM(cfg)
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    ours = FusionRobertaModel(cfg)
    report = load_roberta_pretrained(ours, str(path))
    assert report.num_loaded == len(list(ours.parameters()))


def test_roberta_missing_from_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = FusionRobertaModel(_roberta_config())
    with pytest.raises(FileNotFoundError, match="huggingface-cli download|MODEL.LANGUAGE.WEIGHTS"):
        load_roberta_pretrained(ours, "roberta-base")
