"""Initialisation: coarse-grained FIBER checkpoint (stage 1 -> 2), Swin ImageNet and roberta-base
files in their public layouts, applied through the training config."""

import re

import pytest
import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import FIBERCheckpointer
from fiber_det.checkpoint.coarse import coarse_load_counts, load_coarse_pretrained
from fiber_det.engine import Trainer

timm = pytest.importorskip("timm")


class _CoarseWriter:
    """Random tensors under the coarse model's names (microsoft/FIBER coarse_grained/fiber/modules:
    fiber_module.py, swin_transformer.py, roberta.py), at the widths of a fiber_det config."""

    def __init__(self, cfg, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sw, self.lang = cfg.MODEL.SWIN, cfg.MODEL.LANGUAGE
        self.n_fuse = cfg.MODEL.FIBER.NUM_FUSION_LAYERS
        self.dims = [self.sw.EMBED_DIM * 2**i for i in range(len(self.sw.DEPTHS))]
        self.sd, self.fused_dims = {}, []

    def t(self, key, *shape, dtype=torch.float32):
        self.sd[key] = torch.randn(shape, generator=self.g).to(dtype)

    def linear(self, key, out_dim, in_dim):
        self.t(key + ".weight", out_dim, in_dim)
        self.t(key + ".bias", out_dim)

    def norm(self, key, dim):
        self.t(key + ".weight", dim)
        self.t(key + ".bias", dim)

    def swin_block(self, p, c, heads, fused):
        win, d_txt = self.sw.WINDOW_SIZE, self.lang.HIDDEN_SIZE
        self.norm(p + "norm1", c)
        self.norm(p + "norm2", c)
        self.t(p + "attn.relative_position_bias_table", (2 * win - 1) ** 2, heads)
        self.t(p + "attn.relative_position_index", win * win, win * win, dtype=torch.long)
        self.linear(p + "attn.qkv", 3 * c, c)
        self.linear(p + "attn.proj", c, c)
        self.linear(p + "mlp.fc1", 4 * c, c)
        self.linear(p + "mlp.fc2", c, 4 * c)
        if fused:
            self.linear(p + "attn.qkv_text_i2t", 2 * c, d_txt)
            self.linear(p + "attn.qkv_i2t", c, c)
            self.linear(p + "attn.proj_i2t", c, c)
            self.t(p + "attn.alpha_i2t", 1)
            self.norm(p + "attn.norm_i2t_i", c)  # the coarse Swin always has it
            self.fused_dims.append(c)

    def swin(self):
        depths, dims, win = list(self.sw.DEPTHS), self.dims, self.sw.WINDOW_SIZE
        self.t("vit_model.patch_embed.proj.weight", dims[0], 3, 4, 4)
        self.t("vit_model.patch_embed.proj.bias", dims[0])
        self.norm("vit_model.patch_embed.norm", dims[0])
        for s, (depth, heads) in enumerate(zip(depths, self.sw.NUM_HEADS)):
            for i in range(depth):
                p = f"vit_model.layers.{s}.blocks.{i}."
                # coarse BasicLayer rule: text width in stages >= 2 except the first
                # depths[2] + depths[3] - NUM_FUSE_BLOCK blocks of stage 2 ("20 - NUM_FUSE_BLOCK")
                fused = s >= 2 and not (s == 2 and i < depths[2] + depths[3] - self.n_fuse)
                self.swin_block(p, dims[s], heads, fused)
                if i % 2:
                    self.t(p + "attn_mask", 4, win * win, win * win)
            if s < len(depths) - 1:
                self.t(
                    f"vit_model.layers.{s}.downsample.reduction.weight", 2 * dims[s], 4 * dims[s]
                )
                self.norm(f"vit_model.layers.{s}.downsample.norm", 4 * dims[s])
        self.norm("vit_model.norm", dims[-1])
        self.linear("vit_model.head", 10, dims[-1])

    def text(self):
        lang, d = self.lang, self.lang.HIDDEN_SIZE
        e = "text_transformer.embeddings."
        self.t(e + "word_embeddings.weight", lang.VOCAB_SIZE, d)
        self.t(e + "position_embeddings.weight", lang.MAX_POSITION_EMBEDDINGS, d)
        self.t(e + "token_type_embeddings.weight", lang.TYPE_VOCAB_SIZE, d)
        self.norm(e + "LayerNorm", d)
        self.t(e + "position_ids", 1, lang.MAX_POSITION_EMBEDDINGS, dtype=torch.long)
        first_fused = lang.NUM_LAYERS - self.n_fuse
        for i in range(lang.NUM_LAYERS):
            p = f"text_transformer.encoder.layer.{i}."
            blocks = {"attention": d}
            if i >= first_fused:
                blocks["crossattention_t2i"] = self.fused_dims[i - first_fused]
            for blk, kv in blocks.items():
                self.linear(p + f"{blk}.self.query", d, d)
                self.linear(p + f"{blk}.self.key", d, kv)
                self.linear(p + f"{blk}.self.value", d, kv)
                self.linear(p + f"{blk}.output.dense", d, d)
                self.norm(p + f"{blk}.output.LayerNorm", d)  # defined in both blocks
            self.linear(p + "intermediate.dense", lang.INTERMEDIATE_SIZE, d)
            self.linear(p + "output.dense", d, lang.INTERMEDIATE_SIZE)
            self.norm(p + "output.LayerNorm", d)
            self.t(p + "alpha_t2i", 1)  # every coarse text layer has a gate
        self.linear("text_transformer.pooler.dense", d, d)

    def coarse_only(self):
        d = self.lang.HIDDEN_SIZE
        for name, shape in {
            "cross_modal_text_transform.weight": (32, d),
            "cross_modal_image_transform.weight": (32, self.dims[-1]),
            "cross_modal_text_transform_itc.bias": (32,),
            "cross_modal_image_pooler.dense.weight": (32, 32),
            "cross_modal_text_pooler.dense.bias": (32,),
            "itm_score.fc.weight": (2, 64),
            "mlm_score.decoder.weight": (self.lang.VOCAB_SIZE, 32),
            "rank_output.weight": (1, 32),
            "temp": (),
            "image_queue": (32, 8),
            "queue_ptr": (1,),
        }.items():
            self.t(name, *shape)


def coarse_state_dict(cfg, seed: int = 0):
    """A synthetic coarse-grained FIBER state_dict for the model of ``cfg``."""
    w = _CoarseWriter(cfg, seed)
    w.swin()
    w.text()
    w.coarse_only()
    return w.sd


def _swin_and_text(model):
    swin = {n for n, _ in model.named_parameters() if n.startswith("backbone.body.")}
    text = {n for n, _ in model.named_parameters() if n.startswith("backbone.language.")}
    return swin, text


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_coarse_checkpoint_loads_every_expected_tensor(tiny_cfg, version):
    tiny_cfg.MODEL.FIBER.FUSION_VERSION = version
    model = build_model(tiny_cfg)
    sd = coarse_state_dict(tiny_cfg)
    report = load_coarse_pretrained(model, {f"module.{k}": v for k, v in sd.items()})
    swin, text = _swin_and_text(model)
    out_norms = {n for n in swin if re.match(r"backbone\.body\.norm\d\.", n)}
    assert len(out_norms) == 6
    assert report.num_loaded == len(swin) - 6 + len(text)
    assert report.loaded["swin i2t fusion"] == 2 * (7 + (2 if version == "v3" else 0))
    assert report.loaded["roberta t2i fusion"] == 2 * (8 + 1)  # q, k, v, dense (w, b), gate
    own = model.state_dict()
    for k in swin - out_norms:
        assert torch.equal(own[k], sd["vit_model." + k[len("backbone.body.") :]]), k
    for k in text:
        assert torch.equal(own[k], sd["text_transformer." + k[len("backbone.language.") :]]), k
    skipped = coarse_load_counts(report)
    assert skipped[next(r for r in skipped if r.startswith("coarse-only"))] == 11
    assert skipped["coarse Swin classifier and final norm (vit_model.head, vit_model.norm)"] == 4
    assert skipped["buffers rebuilt by the model"] == 5 + 1 + 1  # indices, position_ids, mask
    assert skipped["text pooler (text_transformer.pooler)"] == 2
    unused = next(r for r in skipped if r.startswith("defined but unused"))
    assert skipped[unused] == 1 + 2 * 2  # alpha_t2i of layer 0, cross-attn output LayerNorms
    v3_norm = "i2t query LayerNorm norm_i2t_i (v3 only; this model is v2)"
    assert skipped.get(v3_norm, 0) == (4 if version == "v2" else 0)
    assert len(report.missing["fpn"]) == 16 and "head" in report.missing
    assert set(report.missing["swin output norms (detection)"]) == out_norms
    assert any("output LayerNorm" in n for n in report.notes)


def test_coarse_checkpoint_through_model_weights(tiny_cfg, tmp_path):
    """MODEL.WEIGHTS = a coarse-grained .pt (Lightning layout): converted on load."""
    path = tmp_path / "fiber_coarse_init.pt"
    sd = coarse_state_dict(tiny_cfg, seed=1)
    torch.save({"state_dict": sd, "epoch": 3}, path)
    model = build_model(tiny_cfg)
    ckpt = FIBERCheckpointer(model, str(tmp_path / "out"))
    ckpt.load(str(path), checkpointables=[])
    assert ckpt.last_conversion_report.num_loaded > 100
    w = model.backbone.language.encoder.layer[2].crossattention_t2i.self.key.weight
    assert torch.equal(w, sd["text_transformer.encoder.layer.2.crossattention_t2i.self.key.weight"])


def test_swin_and_roberta_files_through_the_training_config(train_cfg, tmp_path):
    """MODEL.SWIN.WEIGHTS (timm layout) and MODEL.LANGUAGE.WEIGHTS (HF folder), MODEL.WEIGHTS
    empty: every tensor of the public files that the model has is loaded."""
    from transformers import RobertaConfig, RobertaModel

    swin_ref = timm.models.swin_transformer.SwinTransformer(
        img_size=128,
        patch_size=4,
        num_classes=10,
        embed_dim=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
    )
    torch.save(swin_ref.state_dict(), tmp_path / "swin_timm.pth")
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
    roberta = RobertaModel(rcfg)
    roberta.save_pretrained(tmp_path / "roberta")
    cfg = train_cfg(
        "MODEL.SWIN.WEIGHTS",
        str(tmp_path / "swin_timm.pth"),
        "MODEL.LANGUAGE.WEIGHTS",
        str(tmp_path / "roberta"),
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    swin_report, text_report = trainer.init_reports
    model = trainer.model
    swin, text = _swin_and_text(model)
    fusion_i2t = {n for n in swin if "_i2t" in n}
    public = [
        k
        for k in swin_ref.state_dict()
        if not re.search(r"relative_position_index|attn_mask", k)
        and not k.startswith(("head.", "norm."))
    ]
    assert swin_report.num_loaded == len(public)
    assert swin_report.num_loaded == len(swin) - len(fusion_i2t) - 6  # output norms are new
    fusion_t2i = {n for n in text if "_t2i" in n}
    assert text_report.num_loaded == len(text) - len(fusion_t2i) == 5 + 3 * 16  # emb + layers
    assert torch.equal(
        model.backbone.body.layers[1].downsample.reduction.weight,
        swin_ref.state_dict()["layers.2.downsample.reduction.weight"],  # timm: next stage
    )
    assert (tmp_path / "out" / "initialization.txt").is_file()


def test_convert_coarse_checkpoint_cli(tiny_cfg, tmp_path):

    from tests.paths import REPO_ROOT, load_tool

    src = tmp_path / "coarse.pt"
    sd = coarse_state_dict(tiny_cfg, seed=2)
    torch.save(sd, src)
    cli = load_tool("convert_coarse_checkpoint")
    out = tmp_path / "converted.pth"
    config = str(REPO_ROOT / "configs" / "tiny" / "fiber_tiny.yaml")
    assert cli.main([str(src), str(out), "--config-file", config, "--fusion-version", "v3"]) == 0
    model = torch.load(out, weights_only=True)["model"]
    key = "backbone.body.layers.3.blocks.0.attn.norm_i2t_i.weight"
    assert torch.equal(model[key], sd["vit_model.layers.3.blocks.0.attn.norm_i2t_i.weight"])
