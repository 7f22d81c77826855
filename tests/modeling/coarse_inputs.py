"""Random inputs of the coarse-grained model in the contract's format (COARSE_CONTRACT.md)."""

from typing import Dict, List

import torch
from detectron2.modeling import build_model

from fiber_det.utils.testing import get_config

MASK_ID = 4  # a token id of the tiny vocabulary used as <mask>
VOCAB = 1000  # MODEL.LANGUAGE.VOCAB_SIZE of configs/tiny/coarse_tiny.yaml


def tiny_coarse_config(opts=None):
    return get_config("tiny/coarse_tiny.yaml", opts)


def tiny_coarse_model(opts=None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny_coarse_config(opts))


def spread_scores(model) -> None:
    """Open the fusion gates (0 at initialisation) so that pairs interact, and widen the ITM and
    cross-modal weights (std 0.02 at initialisation) so that retrieval scores differ."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_i2t", "alpha_t2i")):
                p.fill_(0.7)
            elif name.startswith(("itm_score.", "cross_modal_")) and p.dim() == 2:
                p.normal_(0, 0.5)


def pairs(n: int, seed: int, size: int = 64, length: int = 16, lengths=None) -> List[Dict]:
    """``n`` pair dicts: image, input_ids (<s> words </s> <pad>...), attention_mask, and MLM
    inputs with two masked tokens per caption."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        used = lengths[i] if lengths else int(torch.randint(5, length + 1, (1,), generator=g))
        ids = torch.ones(length, dtype=torch.long)  # pad id 1
        ids[:used] = torch.randint(5, VOCAB, (used,), generator=g)
        ids[0], ids[used - 1] = 0, 2
        mask = (torch.arange(length) < used).long()
        mlm_ids, labels = ids.clone(), torch.full((length,), -100)
        for pos in (1, used - 2):
            labels[pos], mlm_ids[pos] = ids[pos], MASK_ID
        out.append(
            {
                "image": torch.randn(3, size, size, generator=g),
                "input_ids": ids,
                "attention_mask": mask,
                "mlm_input_ids": mlm_ids,
                "mlm_labels": labels,
                "image_id": i,
                "caption_id": i,
                "source_dataset": "random",
            }
        )
    return out


def stacked(batch: List[Dict]):
    """(images, input_ids, attention_mask) tensors of a list of pair dicts."""
    return tuple(
        torch.stack([x[k] for x in batch]) for k in ("image", "input_ids", "attention_mask")
    )
