"""RoBERTa whose last layers carry gated text-to-image cross-attention (FIBER's text side).

Parameter names are those of Hugging Face ``roberta-base`` (``embeddings.*``,
``encoder.layer.{i}.attention.self.query`` ...), so its weights load as they are; the fusion
modules of a fused layer are ``crossattention_t2i.{self.query,self.key,self.value,output.dense}``
and the scalar gate ``alpha_t2i`` (names of the official FIBER release).

The fused layer differs from transformers' ``add_cross_attention`` layer: in FIBER the
cross-attention takes the *pre-residual* self-attention output as its query, its gated output is
added to that output, and a single residual + LayerNorm follows (``microsoft/FIBER``
``roberta_fused_model_v2.py``):

    a = dense(self_attn(t))                       # no residual, no LayerNorm yet
    a = a + alpha_t2i * dense_x(cross_attn(a, image_tokens))
    h = LayerNorm(a + t);  out = LayerNorm(ffn(h) + h)

For non-fused layers this reduces exactly to standard post-LN RoBERTa.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint
from torch import Tensor, nn
from transformers import RobertaConfig

__all__ = ["FusionRobertaModel", "position_ids_from_input_ids"]


def position_ids_from_input_ids(input_ids: Tensor, padding_idx: int) -> Tensor:
    """RoBERTa (fairseq) positions: real tokens count from padding_idx + 1; padding keeps it."""
    mask = input_ids.ne(padding_idx).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx


class RobertaEmbeddings(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        pos = position_ids_from_input_ids(input_ids, self.padding_idx)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(pos)
        return self.dropout(self.LayerNorm(x))


class _Attention(nn.Module):
    """Multi-head attention projections with HF names (query/key/value); ``kv_dim`` for cross."""

    def __init__(self, config: RobertaConfig, kv_dim: int | None = None):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(kv_dim or d, d)
        self.value = nn.Linear(kv_dim or d, d)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, q_in: Tensor, kv_in: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = q_in.shape
        hd = d // self.num_heads

        def heads(x: Tensor) -> Tensor:
            return x.view(b, -1, self.num_heads, hd).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(q_in)),
            heads(self.key(kv_in)),
            heads(self.value(kv_in)),
            attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        return out.transpose(1, 2).reshape(b, n, d)


class _DenseOut(nn.Module):
    """``dropout(dense(x))``: the residual and LayerNorm are applied by the layer."""

    def __init__(self, config: RobertaConfig, with_norm: bool):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        if with_norm:  # used by the layer (self-attention only), kept here for HF names
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.dense(x))


class _AttentionBlock(nn.Module):
    def __init__(self, config: RobertaConfig, kv_dim: int | None = None):
        super().__init__()
        self.self = _Attention(config, kv_dim)
        self.output = _DenseOut(config, with_norm=kv_dim is None)


class _Intermediate(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class _Output(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class FusionRobertaLayer(nn.Module):
    """Post-LN RoBERTa layer; with ``image_dim`` set, also gated text-to-image cross-attention."""

    def __init__(self, config: RobertaConfig, image_dim: int | None = None):
        super().__init__()
        self.attention = _AttentionBlock(config)
        self.fused = image_dim is not None
        if self.fused:
            self.crossattention_t2i = _AttentionBlock(config, kv_dim=image_dim)
            self.alpha_t2i = nn.Parameter(torch.zeros(1))
        self.intermediate = _Intermediate(config)
        self.output = _Output(config)

    def forward(
        self,
        hidden: Tensor,
        self_mask: Tensor,
        image_tokens: Tensor | None = None,
        image_mask: Tensor | None = None,
        fusion: bool = True,
        last_norm: bool = True,
    ) -> Tensor:
        """
        Args:
            hidden (Tensor): (B, T, D) text states.
            self_mask (Tensor): (B, 1, 1, T) bool, True where a key token is real.
            image_tokens (Tensor): (B, L, C) image tokens of the paired Swin block (fused layers).
            image_mask (Tensor or None): (B, 1, 1, L) bool mask over image tokens; the official
                model uses none (text attends to padded image tokens too).
            fusion (bool): False runs a fused layer without its t2i cross-attention (the
                uni-modal path of the coarse-grained model); ``image_tokens`` is then ignored.
            last_norm (bool): apply the output LayerNorm. The coarse-grained model skips it in
                the last layer of its fused path (``last_norm=(blk_cnt == 0)`` in the official
                ``fiber_module.py``); everything else applies it.
        """
        a = self.attention.output(self.attention.self(hidden, hidden, self_mask))
        if self.fused and fusion:
            if image_tokens is None:
                raise ValueError("a fused RoBERTa layer needs the image tokens (None given)")
            c = self.crossattention_t2i.self(a, image_tokens, image_mask)
            a = a + self.alpha_t2i * self.crossattention_t2i.output(c)
        h = self.attention.output.LayerNorm(a + hidden)
        out = self.output.dropout(self.output.dense(F.gelu(self.intermediate.dense(h)))) + h
        return self.output.LayerNorm(out) if last_norm else out


class _Encoder(nn.Module):
    def __init__(self, layers: Sequence[FusionRobertaLayer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class FusionRobertaModel(nn.Module):
    """RoBERTa encoder whose last ``len(image_dims)`` layers attend to image tokens (FIBER).

    Args:
        config (RobertaConfig): architecture (``roberta-base`` values for FIBER-B).
        image_dims (sequence of int): channel width of the image tokens seen by each fused layer,
            in order; the fused layers are the last ``len(image_dims)`` layers.
        use_checkpoint (bool): activation checkpointing of layers in training.
    """

    def __init__(
        self, config: RobertaConfig, *, image_dims: Sequence[int] = (), use_checkpoint: bool = False
    ):
        super().__init__()
        n = config.num_hidden_layers
        if len(image_dims) > n:
            raise ValueError(f"{len(image_dims)} fused layers requested but RoBERTa has {n} layers")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"LANGUAGE.HIDDEN_SIZE {config.hidden_size} is not a multiple of NUM_HEADS "
                f"{config.num_attention_heads}"
            )
        self.config = config
        self.num_prefusion_layers = n - len(image_dims)
        dims = [None] * self.num_prefusion_layers + list(image_dims)
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = _Encoder([FusionRobertaLayer(config, d) for d in dims])
        self.use_checkpoint = use_checkpoint
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        """BERT initialisation (normal 0.02, zero biases, unit LayerNorms); gates stay 0."""
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D) embeddings (token type 0, RoBERTa positions)."""
        return self.embeddings(input_ids)

    def layer_forward(
        self,
        index: int,
        hidden: Tensor,
        self_mask: Tensor,
        image_tokens: Tensor | None = None,
        image_mask: Tensor | None = None,
        *,
        fusion: bool = True,
        last_norm: bool = True,
    ) -> Tensor:
        """Layer ``index`` (arguments of :meth:`FusionRobertaLayer.forward`)."""
        layer = self.encoder.layer[index]
        args = (hidden, self_mask, image_tokens, image_mask, fusion, last_norm)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return activation_checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Text-only forward; only valid without fused layers."""
        if self.num_prefusion_layers != len(self.encoder.layer):
            raise RuntimeError("this RoBERTa has fused layers: run it through FIBERBackbone")
        hidden = self.embed(input_ids)
        mask = attention_mask.bool()[:, None, None, :]
        for i in range(len(self.encoder.layer)):
            hidden = self.layer_forward(i, hidden, mask)
        return hidden
