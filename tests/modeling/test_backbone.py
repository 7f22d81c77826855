"""The fusion backbone: layout, gates, the split forward, and any fusion size."""

import pytest
import torch
from detectron2.modeling import build_backbone

from fiber_det.modeling.backbone import FIBERBackbone
from fiber_det.modeling.backbone.roberta import position_ids_from_input_ids
from fiber_det.utils.testing import get_config, get_tiny_config


def _text(batch=2, length=16, vocab=900):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:  # the second prompt is shorter: padded
        ids[1, 10] = 2
        ids[1, 11:] = 1
        mask[1, 11:] = 0
    return ids, mask


def _open_gates(backbone: FIBERBackbone, value=0.7):
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(value)


@pytest.fixture
def tiny_backbone(tiny_cfg):
    return build_backbone(tiny_cfg).eval()


def test_tiny_forward_backward_on_cpu(tiny_cfg):
    bb = build_backbone(tiny_cfg).train()
    _open_gates(bb)
    images = torch.randn(2, 3, 128, 160)
    ids, mask = _text()
    feats, text = bb(images, ids, mask)
    loss = sum(f.float().mean() for f in feats.values()) + text.embedded.mean()
    loss.backward()
    grads = [p.grad for p in bb.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    shapes = bb.output_shape()
    assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
    for name, f in feats.items():
        stride = shapes[name].stride
        assert f.shape == (2, shapes[name].channels, -(-128 // stride), -(-160 // stride))
    assert text.hidden.shape == (2, 16, tiny_cfg.MODEL.LANGUAGE.HIDDEN_SIZE)
    # gradients reach both modalities and both directions of the fusion
    grads = {n: p.grad for n, p in bb.named_parameters()}
    for key in (
        "attn.qkv_i2t.weight",
        "crossattention_t2i.self.query.weight",
        "patch_embed.proj.weight",
    ):
        g = [v for n, v in grads.items() if key in n]
        assert g and all(v is not None and v.abs().sum() > 0 for v in g), key


def test_gates_start_closed_so_fusion_is_identity_at_init(tiny_backbone):
    """alpha = 0: image features ignore the prompt and text features ignore the image; opening
    the gates couples them."""
    bb = tiny_backbone
    image_a, image_b = torch.randn(1, 3, 96, 96), torch.randn(1, 3, 96, 96)
    ids, mask = _text(batch=1)
    other_ids = ids.clone()
    other_ids[0, 1:8] = torch.arange(100, 107)

    def run():
        with torch.no_grad():
            return bb(image_a, ids, mask), bb(image_b, ids, mask), bb(image_a, other_ids, mask)

    (fa, ta), (fb, tb), (fc, tc) = run()
    assert torch.equal(ta.hidden, tb.hidden)  # the image does not reach the text
    assert all(torch.equal(fa[k], fc[k]) for k in fa)  # the prompt does not reach the image
    _open_gates(bb)
    (fa, ta), (fb, tb), (fc, tc) = run()
    assert (ta.hidden - tb.hidden).abs().max() > 1e-4
    assert (fa["p5"] - fc["p5"]).abs().max() > 1e-4


def test_split_forward_equals_full_forward_and_shares_one_image(tiny_backbone):
    bb = tiny_backbone
    _open_gates(bb)
    image = torch.randn(1, 3, 128, 128)
    ids, mask = _text(batch=2)
    with torch.no_grad():
        state = bb.encode_image(image)
        shared_feats, shared_text = bb.fuse(state, bb.encode_text(ids, mask))
        for i in range(2):
            feats, text = bb(image, ids[i : i + 1], mask[i : i + 1])
            for name in feats:
                assert torch.allclose(feats[name][0], shared_feats[name][i], atol=1e-5), name
            assert torch.allclose(text.hidden[0], shared_text.hidden[i], atol=1e-5)


def test_fiber_b_layout_matches_the_official_model():
    """Fused blocks/layers, widths and parameter counts of official FIBER-B (anatomy 2.2, 2.7)."""
    bb = build_backbone(get_config("fiber_b/official_parity_v2.yaml"))
    fused_blocks = sorted(
        n[: -len(".attn.alpha_i2t")]
        for n, _ in bb.body.named_parameters()
        if n.endswith("alpha_i2t")
    )
    assert fused_blocks == [f"layers.2.blocks.{b}" for b in (14, 15, 16, 17)] + [
        "layers.3.blocks.0",
        "layers.3.blocks.1",
    ]
    fused_layers = {
        int(n.split(".")[2]): p.shape[1]
        for n, p in bb.language.named_parameters()
        if n.endswith("crossattention_t2i.self.key.weight")
    }
    assert fused_layers == {6: 512, 7: 512, 8: 512, 9: 512, 10: 1024, 11: 1024}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(bb.body) / 1e6, 2) == 99.48
    assert round(count(bb.language) / 1e6, 2) == 137.44
    assert round(count(bb.fpn) / 1e6, 2) == 3.41
    v3 = build_backbone(get_config("fiber_b/official_parity_v3.yaml"))
    assert count(v3) - count(bb) == 8192  # six LayerNorms on the i2t query (anatomy 2.7)


@pytest.mark.parametrize("num_fused,text_layers", [(0, 3), (1, 3), (3, 3), (5, 5)])
def test_any_number_of_fused_layers(tokenizer_dir, num_fused, text_layers):
    """0 = no fusion; 5 = every Swin block of the tiny model, stage 0 included."""
    cfg = get_tiny_config(
        tokenizer_dir,
        ["MODEL.FIBER.NUM_FUSION_LAYERS", num_fused, "MODEL.LANGUAGE.NUM_LAYERS", text_layers],
    )
    bb = build_backbone(cfg).eval()
    n_alpha = sum(1 for n, _ in bb.named_parameters() if n.endswith("alpha_i2t"))
    assert n_alpha == num_fused
    ids, mask = _text(batch=1)
    with torch.no_grad():
        feats, text = bb(torch.randn(1, 3, 64, 96), ids, mask)
    assert feats["p3"].shape[-2:] == (8, 12)


def test_fusion_count_larger_than_the_text_encoder_is_a_clear_error(tokenizer_dir):
    cfg = get_tiny_config(tokenizer_dir, ["MODEL.FIBER.NUM_FUSION_LAYERS", 4])
    with pytest.raises(ValueError, match="fused layers requested but RoBERTa has 3"):
        build_backbone(cfg)


def test_any_swin_and_roberta_size(tokenizer_dir):
    cfg = get_tiny_config(
        tokenizer_dir,
        [
            "MODEL.SWIN.EMBED_DIM",
            48,
            "MODEL.SWIN.DEPTHS",
            [2, 2, 2, 2],
            "MODEL.SWIN.NUM_HEADS",
            [3, 6, 12, 24],
            "MODEL.SWIN.WINDOW_SIZE",
            7,
            "MODEL.LANGUAGE.HIDDEN_SIZE",
            96,
            "MODEL.LANGUAGE.NUM_LAYERS",
            4,
            "MODEL.LANGUAGE.NUM_HEADS",
            3,
            "MODEL.FIBER.NUM_FUSION_LAYERS",
            3,
            "MODEL.FIBER.FUSION_VERSION",
            "v3",
        ],
    )
    bb = build_backbone(cfg).eval()
    ids, mask = _text(batch=1)
    with torch.no_grad():
        feats, text = bb(torch.randn(1, 3, 96, 64), ids, mask)
    assert text.hidden.shape[-1] == 96
    assert feats["p5"].shape == (1, 64, 3, 2)


def test_roberta_positions_start_after_padding_idx():
    ids = torch.tensor([[0, 10, 11, 2, 1, 1]])
    assert position_ids_from_input_ids(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1]]


# -- bad input ----------------------------------------------------------------------------------
def test_image_not_multiple_of_32_is_a_clear_error(tiny_backbone):
    ids, mask = _text(batch=1)
    with pytest.raises(ValueError, match=r"100x128 is not a multiple of 32.*size_divisibility=32"):
        tiny_backbone(torch.randn(1, 3, 100, 128), ids, mask)


def test_empty_prompt_is_a_clear_error(tiny_backbone):
    ids, mask = _text(batch=2)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"empty prompt .* batch items \[1\]"):
        tiny_backbone(torch.randn(2, 3, 64, 64), ids, mask)


def test_prompt_longer_than_the_position_table_is_a_clear_error(tiny_backbone):
    ids, mask = _text(batch=1, length=200)  # tiny: 130 positions -> at most 128 tokens
    with pytest.raises(
        ValueError, match=r"200 tokens exceeds the text encoder's maximum of 128.*tokenize_prompts"
    ):
        tiny_backbone(torch.randn(1, 3, 64, 64), ids, mask)


def test_mismatched_batches_are_a_clear_error(tiny_backbone):
    ids, mask = _text(batch=2)
    with pytest.raises(ValueError, match="batch of 3 images and 2 prompts"):
        tiny_backbone(torch.randn(3, 3, 64, 64), ids, mask)


def _reference_windows(x, h, w, ws, shift):
    """Swin's pad, roll and partition as written in the Swin release: (B, H*W, C) -> windows."""
    b, _, c = x.shape
    pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
    x = torch.nn.functional.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = h + pad_b, w + pad_r
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    return x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, c)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (12, 5), (3, 3)])
@pytest.mark.parametrize("shift", [0, 2])
def test_window_gather_index_is_pad_roll_and_partition(h, w, shift):
    """The gather indices move exactly the values of Swin's pad + roll + partition, and the
    inverse gather restores the token order (bitwise: a permutation with zeros)."""
    from fiber_det.modeling.backbone.swin import window_gather_index

    ws = 4
    x = torch.randn(2, h * w, 3)
    src, pad_slots, inverse = window_gather_index(h, w, ws, shift, x.device)
    windows = x.index_select(1, src)
    if pad_slots is not None:
        windows.index_fill_(1, pad_slots, 0.0)
    assert torch.equal(windows, _reference_windows(x, h, w, ws, shift))
    assert torch.equal(windows.index_select(1, inverse), x)
    assert (pad_slots is None) == (h % ws == 0 and w % ws == 0)


@pytest.mark.slow  # dynamo traces every block: tens of seconds even for the tiny model
def test_compiled_backbone_equals_eager(tokenizer_dir):
    """MODEL.FIBER.COMPILE_BACKBONE compiles the blocks in place (parameter names kept) and
    gives the eager outputs; "aot_eager" runs dynamo and AOT autograd without a C++ compiler."""
    cfg = get_tiny_config(tokenizer_dir)
    eager = build_backbone(cfg).eval()
    _open_gates(eager)
    cfg.MODEL.FIBER.COMPILE_BACKBONE = True
    cfg.MODEL.FIBER.COMPILE_BACKEND = "aot_eager"
    compiled = build_backbone(cfg).eval()
    compiled.load_state_dict(eager.state_dict())  # same names: checkpoints load as before
    assert compiled.body.layers[0].blocks[0]._compiled_call_impl is not None
    images = torch.randn(1, 3, 64, 96)
    ids, mask = _text()
    with torch.no_grad():
        ref, ref_text = eager(images, ids[:1], mask[:1])
        got, got_text = compiled(images, ids[:1], mask[:1])
    for a, b in zip(ref.values(), got.values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ref_text.hidden, got_text.hidden, atol=1e-5, rtol=1e-5)


def test_compile_blocks_leaves_room_for_every_block(tokenizer_dir, monkeypatch):
    """Each compiled block recompiles the same forward code; with dynamo's default limit (8)
    FIBER-B's 24 Swin blocks would run eagerly past the 8th, so compile_blocks raises it."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    cfg = get_tiny_config(tokenizer_dir, ["MODEL.SWIN.DEPTHS", [2, 2, 6, 2]])
    backbone = build_backbone(cfg)
    blocks = [b for stage in backbone.body.layers for b in stage.blocks]
    assert len(blocks) == 12
    backbone.compile_blocks("eager")
    assert torch._dynamo.config.recompile_limit >= len(blocks)
    assert blocks[-1]._compiled_call_impl is not None
