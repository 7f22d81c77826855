"""Cached multi-prompt inference equals one full forward per prompt."""

import torch
from detectron2.modeling import build_model

from fiber_det.utils.testing import prompt_input, unmatched_instances

VOCAB = ["person", "bicycle", "car", "dog", "cat", "horse", "red circle", "blue square", "bench"]


def _prompts(tokenizer, chunks, max_length=64, pad_to_max=True):
    return [prompt_input(tokenizer, names, max_length, pad_to_max) for names in chunks]


def _model(cfg, cached):
    cfg = cfg.clone()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.MODEL.FIBER.CACHED_MULTI_PROMPT = cached
    cfg.MODEL.FIBER.PROMPT_BATCH_SIZE = 2
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.6)  # open the gates: prompts must change the image features
    return model


def _same(a, b):
    """Same detections, order-free (near-tied scores may swap places)."""
    missing = unmatched_instances(a, b, box_tol=1e-3, score_tol=1e-5)
    assert not missing, missing[:3]


def test_cached_equals_naive_on_the_tiny_model(tiny_cfg, tokenizer):
    chunks = [VOCAB[0:3], VOCAB[3:5], VOCAB[5:8], VOCAB[8:]]  # 4 prompts, batches of 2
    # unpadded prompts of different lengths exercise the padding of stacked text states
    prompts = _prompts(tokenizer, chunks, pad_to_max=False)
    image = torch.rand(3, 96, 128) * 255
    x = {"image": image, "height": 192, "width": 256, "prompts": prompts}
    naive, cached = _model(tiny_cfg, False), _model(tiny_cfg, True)
    with torch.no_grad():
        a = naive([x])[0]["instances"]
        b = cached([x])[0]["instances"]
    assert len(a) > 0 and a.pred_classes.max() >= 8  # labels of the last prompt are offset
    _same(a, b)


def test_batched_tail_logits_equal_single_prompt_logits(tiny_cfg, tokenizer):
    model = _model(tiny_cfg, True)
    prompts = _prompts(tokenizer, [VOCAB[:3], VOCAB[3:6], VOCAB[6:]])
    image = model.preprocess_image([{"image": torch.rand(3, 64, 64) * 255}]).tensor
    with torch.no_grad():
        state = model.backbone.encode_image(image)
        texts = [
            model.backbone.encode_text(p["input_ids"][None], p["attention_mask"][None])
            for p in prompts
        ]
        from fiber_det.modeling.meta_arch.multi_prompt import stack_text_states

        feats, text = model.backbone.fuse(state, stack_text_states(texts))
        batched = model.head(list(feats.values()), text).logits
        for j, p in enumerate(prompts):
            f1, t1 = model.backbone(image, p["input_ids"][None], p["attention_mask"][None])
            single = model.head(list(f1.values()), t1).logits
            for lb, ls in zip(batched, single):
                assert (lb[j] - ls[0]).abs().max() < 1e-5


def test_text_cache_reuses_prompts_across_images(tiny_cfg, tokenizer):
    model = _model(tiny_cfg, True)
    prompts = _prompts(tokenizer, [VOCAB[:4], VOCAB[4:]])
    with torch.no_grad():
        model([{"image": torch.rand(3, 64, 64) * 255, "prompts": prompts}])
        assert (model.text_cache.misses, model.text_cache.hits) == (2, 0)
        model([{"image": torch.rand(3, 64, 96) * 255, "prompts": prompts}])
        assert (model.text_cache.misses, model.text_cache.hits) == (2, 2)
        model.train()
        model.eval()  # a mode change alone leaves the weights, hence the cache, valid
        model([{"image": torch.rand(3, 64, 64) * 255, "prompts": prompts}])
        assert (model.text_cache.misses, model.text_cache.hits) == (2, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # other dtype: other entries
            model([{"image": torch.rand(3, 64, 64) * 255, "prompts": prompts}])
        assert (model.text_cache.misses, model.text_cache.hits) == (4, 4)
    with torch.enable_grad():  # with autograd (e.g. attribution), nothing comes from the cache
        model([{"image": torch.rand(3, 64, 64) * 255, "prompts": prompts}])
    assert (model.text_cache.misses, model.text_cache.hits) == (4, 4)


def _weight_edits(model):
    text = model.backbone.language
    with torch.no_grad():  # in place, as an optimizer step or a manual edit does
        yield "in-place edit", lambda: text.embeddings.word_embeddings.weight.mul_(1.5)
        yield "pre-fusion layer edit", lambda: text.encoder.layer[0].output.dense.weight.mul_(3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.language.embeddings.LayerNorm.bias"] += 0.5
    yield "load_state_dict", lambda: model.load_state_dict(state)


def test_text_cache_is_invalidated_by_weight_changes(tiny_cfg, tokenizer):
    """After each change of the text encoder's weights the cached path equals a model without
    cache on the new weights (and differs from before the change: the edit matters)."""
    cached, naive = _model(tiny_cfg, True), _model(tiny_cfg, False)
    prompts = _prompts(tokenizer, [VOCAB[:4], VOCAB[4:]])
    x = {"image": torch.rand(3, 64, 96) * 255, "prompts": prompts}
    with torch.no_grad():
        before = cached([x])[0]["instances"]
    for name, edit in _weight_edits(cached):
        edit()
        naive.load_state_dict(cached.state_dict())
        misses = cached.text_cache.misses
        with torch.no_grad():
            got, ref = cached([x])[0]["instances"], naive([x])[0]["instances"]
        assert cached.text_cache.misses == misses + len(prompts), name
        assert not unmatched_instances(ref, got, box_tol=1e-4, score_tol=1e-6), name
        assert unmatched_instances(before, got, box_tol=1e-4, score_tol=1e-6), name
        before = got
