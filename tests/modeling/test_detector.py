"""FIBERDetector end to end on the tiny config: training, empty images, batching, prompts."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fiber_det.utils.testing import detection_input, get_tiny_config

NAMES = ["red square", "blue circle", "green triangle"]


def _scene(seed: int, size=(128, 160)):
    """A noisy image with a red square and a blue disc: (image BGR 0..255, boxes, labels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.rand(3, h, w, generator=g) * 60
    boxes, labels = [], []
    x0, y0 = (
        int(torch.randint(0, w // 2 - 40, (1,), generator=g)),
        int(torch.randint(0, h - 48, (1,), generator=g)),
    )
    img[:, y0 : y0 + 40, x0 : x0 + 40] = torch.tensor([20.0, 20.0, 230.0])[:, None, None]  # BGR red
    boxes.append([x0, y0, x0 + 40, y0 + 40])
    labels.append(0)
    cx, cy, r = int(torch.randint(w // 2 + 20, w - 22, (1,), generator=g)), h // 2, 18
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[:, disc] = torch.tensor([230.0, 30.0, 30.0])[:, None]  # BGR blue
    boxes.append([cx - r, cy - r, cx + r, cy + r])
    labels.append(1)
    return img, torch.tensor(boxes, dtype=torch.float32), labels


@pytest.fixture
def tiny_model(tiny_cfg):
    return build_model(tiny_cfg)


def test_tiny_model_trains_and_loss_falls(tiny_model, tokenizer):
    model = tiny_model.train()
    data = []
    for s in range(4):
        img, boxes, labels = _scene(s)
        data.append(detection_input(tokenizer, img, NAMES, boxes, labels))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    totals = []
    with EventStorage():
        for it in range(40):
            batch = [data[(2 * it) % 4], data[(2 * it + 1) % 4]]
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            totals.append(total.item())
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.7 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"


def test_empty_images_and_half_empty_batches_train(tiny_model, tokenizer):
    model = tiny_model.train()
    img, boxes, labels = _scene(0)
    full = detection_input(tokenizer, img, NAMES, boxes, labels)
    empty = detection_input(tokenizer, _scene(1)[0], NAMES, torch.zeros(0, 4), [])
    with EventStorage():
        for batch in ([empty], [empty, empty], [full, empty], [empty, full]):
            model.zero_grad()
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            total.backward()
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    with EventStorage():
        only_empty = model([empty])
    # no positive anchor: box and centerness losses are exactly zero, the token loss is not
    assert only_empty["loss_reg"].item() == 0.0 and only_empty["loss_centerness"].item() == 0.0
    assert only_empty["loss_dot_product_token"].item() > 0.0


def _instances_close(a, b):
    assert len(a) == len(b)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)


def test_batched_inference_equals_single_image_runs(tiny_cfg, tokenizer):
    tiny_cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # random weights: keep every candidate
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # open the fusion gates so the prompt matters
            if p.shape == (1,):
                p.fill_(0.5)
    a = detection_input(tokenizer, _scene(0)[0], NAMES)
    b = detection_input(tokenizer, _scene(1)[0], ["person", "dog"])  # same size, another prompt
    with torch.no_grad():
        batched = model([a, b])
        single = [model([a])[0], model([b])[0]]
    for x, y in zip(batched, single):
        _instances_close(x["instances"], y["instances"])
    assert batched[0]["instances"].pred_classes.max() < len(NAMES)
    assert batched[1]["instances"].pred_classes.max() < 2


def test_multi_prompt_input_concatenates_labels(tiny_cfg, tokenizer):
    tiny_cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    model = build_model(tiny_cfg).eval()
    img = _scene(2)[0]
    first = detection_input(tokenizer, img, NAMES[:2])
    second = detection_input(tokenizer, img, NAMES[2:])
    keys = ("input_ids", "attention_mask", "positive_map")
    multi = {"image": img, "prompts": [{k: first[k] for k in keys}, {k: second[k] for k in keys}]}
    with torch.no_grad():
        merged = model([multi])[0]["instances"]
        one = model([first])[0]["instances"]
        two = model([second])[0]["instances"]
    assert len(merged) == len(one) + len(two)
    assert set(merged.pred_classes.tolist()) <= {0, 1, 2}
    from_second = merged[merged.pred_classes == 2]
    assert torch.allclose(from_second.scores.sort().values, two.scores.sort().values, atol=1e-6)
    assert (merged.scores[:-1] >= merged.scores[1:]).all()  # sorted by score


def test_outputs_are_rescaled_to_height_and_width(tiny_cfg, tokenizer):
    tiny_cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    model = build_model(tiny_cfg).eval()
    x = detection_input(tokenizer, _scene(0)[0], NAMES)
    with torch.no_grad():
        small = model([x])[0]["instances"]
        x2 = dict(x, height=256, width=320)
        big = model([x2])[0]["instances"]
    assert big.image_size == (256, 320)
    assert torch.allclose(big.pred_boxes.tensor, small.pred_boxes.tensor * 2, atol=1e-4)


def test_dcn_offset_quirk_is_a_switch(tokenizer_dir, tokenizer):
    x = detection_input(tokenizer, _scene(0)[0], NAMES)
    outs = []
    for quirk in (True, False):
        cfg = get_tiny_config(tokenizer_dir, ["MODEL.DYHEAD.EMULATE_DCN_OFFSET_QUIRK", quirk])
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            images = model.preprocess_image([x])
            ids, mask = model.preprocess_text([x])
            feats, text = model.backbone(images.tensor, ids, mask)
            outs.append(model.head(list(feats.values()), text).logits[0])
    assert outs[0].shape == outs[1].shape
    assert (outs[0] - outs[1]).abs().max() > 1e-6


def test_missing_inputs_are_clear_errors(tiny_model, tokenizer):
    x = detection_input(tokenizer, _scene(0)[0], NAMES)
    model = tiny_model.eval()
    with pytest.raises(KeyError, match="positive_map"):
        model([{k: v for k, v in x.items() if k != "positive_map"}])
    with pytest.raises(KeyError, match="input_ids.*tokenize_prompts"):
        model([{k: v for k, v in x.items() if k != "input_ids"}])
    model.train()
    with pytest.raises(KeyError, match="instances"), EventStorage():
        model([x])


def test_mixed_precision_train_and_inference_stay_finite(tiny_model, tokenizer):
    """Under autocast (bf16 on CPU; fp16 on GPU follows the same path) the deformable convs and
    the losses run in fp32, as the official AMP code does."""
    img, boxes, labels = _scene(0)
    x = detection_input(tokenizer, img, NAMES, boxes, labels)
    model = tiny_model.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([x])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inst = model([x])[0]["instances"]
    assert torch.isfinite(inst.scores).all()
