"""Helpers for tests and quick experiments: a tiny config, an offline tokenizer, model inputs.

Mirrors ``detectron2.utils.testing``: everything runs on CPU without network or weights.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from ..config import load_config
from ..text import (
    build_detection_prompt,
    build_offline_tokenizer,
    spans_to_positive_map,
    tokenize_prompts,
)

__all__ = [
    "TEST_VOCABULARY",
    "get_config",
    "get_tiny_config",
    "build_test_tokenizer",
    "detection_input",
    "prompt_input",
    "unmatched_detections",
    "unmatched_instances",
]

# Words of the synthetic demo, COCO-like names and punctuation: enough for an offline BPE
# tokenizer whose tokens behave like RoBERTa's (leading-space tokens, sub-words).
TEST_VOCABULARY = (
    "a an the of and with left right above below next to near small big large tiny huge "
    "red green blue yellow orange purple white black gray pink brown cyan "
    "circle square triangle star diamond hexagon ring cross shape shapes object objects "
    "person bicycle car motorcycle airplane bus train truck boat dog cat horse sheep cow bird "
    "traffic light fire hydrant stop sign parking meter bench bottle cup fork knife spoon bowl "
    "bow weapon aerosol can air conditioner hat helmet leash without not is on in at "
    "man woman child people wearing holding shirt jacket standing sitting "
).split()


def build_test_tokenizer(out_dir, extra_texts: Sequence[str] = (), vocab_size: int = 1000):
    """Offline byte-level BPE tokenizer (RoBERTa special tokens) trained on TEST_VOCABULARY."""
    words = list(TEST_VOCABULARY)
    texts = [" ".join(words)] * 20 + words + [f"{w}. " for w in words] + list(extra_texts)
    return build_offline_tokenizer(texts, out_dir, vocab_size=vocab_size)


def get_config(config_file: str, opts: List | None = None) -> CfgNode:
    """A mutable CPU config with the FIBER keys from a yaml file or a shipped config
    (``"tiny/fiber_tiny.yaml"``: :func:`fiber_det.model_zoo.get_config_file`)."""
    return load_config(config_file, opts or (), device="cpu", freeze=False)


def get_tiny_config(tokenizer_dir=None, opts: List | None = None) -> CfgNode:
    """The tiny CPU config (configs/tiny/fiber_tiny.yaml), optionally with a tokenizer folder."""
    cfg = get_config("tiny/fiber_tiny.yaml", opts)
    if tokenizer_dir is not None:
        cfg.MODEL.LANGUAGE.TOKENIZER = str(tokenizer_dir)
    return cfg


def prompt_input(
    tokenizer, names: Sequence[str], max_length: int = 64, pad_to_max: bool = True
) -> Dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (L,) and ``positive_map`` (len(names), L) of the
    detection prompt of ``names`` (one entry of a model input's ``prompts``)."""
    prompt = build_detection_prompt(names)
    tok = tokenize_prompts(
        tokenizer, [prompt.caption], max_length=max_length, pad_to_max=pad_to_max
    )
    pmap = spans_to_positive_map(tok.encodings, prompt.spans, tok.input_ids.shape[1])
    return {
        "input_ids": tok.input_ids[0],
        "attention_mask": tok.attention_mask[0],
        "positive_map": pmap,
    }


def detection_input(
    tokenizer,
    image: torch.Tensor,
    names: Sequence[str],
    boxes: torch.Tensor | None = None,
    box_labels: Sequence[int] | None = None,
    max_length: int = 64,
) -> Dict:
    """A model input dict for ``image`` queried with a detection prompt of ``names``.

    With ``boxes`` (G, 4 xyxy) and ``box_labels`` (index into ``names``), adds training
    ``instances`` whose positive maps are the rows of the named labels.
    """
    out = {"image": image, "height": image.shape[-2], "width": image.shape[-1]}
    out.update(prompt_input(tokenizer, names, max_length))
    pmap = out["positive_map"]
    if boxes is not None:
        inst = Instances(tuple(image.shape[-2:]))
        inst.gt_boxes = Boxes(boxes.float())
        labels = list(box_labels or [])
        inst.positive_map = pmap[labels] if labels else torch.zeros(0, pmap.shape[1])
        inst.gt_classes = torch.tensor(labels, dtype=torch.long)
        out["instances"] = inst
    return out


def unmatched_detections(
    boxes_a: torch.Tensor,
    scores_a: torch.Tensor,
    labels_a: torch.Tensor,
    boxes_b: torch.Tensor,
    scores_b: torch.Tensor,
    labels_b: torch.Tensor,
    box_tol: float = 0.01,
    score_tol: float = 1e-4,
) -> list:
    """Detections of A without a partner in B (same label, scores within ``score_tol``, box
    corners within ``box_tol`` px), matched one to one, order-free. Empty when A == B."""
    if len(boxes_a) != len(boxes_b):
        return [f"{len(boxes_a)} vs {len(boxes_b)} detections"]
    boxes_a, scores_a, labels_a = boxes_a.cpu(), scores_a.cpu(), labels_a.cpu()
    boxes_b, scores_b, labels_b = boxes_b.cpu(), scores_b.cpu(), labels_b.cpu()
    unused = torch.ones(len(boxes_b), dtype=torch.bool)
    missing = []
    for box, score, label in zip(boxes_a, scores_a, labels_a):
        ok = (
            unused
            & (labels_b == label)
            & ((scores_b - score).abs() < score_tol)
            & ((boxes_b - box).abs().max(dim=1).values < box_tol)
        )
        if not ok.any():
            missing.append((box.tolist(), float(score), int(label)))
            continue
        # closest partner first, so near-duplicates pair up correctly
        cand = ok.nonzero().flatten()
        best = cand[(scores_b[cand] - score).abs().argmin()]
        unused[best] = False
    return missing


def unmatched_instances(a, b, box_tol: float = 0.01, score_tol: float = 1e-4) -> list:
    """:func:`unmatched_detections` of two detectron2 ``Instances`` (``pred_boxes``, ``scores``,
    ``pred_classes``)."""
    return unmatched_detections(
        a.pred_boxes.tensor,
        a.scores,
        a.pred_classes,
        b.pred_boxes.tensor,
        b.scores,
        b.pred_classes,
        box_tol=box_tol,
        score_tol=score_tol,
    )
