"""The coarse-grained model on the tiny config: contract, uni-modal and fused paths, training."""

import pytest
import torch

from fiber_det.checkpoint.pretrained import load_swin_pretrained
from fiber_det.modeling import FIBERCoarse
from fiber_det.modeling.backbone import FusionSwinTransformer
from fiber_det.modeling.coarse import ITCQueue
from fiber_det.modeling.coarse import losses as L
from fiber_det.modeling.coarse.retrieval import index_states

from .coarse_inputs import VOCAB, pairs, stacked, tiny_coarse_model


@pytest.fixture(scope="module")
def model():
    return tiny_coarse_model().eval()


def test_contract_shapes_and_normalisation(model):
    images, ids, mask = stacked(pairs(3, seed=1))
    with torch.no_grad():
        image_cls, text_cls = model.encode_itc(images, ids, mask)
        only_image = model.encode_itc(images=images)
        only_text = model.encode_itc(input_ids=ids, attention_mask=mask)
        itm = model.itm_logits(images, ids, mask)
        mlm = model.mlm_logits(images, ids, mask)
    assert isinstance(model, FIBERCoarse)
    assert image_cls.shape == text_cls.shape == (3, 64)
    assert torch.allclose(image_cls.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(text_cls.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert only_image[1] is None and torch.equal(only_image[0], image_cls)
    assert only_text[0] is None and torch.equal(only_text[1], text_cls)
    assert itm.shape == (3, 2)
    assert mlm.shape == (3, 16, VOCAB)


def test_public_fused_methods_equal_the_cached_state_path(model):
    """itm_logits / mlm_logits of aligned pairs == the fused tail on pre-fusion states selected
    per pair (what the parity test and the retrieval scorer run)."""
    images, ids, mask = stacked(pairs(3, seed=2))
    img_idx, txt_idx = torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        full = model.itm_logits(images[img_idx], ids[txt_idx], mask[txt_idx])
        full_mlm = model.mlm_logits(images[img_idx], ids[txt_idx], mask[txt_idx])
        out = model.fuse_states(
            index_states(model.encode_image_prefusion(images), img_idx),
            index_states(model.encode_text_prefusion(ids, mask), txt_idx),
        )
    assert torch.allclose(model.itm_score(out.cls_feats), full, atol=1e-5)
    assert torch.allclose(model.mlm_score(out.text_feats), full_mlm, atol=1e-4)


@pytest.mark.parametrize("shift_single_window", [False, True])
def test_uni_modal_swin_is_timm_classification_swin(shift_single_window):
    """With timm's Swin weights, the coarse Swin's uni-modal path (every block, cross-attention
    off, the one-window last stage not shifted, final norm) reproduces timm's forward_features;
    detection-style shifting of that stage (True) does not."""
    timm = pytest.importorskip("timm")
    arch = dict(embed_dim=32, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8), window_size=2)
    torch.manual_seed(5)
    ref = timm.models.swin_transformer.SwinTransformer(
        img_size=64, patch_size=4, num_classes=10, **arch
    ).eval()
    swin = FusionSwinTransformer(
        **arch,
        num_fused_blocks=3,
        text_dim=64,
        fusion_version="v3",
        out_indices=(),
        shift_single_window=shift_single_window,
        final_norm=True,
    ).eval()
    report = load_swin_pretrained(swin, ref.state_dict())
    assert "norm.weight" not in str(report.skipped)  # the final norm loads into this Swin
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref.forward_features(x).flatten(1, 2)
        ours = swin.norm(swin.run(swin.embed(x), sum(arch["depths"]), fusion=False).tokens)
    assert torch.allclose(ours, want, atol=1e-4) != shift_single_window


def test_last_text_layer_skips_its_output_norm(model):
    """The fused path's last text layer returns its residual sum without the output LayerNorm."""
    images, ids, mask = stacked(pairs(2, seed=3))
    bb = model.backbone
    with torch.no_grad():
        image, text = bb.encode_image(images), bb.encode_text(ids, mask)
        _, raw = bb.fused_tail(image, text, last_text_norm=False)
        _, normed = bb.fused_tail(image, text, last_text_norm=True)
        last_norm = bb.language.encoder.layer[-1].output.LayerNorm
        out = model.fuse_states(image, text)
    assert torch.allclose(last_norm(raw.hidden), normed.hidden, atol=1e-5)
    assert not torch.allclose(raw.hidden, normed.hidden, atol=1e-2)
    assert torch.allclose(out.text_feats, model.cross_modal_text_transform(raw.hidden), atol=1e-6)


def _train(model, batch, steps, lr=1e-3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def test_a_few_training_steps_reduce_the_losses():
    model = tiny_coarse_model(seed=1).train()
    batch = pairs(4, seed=4)
    history = _train(model, batch, steps=6)
    assert set(history[0]) == {"loss_itc", "loss_itm", "loss_mlm"}
    for key in ("loss_itm", "loss_mlm"):
        assert history[-1][key] < history[0][key], (key, history)
    assert sum(history[-1].values()) < sum(history[0].values())
    q = model.queue
    assert int(q.queue_total) == 24 and int(q.queue_ptr) == 24 % q.size
    assert q.image_input_queue.shape == (q.size, 3, 64, 64)


def test_temperature_is_clamped_to_the_official_range():
    model = tiny_coarse_model().train()
    batch = pairs(2, seed=5)
    for value, clamped in ((5.0, 1.0), (1e-5, 1e-3)):
        with torch.no_grad():
            model.temp.fill_(value)
        model(batch)
        assert float(model.temp.detach()) == pytest.approx(clamped)


def test_queue_starts_random_and_unnormalised_unless_asked():
    default = tiny_coarse_model().queue
    norms = default.image_queue.norm(dim=0)
    assert norms.mean() > 4  # randn columns of 64 values: norm ~8
    normalised = tiny_coarse_model(["MODEL.COARSE.NORMALIZE_QUEUE_INIT", True]).queue
    assert torch.allclose(normalised.text_queue.norm(dim=0), torch.ones(8), atol=1e-5)
    assert int(default.queue_total) == 0 and default.image_input_queue.numel() == 0


@pytest.mark.parametrize(
    "opts, expected",
    [
        (["MODEL.COARSE.HARD_NEGATIVES_FROM_QUEUE", False], {"loss_itc", "loss_itm", "loss_mlm"}),
        (["MODEL.COARSE.ITC_LOSS_WEIGHT", 0.0, "MODEL.COARSE.MLM_LOSS_WEIGHT", 0.0], {"loss_itm"}),
        (["MODEL.COARSE.ITM_LOSS_WEIGHT", 0.0, "MODEL.COARSE.ITC_LOSS_WEIGHT", 0.0], {"loss_mlm"}),
    ],
    ids=["batch-negatives", "itm-only", "mlm-only"],
)
def test_loss_switches(opts, expected):
    model = tiny_coarse_model(opts).train()
    batch = pairs(3, seed=6)
    if "loss_mlm" not in expected:  # a mapper without MLM need not produce its inputs
        batch = [{k: v for k, v in x.items() if not k.startswith("mlm_")} for x in batch]
    losses = model(batch)
    assert set(losses) == expected
    sum(losses.values()).backward()
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("mlm_score.") for n in names) == ("loss_mlm" in expected)
    assert any(n.startswith("itm_score.") for n in names) == ("loss_itm" in expected)
    if "HARD_NEGATIVES_FROM_QUEUE" in opts[0]:
        assert "queue.image_input_queue" not in model.state_dict()


def test_loss_weights_scale_the_losses():
    batch = pairs(3, seed=7)
    base = tiny_coarse_model(seed=2).train()(batch)
    torch.manual_seed(9)
    weighted = tiny_coarse_model(["MODEL.COARSE.MLM_LOSS_WEIGHT", 2.5], seed=2).train()(batch)
    want = 2.5 * float(base["loss_mlm"].detach())
    assert float(weighted["loss_mlm"].detach()) == pytest.approx(want, rel=1e-5)


def test_inference_forward_gives_itc_embeddings(model):
    batch = pairs(2, seed=8)
    with torch.no_grad():
        out = model(batch)
        image_cls, text_cls = model.encode_itc(*stacked(batch))
    assert torch.allclose(out[1]["image_embedding"], image_cls[1])
    assert torch.allclose(out[0]["text_embedding"], text_cls[0])


def test_bad_inputs_get_clear_errors(model):
    images, ids, mask = stacked(pairs(2, seed=9))
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\).*INPUT.COARSE.IMAGE_SIZE"):
        model.encode_itc(images=torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        model.itm_logits(torch.randn(2, 64, 64), ids, mask)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"empty .*items \[1\]"):
        model.encode_itc(input_ids=ids, attention_mask=empty)
    with pytest.raises(ValueError, match="both input_ids and attention_mask"):
        model.encode_itc(input_ids=ids)
    bad = pairs(2, seed=9)
    del bad[1]["attention_mask"]
    with pytest.raises(KeyError, match=r"\[1\] have no 'attention_mask'"):
        model(bad)
    with pytest.raises(ValueError, match="WINDOW_SIZE 2 does not fit INPUT.COARSE.IMAGE_SIZE 96"):
        tiny_coarse_model(["INPUT.COARSE.IMAGE_SIZE", 96])


def test_queue_ring_buffer_grows_wraps_and_counts():
    q = ITCQueue(dim=4, size=5, image_size=8, text_len=6, pad_token_id=1)
    for step in range(3):
        feats = torch.full((2, 4), float(step))
        images = torch.full((2, 3, 8, 8), float(step))
        ids = torch.full((2, 3), 10 + step)
        q.enqueue(feats, -feats, images, ids, torch.ones(2, 3, dtype=torch.long))
        assert q.image_input_queue.shape[0] == (2, 4, 5)[step]  # grows with what is written
    assert int(q.queue_ptr) == 1 and int(q.queue_total) == 6 and q.num_filled == 5
    # slots: step 0 -> 0, 1; step 1 -> 2, 3; step 2 -> 4, 0 (wrapped)
    assert q.image_queue[0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]
    assert q.text_queue[0].tolist() == [-2.0, -0.0, -1.0, -1.0, -2.0]
    images, ids, mask = q.filled_inputs()
    assert images[:, 0, 0, 0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]
    assert ids[1].tolist() == [10, 10, 10, 1, 1, 1] and mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="does not fit an ITC queue of 5"):
        q.enqueue(torch.zeros(6, 4), torch.zeros(6, 4), torch.zeros(6, 3, 8, 8), ids, ids)
    with pytest.raises(ValueError, match="MAX_TEXT_LEN 6"):
        q.pad_text(torch.zeros(2, 7, dtype=torch.long), 1)
    q.reset()
    assert q.num_filled == 0 and int(q.queue_ptr) == 0


def test_hard_negative_weights_and_sampling():
    sim = torch.tensor([[5.0, 1.0, 0.0, 9.0], [1.0, 5.0, 2.0, 9.0]])
    w_i2t, w_t2i = L.hard_negative_weights(sim, sim.flip(0), 3, torch.arange(2))
    assert w_i2t.shape == (2, 3)  # the unfilled column 3 is no candidate
    assert w_i2t[0, 0] == 0 and w_i2t[1, 1] == 0  # never the pair itself
    full = torch.softmax(sim[:, :3], dim=1)
    assert torch.allclose(w_i2t[0, 1:], full[0, 1:]) and torch.allclose(
        w_i2t[1, [0, 2]], full[1, [0, 2]]
    )
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([torch.stack(L.sample_hard_negatives(w_i2t, w_t2i, g)) for _ in range(200)])
    neg_text = picks[:, 1]
    assert (neg_text[:, 0] != 0).all() and (neg_text[:, 1] != 1).all()
    share = (neg_text[:, 1] == 2).float().mean()  # text 2 is the likelier negative of image 1
    assert abs(share - full[1, 2] / (full[1, 0] + full[1, 2])) < 0.1
