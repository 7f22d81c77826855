"""Swin transformer whose last blocks carry image-to-text cross-attention (FIBER's image side).

One implementation for every fusion layout: which blocks are fused is a constructor argument
(``num_fused_blocks``, counted from the end of the network), and the forward pass is exposed as
small steps (:meth:`FusionSwinTransformer.embed`, :meth:`FusionSwinTransformer.step`) so that the
joint image-text loop of :class:`~fiber_det.modeling.backbone.fiber_backbone.FIBERBackbone` can
interleave them with the text layers, and so that the pre-fusion part can be computed once and
reused across prompts.

References: Liu et al., "Swin Transformer" (ICCV 2021) for the shifted-window blocks; Dou et al.,
"FIBER" (NeurIPS 2022, Sec. 3.1) for the gated i2t cross-attention inside the window attention
(``microsoft/FIBER`` ``fusion_swin_transformer_v2.py`` / ``_v3.py``). Parameter names follow the
Microsoft Swin release so that ImageNet and FIBER checkpoints map onto them one to one.
"""

import weakref
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint
from torch import Tensor, nn

__all__ = ["FusionSwinTransformer", "SwinState"]

#: Shifted-window masks kept per stage, one per feature-map size seen; an evaluation with many
#: image sizes clears the cache beyond that instead of growing it without bound.
SHIFT_MASK_CACHE_SIZE = 32

#: See :func:`_project_before_gather`: padding share of the window slots times the channels.
PROJECT_FIRST_MIN = 20


def _drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth per sample (Huang et al. 2016), as timm's DropPath."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class _GeluThenLinear(torch.autograd.Function):
    """``F.linear(F.gelu(h), weight, bias)`` that keeps ``h`` for the backward pass and computes
    ``gelu(h)`` again there, instead of keeping both ``h`` (for the GELU's gradient) and
    ``gelu(h)`` (for the weight's). The MLP then holds one (tokens, 4C) activation instead of
    two. The backward pass uses the ops autograd uses for ``nn.GELU`` and ``nn.Linear``
    (``gelu_backward``, ``mm``): the gradients are the same numbers (tested bit for bit)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        go = grad_out.reshape(-1, grad_out.shape[-1])
        # The weight's gradient first, so that gelu(h) is freed before the (tokens, 4C) gradient
        # exists, and the GELU's gradient written over the incoming one: at most one (tokens,
        # 4C) temporary at a time (three before; the peak of a training step is in stage 1's
        # MLP backward). Same ops on the same values.
        if ctx.needs_input_grad[1]:
            grad_w = go.t().mm(F.gelu(h).reshape(-1, h.shape[-1]))
        if ctx.needs_input_grad[0]:
            grad_h = go.mm(weight).view(h.shape)
            torch.ops.aten.gelu_backward.grad_input(grad_h, h, grad_input=grad_h)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = go.sum(0)
        return grad_h, grad_w, grad_b


class _NormThenLinear(torch.autograd.Function):
    """``F.linear(g(F.layer_norm(x)), weight, bias)``, where ``g`` is the optional window gather
    (``index_select`` of ``src`` along the tokens, then zeros at ``pad_slots``), keeping ``x``
    and the LayerNorm's statistics for the backward pass instead of the normalised tokens: the
    LayerNorm keeps ``x`` anyway, so the linear layer's input costs nothing more. The backward
    pass computes the normalised tokens again with the same op and goes back through the ops
    autograd uses (``mm``, ``index_fill``, ``index_add_``, ``native_layer_norm_backward``): the
    gradients are the same numbers (tested bit for bit)."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, weight, bias, src, pad_slots):
        y = _normalise_and_gather(x, ln_weight, ln_bias, eps, src, pad_slots)[0]
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, ln_weight, ln_bias, weight, src, pad_slots)
        return F.linear(y, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, ln_weight, ln_bias, weight, src, pad_slots = ctx.saved_tensors
        y, mean, rstd = _normalise_and_gather(x, ln_weight, ln_bias, ctx.eps, src, pad_slots)
        go = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = go.t().mm(y.reshape(-1, y.shape[-1])) if ctx.needs_input_grad[4] else None
        grad_b = go.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
        grad_x = grad_lnw = grad_lnb = None
        needs_norm = ctx.needs_input_grad[:3]
        if any(needs_norm):
            grad_y = go.mm(weight).view(y.shape)
            if pad_slots is not None:
                grad_y = grad_y.index_fill(1, pad_slots, 0.0)
            if src is not None:
                grad_y = grad_y.new_zeros(x.shape).index_add_(1, src, grad_y)
            grad_x, grad_lnw, grad_lnb = torch.ops.aten.native_layer_norm_backward(
                grad_y, x, [x.shape[-1]], mean, rstd, ln_weight, ln_bias, list(needs_norm)
            )
        return grad_x, grad_lnw, grad_lnb, None, grad_w, grad_b, None, None


def _normalise_and_gather(x, ln_weight, ln_bias, eps, src, pad_slots):
    """(LayerNorm of x, gathered into windows when ``src`` is given, mean, rstd)."""
    y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], ln_weight, ln_bias, eps)
    if src is not None:
        y = _gather_windows(y, src, pad_slots)
    return y, mean, rstd


def _gather_windows(
    x: Tensor, src: Tensor, pad_slots: Tensor | None, fill: Tensor | None = None
) -> Tensor:
    """(B, H*W, D) tokens -> (B, nW*N, D) window slots (:func:`window_gather_index`), with
    ``fill`` (D,) at the padding slots (zeros when None)."""
    windows = x.index_select(1, src)
    if pad_slots is not None:
        if fill is None:
            windows.index_fill_(1, pad_slots, 0.0)
        else:
            windows[:, pad_slots] = fill.to(windows.dtype)
    return windows


def _project_before_gather(dim: int, slots: int, pads: int) -> bool:
    """Whether a block computes qkv on the real tokens and gathers the (3C-wide) projections
    into windows, the padding slots set to the bias (the projection of a zero token), rather
    than gathering the (C-wide) normalised tokens and projecting every slot. The first saves the
    padding's multiply-adds (``3 C^2`` per slot), the second moves a third of the data. Measured
    on the 2-core CPU, the multiply-adds saved outweigh the wider copy when the padding's share
    of the slots times C reaches about 20 (FIBER-B at 512x512: stages 2-4, not stage 1).

    Both orders compute each row's products alike, so the values are the same as long as the
    matmul library computes a row the same way whatever the number of rows. MKL on CPU does for
    12 rows or more and for multiples of 4, which every FIBER detection size meets (checked bit
    for bit on FIBER-B's stages at 512x512 and 800x1216, and in
    ``tests/modeling/test_swin_padding.py``); below that (a map of a few tokens), or with
    another library (cuBLAS picks kernels by the number of rows), the last bit may differ."""
    return pads > 0 and pads * dim >= PROJECT_FIRST_MIN * slots


def _recomputing(enabled: bool, t: Tensor) -> bool:
    """Whether a ``recompute`` module takes its recomputing path for input ``t``: only where
    autograd records (training) and outside autocast, whose casts the functions do not make."""
    return enabled and torch.is_grad_enabled() and not torch.is_autocast_enabled(t.device.type)


class Mlp(nn.Module):
    """fc1, GELU, fc2.

    ``recompute``: in training (no dropout, no autocast), the GELU's output is not kept for the
    backward pass but computed again from fc1's output (:class:`_GeluThenLinear`)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, *, recompute: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.recompute = recompute

    def forward(self, x: Tensor, norm: nn.LayerNorm | None = None) -> Tensor:
        """MLP of ``x``, or of ``norm(x)`` when ``norm`` is given (with ``recompute``, the
        normalised tokens are then not kept either: :class:`_NormThenLinear`)."""
        if _recomputing(self.recompute, x) and not (self.training and self.drop.p > 0):
            if norm is None:
                h = self.fc1(x)
            else:
                fc1 = self.fc1
                h = _NormThenLinear.apply(
                    x, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, None, None
                )
            return _GeluThenLinear.apply(h, self.fc2.weight, self.fc2.bias)
        h = self.fc1(x if norm is None else norm(x))
        return self.drop(self.fc2(self.drop(self.act(h))))


def _relative_position_index(window: int) -> Tensor:
    """(window^2, window^2) index into the (2w-1)^2 relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class _TensorState:
    """What tells whether a tensor changed between two reads: the same object, version counter and
    storage (held, so that its address cannot be taken by a new one), and on CPU the same values
    (which also catches writes through ``.data`` or a collective, which bump no version).

    A stricter twin of :func:`fiber_det.modeling.meta_arch.multi_prompt.weights_version`
    (address and version only), affordable here because a table is a few kB: holding the old
    storage, or comparing values, of a whole text encoder would not be."""

    def __init__(self, t: Tensor):
        self.tensor, self.version = t, t._version
        self.storage, self.ptr = t.untyped_storage(), t.data_ptr()
        self.values = t.detach().clone() if t.device.type == "cpu" else None

    def matches(self, t: Tensor) -> bool:
        if t is not self.tensor or t._version != self.version or t.data_ptr() != self.ptr:
            return False
        if self.values is None:
            return True
        v = self.values
        return t.dtype == v.dtype and t.shape == v.shape and torch.equal(t.detach(), v)


def _plain(t: Tensor) -> bool:
    """A tensor whose state :class:`_TensorState` can tell: no subclass (FakeTensor, ...), no
    functorch wrapper, not an inference tensor (which has no version counter)."""
    if type(t) not in (Tensor, nn.Parameter) or t.is_inference():
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return not (wrapped is not None and wrapped(t))


#: WindowAttention -> (state of its table, state of its index, bias) of its last inference-time
#: relative bias (:meth:`WindowAttention.relative_bias`); weak in the module, so that copying,
#: pickling or freeing a model is unaffected.
_RELATIVE_BIAS_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class WindowAttention(nn.Module):
    """Window self-attention with relative position bias, plus optional gated i2t attention.

    In a fused block, every image token also attends to the text tokens:
    ``o <- o + alpha_i2t * proj_i2t(softmax(q(o) k(text)^T / sqrt(d) + text_mask) v(text))``,
    where ``o`` is the self-attention output and ``alpha_i2t`` a scalar initialised to 0 (FIBER,
    Eq. 1). v3 checkpoints normalise the query input with ``norm_i2t_i``.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        text_dim: int | None = None,
        fusion_version: str = "v2",
        recompute: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.recompute = recompute
        self.window_size = window_size
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer(
            "relative_position_index", _relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        self.fused = text_dim is not None
        if self.fused:
            self.qkv_text_i2t = nn.Linear(text_dim, dim * 2, bias=qkv_bias)
            self.qkv_i2t = nn.Linear(dim, dim, bias=qkv_bias)
            self.proj_i2t = nn.Linear(dim, dim)
            self.proj_drop_i2t = nn.Dropout(proj_drop)
            self.alpha_i2t = nn.Parameter(torch.zeros(1))
            self.norm_i2t_i = nn.LayerNorm(dim) if fusion_version == "v3" else None

    def relative_bias(self) -> Tensor:
        """(num_heads, w*w, w*w) relative position bias.

        Where no gradient is recorded (inference), the bias is kept between calls for as long as
        the table and the index stay the same tensors, unchanged (:class:`_TensorState`): a
        gather and a transposing copy less per block and forward (7 ms of FIBER-B's 512x512
        forward on CPU), the same values. It holds ``num_heads x w^4`` floats per block (1.3 MB
        for 16 heads, about 30 MB for FIBER-B). The tensor returned is then shared between
        calls: do not modify it in place. Tracing, ``torch.compile`` and functorch transforms
        always gather anew. On GPU a change is told by version and storage only (comparing
        values would wait for the device): a write through ``.data`` or a collective there is
        not seen until the next ``load_state_dict`` or in-place update."""
        table, index = self.relative_position_bias_table, self.relative_position_index
        if (
            torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or not (_plain(table) and _plain(index))
        ):
            return self._gather_relative_bias(table, index)
        held = _RELATIVE_BIAS_CACHE.get(self)
        if held is None or not (held[0].matches(table) and held[1].matches(index)):
            held = (
                _TensorState(table),
                _TensorState(index),
                self._gather_relative_bias(table, index),
            )
            _RELATIVE_BIAS_CACHE[self] = held
        return held[2]

    def _gather_relative_bias(self, table: Tensor, index: Tensor) -> Tensor:
        n = self.window_size**2
        bias = table[index.view(-1)]
        # contiguous, so that the attention mask built from it is too (SDPA copies it otherwise)
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, qkv: Tensor, shift_mask: Tensor | None) -> Tensor:
        """Self-attention inside windows, heads merged, before the output projection.

        The block computes ``qkv`` (``self.qkv``) and applies :meth:`project` itself, so that
        neither runs on the padding slots where it need not (:func:`_project_before_gather`).

        Args:
            qkv (Tensor): (B, nW, N, 3C) qkv projection of the tokens grouped by window,
                N = window_size^2.
            shift_mask (Tensor or None): (nW, N, N) additive mask of shifted windows.
        Returns:
            Tensor: (B, nW, N, C).
        """
        if self.recompute and qkv.requires_grad and qkv.device.type == "cpu":
            # On CPU, SDPA with a bias that needs a gradient runs its unfused path, which keeps
            # the (nW, nH, N, N) attention of every image for the backward pass: recompute it
            # there from qkv instead (exact: the same ops run again on the same inputs). CUDA's
            # fused kernels keep no attention matrix, so there is nothing to save there.
            return activation_checkpoint.checkpoint(
                self._attend,
                qkv,
                shift_mask,
                use_reentrant=False,
                preserve_rng_state=self.training and self.attn_drop > 0,
            )
        return self._attend(qkv, shift_mask)

    def project(self, out: Tensor) -> Tensor:
        """The output projection (and its dropout) of :meth:`forward`'s result. It acts on each
        token alone, so it may run after the windows are undone, on the real tokens only."""
        return self.proj_drop(self.proj(out))

    def _attend(self, qkv: Tensor, shift_mask: Tensor | None) -> Tensor:
        """(B, nW, N, 3C) projected windows -> (B, nW, N, C) attention output, heads merged."""
        b, nw, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.view(b, nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, nH, N, hd)
        bias = self.relative_bias().unsqueeze(0)  # (1, nH, N, N)
        if shift_mask is not None:
            bias = bias + shift_mask.unsqueeze(1)  # (nW, nH, N, N)
        bias = bias.to(q.dtype)
        dropout = self.attn_drop if self.training else 0.0
        # One 4-D attention per image, windows as its batch: SDPA's fused kernels take 4-D
        # inputs only (5-D falls back to the unfused path, which materialises the attention).
        outs = [
            F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=bias, dropout_p=dropout)
            for i in range(b)
        ]
        out = outs[0].unsqueeze(0) if b == 1 else torch.stack(outs)
        return out.transpose(2, 3).reshape(b, nw, n, c)

    def image_to_text(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Gated image-to-text cross-attention, one query per image token.

        The official code applies it to each window with the text replicated per window; the
        attention of a token to the text does not depend on its window, so it runs on all tokens
        at once here (same result, no copies of the text).

        Args:
            x (Tensor): (B, L, C) self-attention output of the image tokens.
            text (Tensor): (B, T, D) text hidden states.
            text_mask (Tensor): (B, T) bool, True for real tokens.
        Returns:
            Tensor: (B, L, C) ``x + alpha_i2t * i2t(x)``.
        """
        b, n_img, c = x.shape
        hd = c // self.num_heads
        kv = self.qkv_text_i2t(text).view(b, text.shape[1], 2, self.num_heads, hd)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nH, T, hd)
        query_in = self.norm_i2t_i(x) if self.norm_i2t_i is not None else x
        q = self.qkv_i2t(query_in).view(b, n_img, self.num_heads, hd).transpose(1, 2)
        mask = text_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        y = self.proj_drop_i2t(self.proj_i2t(y.transpose(1, 2).reshape(b, n_img, c)))
        return x + self.alpha_i2t * y


#: Gather indices of a window partition: (src, pad_slots or None, inverse), see
#: :func:`window_gather_index`.
WindowIndex = Tuple[Tensor, Optional[Tensor], Tensor]


class SwinBlock(nn.Module):
    """(Shifted-)window transformer block; a fused block also attends to the text."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        text_dim: int | None = None,
        fusion_version: str = "v2",
        shift_single_window: bool = True,
        recompute: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.shift_single_window = shift_single_window
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            window_size,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            text_dim=text_dim,
            fusion_version=fusion_version,
            recompute=recompute,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, recompute=recompute)

    @property
    def fused(self) -> bool:
        return self.attn.fused

    @property
    def recompute(self) -> bool:
        """``recompute`` given at construction (held by the attention and the MLP)."""
        return self.attn.recompute

    def effective_shift(self, hw: Tuple[int, int]) -> int:
        """The cyclic shift of this block for an (H, W) map: 0 for a map that fits in one
        window when ``shift_single_window`` is False (classification Swin)."""
        ws = self.window_size
        if not self.shift_single_window and hw[0] <= ws and hw[1] <= ws:
            return 0
        return self.shift_size

    def forward(
        self,
        x: Tensor,
        hw: Tuple[int, int],
        shift_mask: Tensor,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        fusion: bool = True,
        window_index: WindowIndex | None = None,
    ) -> Tensor:
        """
        Args:
            x (Tensor): (B, H*W, C) tokens.
            hw (tuple): (H, W).
            shift_mask (Tensor): (nW, N, N) mask for shifted windows of this resolution.
            text, text_mask: (B, T, D) text states and (B, T) bool mask, for fused blocks.
            fusion (bool): False runs a fused block without its i2t cross-attention (the
                uni-modal path of the coarse-grained model); ``text`` is then ignored.
            window_index (tuple, optional): :func:`window_gather_index` of this block's shift and
                resolution (computed when not given).
        """
        h, w = hw
        b, _, c = x.shape
        ws = self.window_size
        shift = self.effective_shift(hw)
        shortcut = x
        # Zero padding to whole windows happens after norm1 (padded tokens take part in
        # attention).
        if torch.jit.is_tracing():  # ONNX export: the plain ops (same values as the gather)
            out = self._attend_windows_reference(self.norm1(x), hw, shift, shift_mask)
        else:
            # padding, the cyclic shift and the window partition as one gather each way
            if window_index is None:
                window_index = window_gather_index(h, w, ws, shift, x.device)
            src, pad_slots, inverse = window_index
            mask = shift_mask if shift > 0 else None
            n1, lin = self.norm1, self.attn.qkv
            pads = 0 if pad_slots is None else pad_slots.numel()
            if _project_before_gather(c, src.numel(), pads):
                # qkv of the real tokens only, the bias at the padding slots
                if _recomputing(self.recompute, x):
                    # the normalised tokens are not kept for qkv's backward: recomputed there
                    qkv = _NormThenLinear.apply(
                        x, n1.weight, n1.bias, n1.eps, lin.weight, lin.bias, None, None
                    )
                else:
                    qkv = lin(n1(x))
                qkv = _gather_windows(qkv, src, pad_slots, lin.bias)
            elif _recomputing(self.recompute, x):
                qkv = _NormThenLinear.apply(
                    x, n1.weight, n1.bias, n1.eps, lin.weight, lin.bias, src, pad_slots
                )
            else:
                qkv = lin(_gather_windows(n1(x), src, pad_slots))
            out = self.attn(qkv.view(b, -1, ws * ws, 3 * c), mask)
            # token order, shift undone, padding slots dropped; then the projection
            out = self.attn.project(out.view(b, -1, c).index_select(1, inverse))
        if self.fused and fusion:
            if text is None:
                raise ValueError("a fused Swin block needs the text states (text=None given)")
            out = self.attn.image_to_text(out, text, text_mask)
        x = shortcut + _drop_path(out, self.drop_path, self.training)
        return x + _drop_path(self.mlp(x, self.norm2), self.drop_path, self.training)

    def _attend_windows_reference(
        self, x: Tensor, hw: Tuple[int, int], shift: int, shift_mask: Tensor
    ) -> Tensor:
        """Window attention of (B, H*W, C) normalised tokens by pad, roll and partition (the
        reference Swin ops; :func:`window_gather_index` is the same as one gather). The qkv
        projection is taken before or after the padding as in :meth:`forward`
        (:func:`_project_before_gather`), the output projection after the windows are undone."""
        h, w = hw
        b, _, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        hp, wp = h + pad_b, w + pad_r
        lin = self.attn.qkv
        if _project_before_gather(c, hp * wp, hp * wp - h * w):
            qkv = lin(x).view(b, h, w, 3 * c)
            fill = qkv.new_zeros(3 * c) if lin.bias is None else lin.bias.to(qkv.dtype)
            if pad_r:
                qkv = torch.cat([qkv, fill.expand(b, h, pad_r, 3 * c)], dim=2)
            if pad_b:
                qkv = torch.cat([qkv, fill.expand(b, pad_b, wp, 3 * c)], dim=1)
        else:
            qkv = lin(F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b)))
        if shift > 0:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
        windows = qkv.view(b, hp // ws, ws, wp // ws, ws, 3 * c).permute(0, 1, 3, 2, 4, 5)
        out = self.attn(windows.reshape(b, -1, ws * ws, 3 * c), shift_mask if shift > 0 else None)
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(b, hp, wp, c)
        if shift > 0:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        # contiguous first: a view across the batch would send the projection through matmul
        # (mm, then the bias), not addmm as in forward (other rounding)
        return self.attn.project(out[:, :h, :w, :].contiguous().view(b, h * w, c))


def window_gather_index(
    h: int, w: int, window: int, shift: int, device: torch.device
) -> WindowIndex:
    """The (shifted) window partition of an H x W token map as gather indices.

    Swin zero-pads the map to whole windows, rolls it by ``-shift`` in both directions and cuts
    it into windows; window slot (i, j, r, s) (window row and column, row and column inside the
    window) then holds the token at padded coordinates ``((i w + r + shift) mod H_p,
    (j w + s + shift) mod W_p)``, a zero where that is padding (or the projection of a zero,
    when the gathered tokens are projected already: :func:`_project_before_gather`). One
    ``index_select`` with ``src`` (then the padding value at ``pad_slots``) does all of it;
    ``inverse`` (the slot of each token) undoes it, the same values moved by one copy instead of
    three each way.

    Returns:
        src (Tensor): (nW * window^2,) token index of each slot (0 for padding slots).
        pad_slots (Tensor or None): the padding slots, None without padding.
        inverse (Tensor): (H * W,) slot of each token.
    """
    hp, wp = -(-h // window) * window, -(-w // window) * window
    rows = (torch.arange(hp) + shift) % hp  # padded row read by each rolled row
    cols = (torch.arange(wp) + shift) % wp
    rows = rows.view(hp // window, 1, window, 1).expand(-1, wp // window, -1, window)
    cols = cols.view(1, wp // window, 1, window).expand(hp // window, -1, window, -1)
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    valid = (rows < h) & (cols < w)
    src = torch.where(valid, rows * w + cols, 0)
    inverse = torch.empty(h * w, dtype=torch.long)
    inverse[src[valid]] = valid.nonzero().flatten()
    pad_slots = (~valid).nonzero().flatten().to(device) if not valid.all() else None
    return src.to(device), pad_slots, inverse.to(device)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (Microsoft order x00, x10, x01, x11), LayerNorm, linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        h, w = hw
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = self.reduction(self.norm(x.view(b, -1, 4 * c)))
        return x, ((h + 1) // 2, (w + 1) // 2)


class SwinStage(nn.Module):
    """One resolution of Swin: blocks alternating plain and shifted windows, then patch merging."""

    def __init__(self, blocks: List[SwinBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.window_size = blocks[0].window_size
        self._mask_cache: Dict[Tuple, Tensor] = {}
        self._index_cache: Dict[Tuple, WindowIndex] = {}

    def window_index(self, hw: Tuple[int, int], shift: int, device: torch.device) -> WindowIndex:
        """:func:`window_gather_index` of this stage's windows at ``hw``, cached."""
        key = (hw, shift, str(device))
        if key not in self._index_cache:
            if len(self._index_cache) > 2 * SHIFT_MASK_CACHE_SIZE:
                self._index_cache.clear()
            self._index_cache[key] = window_gather_index(*hw, self.window_size, shift, device)
        return self._index_cache[key]

    def shift_mask(self, hw: Tuple[int, int], device: torch.device) -> Tensor:
        """(nW, N, N) mask: -100 between tokens from different regions of a shifted window."""
        key = (hw, str(device))
        if key not in self._mask_cache:
            ws, shift = self.window_size, self.window_size // 2
            # Ceil to whole windows with non-negative operands only: the ONNX export folds a
            # floor division of a negative number as a truncation.
            hp = (hw[0] + ws - 1) // ws * ws
            wp = (hw[1] + ws - 1) // ws * ws
            # Regions [0, -ws), [-ws, -shift), [-shift, end) of each axis, numbered i * 3 + j;
            # computed by comparisons (no slice assignment, which an empty first region of a
            # one-window axis would turn into an untraceable empty index_put in ONNX export).
            rows = torch.arange(hp, device=device)
            cols = torch.arange(wp, device=device)
            row_id = (rows >= hp - ws).long() + (rows >= hp - shift).long()
            col_id = (cols >= wp - ws).long() + (cols >= wp - shift).long()
            region = (row_id[:, None] * 3 + col_id[None, :]).float()
            win = region.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
            diff = win[:, None, :] - win[:, :, None]
            mask = torch.zeros_like(diff).masked_fill(diff != 0, -100.0)
            if len(self._mask_cache) > SHIFT_MASK_CACHE_SIZE:
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return self._mask_cache[key]


@dataclass
class SwinState:
    """Where a forward pass through :class:`FusionSwinTransformer` stands.

    Attributes:
        tokens (Tensor): (B, H*W, C) input of the next block.
        hw (tuple): (H, W) of ``tokens``.
        stage (int), block (int): the next block to run (``stage == num_stages`` when done).
        outputs (dict): stage index -> (B, C, H, W) normalised output of each finished stage that
            is an output stage.
    """

    tokens: Tensor
    hw: Tuple[int, int]
    stage: int = 0
    block: int = 0
    outputs: Dict[int, Tensor] = field(default_factory=dict)

    def expand(self, batch: int) -> "SwinState":
        """The same state for ``batch`` copies of a single image (views, no copy)."""
        if self.tokens.shape[0] != 1:
            raise ValueError(f"expand() needs a state of one image, got {self.tokens.shape[0]}")
        return replace(
            self,
            tokens=self.tokens.expand(batch, -1, -1),
            outputs={k: v.expand(batch, -1, -1, -1) for k, v in self.outputs.items()},
        )


class FusionSwinTransformer(nn.Module):
    """Swin transformer with gated image-to-text cross-attention in its last blocks (FIBER).

    Args:
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias: Swin layout
            (FIBER-B: 4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 4.0, True).
        drop_path_rate (float): stochastic depth, linear over all blocks.
        num_fused_blocks (int): how many of the last blocks attend to the text (FIBER: 6).
        text_dim (int): width of the text states (768 for RoBERTa-base).
        fusion_version (str): "v2" or "v3" (v3 adds a LayerNorm on the i2t query).
        out_indices (sequence of int): stages whose normalised outputs are returned.
        ape (bool), pretrain_img_size (int): absolute position embedding (off in FIBER).
        frozen_stages (int): official FREEZE_CONV_BODY_AT semantics (see config).
        use_checkpoint (bool): activation checkpointing of blocks in training.
        recompute_activations (bool): in training, recompute the normalised tokens of both
            LayerNorms, the MLP's GELU and (on CPU) the window attention in the backward pass
            instead of keeping them (same gradients; no matmul of the block's linear layers is
            repeated, unlike ``use_checkpoint``).
        shift_single_window (bool): shift the windows of every other block even when the feature
            map fits in one window (detection Swin, True); False follows the classification
            Swin of the coarse-grained FIBER model (timm), which does not shift such a map.
        final_norm (bool): add the classification Swin's LayerNorm ``norm`` on the last stage's
            tokens (the coarse-grained model applies it in its uni-modal ITC path only).
    """

    def __init__(
        self,
        *,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        num_fused_blocks: int = 6,
        text_dim: int = 768,
        fusion_version: str = "v2",
        out_indices: Sequence[int] = (1, 2, 3),
        ape: bool = False,
        pretrain_img_size: int = 384,
        frozen_stages: int = -1,
        use_checkpoint: bool = False,
        recompute_activations: bool = False,
        shift_single_window: bool = True,
        final_norm: bool = False,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"SWIN.DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} differ in length"
            )
        total = sum(depths)
        if not 0 <= num_fused_blocks <= total:
            raise ValueError(
                f"NUM_FUSION_LAYERS={num_fused_blocks} must be in [0, {total}] (Swin blocks)"
            )
        if fusion_version not in ("v2", "v3"):
            raise ValueError(f"FUSION_VERSION must be 'v2' or 'v3', got {fusion_version!r}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.use_checkpoint = use_checkpoint
        self.num_fused_blocks = num_fused_blocks

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.ape = ape
        if ape:
            res = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, res, res))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

        dpr = torch.linspace(0, drop_path_rate, total).tolist()
        first_fused = total - num_fused_blocks
        self.layers = nn.ModuleList()
        g = 0
        for s, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = self.num_features[s]
            blocks = []
            for i in range(depth):
                blocks.append(
                    SwinBlock(
                        dim,
                        heads,
                        window_size,
                        0 if i % 2 == 0 else window_size // 2,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        drop_path=dpr[g],
                        text_dim=text_dim if g >= first_fused else None,
                        fusion_version=fusion_version,
                        shift_single_window=shift_single_window,
                        recompute=recompute_activations,
                    )
                )
                g += 1
            down = PatchMerging(dim) if s < len(depths) - 1 else None
            self.layers.append(SwinStage(blocks, down))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.norm = nn.LayerNorm(self.num_features[-1]) if final_norm else None
        self.apply(_init_weights)
        self._freeze()

    # -- structure ---------------------------------------------------------------------------
    def block_order(self) -> List[Tuple[int, int]]:
        """(stage, block) of every block in execution order."""
        return [(s, b) for s, d in enumerate(self.depths) for b in range(d)]

    def fused_block_dims(self) -> List[int]:
        """Channel width of each fused block, in execution order."""
        order = self.block_order()[len(self.block_order()) - self.num_fused_blocks :]
        return [self.num_features[s] for s, _ in order]

    # -- forward steps -----------------------------------------------------------------------
    def embed(self, images: Tensor) -> SwinState:
        """Patch embedding: (B, 3, H, W) images -> state before the first block."""
        x = self.patch_embed.proj(images)
        h, w = x.shape[-2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
            x = x + pos.flatten(2).transpose(1, 2)
        return SwinState(tokens=x, hw=(h, w))

    def step(
        self,
        state: SwinState,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        fusion: bool = True,
    ) -> SwinState:
        """Run the next block; finish the stage (output norm, patch merging) if it was the last.

        ``fusion=False`` runs a fused block without its i2t cross-attention."""
        stage = self.layers[state.stage]
        blk = stage.blocks[state.block]
        mask = stage.shift_mask(state.hw, state.tokens.device)
        index = stage.window_index(state.hw, blk.effective_shift(state.hw), state.tokens.device)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            x = activation_checkpoint.checkpoint(
                blk,
                state.tokens,
                state.hw,
                mask,
                text,
                text_mask,
                fusion,
                index,
                use_reentrant=False,
            )
        else:
            x = blk(state.tokens, state.hw, mask, text, text_mask, fusion, index)
        if state.block + 1 < len(stage.blocks):
            return replace(state, tokens=x, block=state.block + 1)
        outputs = dict(state.outputs)
        if state.stage in self.out_indices:
            h, w = state.hw
            y = getattr(self, f"norm{state.stage}")(x)
            outputs[state.stage] = y.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        hw = state.hw
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
        return SwinState(tokens=x, hw=hw, stage=state.stage + 1, block=0, outputs=outputs)

    def run(self, state: SwinState, num_blocks: int, *, fusion: bool = True) -> SwinState:
        """Run ``num_blocks`` blocks without text: the pre-fusion part, or with ``fusion=False``
        any blocks, fused ones without their cross-attention (uni-modal image encoder)."""
        for _ in range(num_blocks):
            state = self.step(state, fusion=fusion)
        return state

    def forward(self, images: Tensor) -> Dict[int, Tensor]:
        """Image-only forward; only valid without fused blocks (use FIBERBackbone otherwise)."""
        if self.num_fused_blocks:
            raise RuntimeError("this Swin has fused blocks: run it through FIBERBackbone")
        return self.run(self.embed(images), sum(self.depths)).outputs

    # -- freezing ------------------------------------------------------------------------------
    def _freeze(self) -> None:
        frozen: List[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad_(False)
        if self.frozen_stages >= 2:
            frozen.extend(self.layers[i] for i in range(self.frozen_stages - 1))
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FusionSwinTransformer":
        super().train(mode)
        self._freeze()
        return self


def _init_weights(m: nn.Module) -> None:
    """Swin initialisation: truncated normal (0.02) linear weights, zero biases, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
