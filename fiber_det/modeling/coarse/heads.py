"""Heads of the coarse-grained FIBER model: poolers, image-text matching, masked language model.

Parameter names follow the official coarse-grained model (``microsoft/FIBER``
``coarse_grained/fiber/modules/heads.py``: ``dense``, ``fc``, ``transform.dense``,
``transform.LayerNorm``, ``decoder``, ``bias``), so that its checkpoints map one to one.
The heads come from METER (Dou et al., CVPR 2022), itself following BERT.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ITMHead", "MLMHead", "Pooler", "init_head_weights"]


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: a (B, N, D) sequence -> (B, D) from its first token."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class ITMHead(nn.Module):
    """Image-text matching: (B, 2D) ``[text_cls, image_cls]`` -> (B, 2) logits (no match, match).

    The official model also has ``rank_output``, a (1, 2D) linear used to rank retrieval
    candidates, whose weight is created as a view of row 1 of ``fc``; on CPU the two share memory,
    so loading a checkpoint writes ``rank_output`` over row 1 of ``fc`` (it comes later in the
    state_dict). Here row 1 of ``fc`` is that one tensor: the retrieval score is ``logits[:, 1]``,
    and the checkpoint converter puts ``rank_output`` into row 1 as the official load does.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MLMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then a vocabulary decoder plus bias.

    Args:
        dim (int): input width.
        vocab_size (int): output classes.
        norm_eps (float): LayerNorm epsilon (1e-12 in the official model, transformers'
            ``RobertaConfig`` default, whereas its RoBERTa layers use roberta-base's 1e-5).
    """

    def __init__(self, dim: int, vocab_size: int, norm_eps: float = 1e-12):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(dim, dim)
        self.transform.LayerNorm = nn.LayerNorm(dim, eps=norm_eps)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) text features -> (B, T, vocab_size) logits."""
        x = self.transform.LayerNorm(F.gelu(self.transform.dense(x)))
        return self.decoder(x) + self.bias


def init_head_weights(module: nn.Module) -> None:
    """Official initialisation of the coarse heads: normal(0, 0.02) weights, zero biases, unit
    LayerNorms (``objectives.init_weights``)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.zeros_(module.bias)
        nn.init.ones_(module.weight)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
