"""The FIBER backbone: Swin + RoBERTa fused in their last blocks, then an FPN (P3-P7).

The forward pass is split in two public parts so that callers can reuse work:

* :meth:`FIBERBackbone.encode_image` runs the image blocks before the first fused block and
  :meth:`FIBERBackbone.encode_text` the text layers before the first fused layer; neither sees
  the other modality.
* :meth:`FIBERBackbone.fuse` runs the fused tail: the k-th fused Swin block and the k-th fused
  RoBERTa layer are updated *in parallel* (each sees the other's state from before the pair, as
  the official joint loop does), then the FPN.

``forward(images, input_ids, attention_mask)`` chains both. Reference: FIBER (Dou et al. 2022),
Sec. 3.1 and Fig. 2; official joint loop in ``microsoft/FIBER``
``fine_grained/.../fusion_swin_transformer_v2.py`` (``FusionSwinTransformer.forward``).
"""

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn
from transformers import RobertaConfig

from .fpn import FIBERFPN
from .roberta import FusionRobertaModel
from .swin import FusionSwinTransformer, SwinState

__all__ = [
    "FIBERBackbone",
    "TextState",
    "TextFeatures",
    "build_fiber_backbone",
    "swin_from_cfg",
    "text_encoder_from_cfg",
]

logger = logging.getLogger(__name__)

_STAGE_INDEX = {"res2": 0, "res3": 1, "res4": 2, "res5": 3}

#: Token positions of the prompt-tuning offsets: the official ``tunable_linear`` is
#: ``Linear(hidden, 1000)``, whose (1000, hidden) weight holds one learned offset per position
#: (more than any prompt the text encoder accepts), so official checkpoints load as they are.
PROMPT_TUNING_POSITIONS = 1000


@dataclass
class TextState:
    """Text after the pre-fusion layers.

    Attributes:
        hidden (Tensor): (B, T, D) hidden states.
        mask (Tensor): (B, T) bool, True for real tokens (the tokenizer's attention mask).
    """

    hidden: Tensor
    mask: Tensor

    def expand(self, batch: int) -> "TextState":
        if self.hidden.shape[0] != 1:
            raise ValueError(f"expand() needs a state of one prompt, got {self.hidden.shape[0]}")
        return TextState(self.hidden.expand(batch, -1, -1), self.mask.expand(batch, -1))


@dataclass
class TextFeatures:
    """Fused text features returned by the backbone.

    Attributes:
        hidden (Tensor): (B, T, D) text states after the last fused layer.
        mask (Tensor): (B, T) bool attention mask.
    """

    hidden: Tensor
    mask: Tensor

    @property
    def embedded(self) -> Tensor:
        """(B, T, D) hidden states with padded positions zeroed (official "embedded")."""
        return self.hidden * self.mask.unsqueeze(-1).to(self.hidden.dtype)


class FIBERBackbone(Backbone):
    """Fusion-in-the-backbone image-text encoder with an FPN (FIBER, Dou et al. 2022).

    Args:
        swin (FusionSwinTransformer): image side; its last blocks are fused.
        text_encoder (FusionRobertaModel): text side; its last layers are fused, as many as
            the fused Swin blocks.
        fpn (FIBERFPN or None): pyramid on the Swin stages in ``in_stages``; None for an
            image-text encoder without detection features (the coarse-grained model uses the
            fused image tokens of :meth:`fused_tail` instead).
        in_stages (sequence of int): Swin stages fed to the FPN (FIBER: 1, 2, 3 = res3-res5);
            empty without FPN.
        size_divisibility (int): input images must have H and W divisible by this.
        mask_image_padding (bool): mask padded image tokens out of text-to-image attention
            (not official; needs ``image_sizes`` in :meth:`fuse`).
        use_prompt_tuning (bool): add a learned per-position offset to the text embeddings
            (official ``tunable_linear``, zero-initialised).
    """

    def __init__(
        self,
        *,
        swin: FusionSwinTransformer,
        text_encoder: FusionRobertaModel,
        fpn: FIBERFPN | None,
        in_stages: Sequence[int] = (1, 2, 3),
        size_divisibility: int = 32,
        mask_image_padding: bool = False,
        use_prompt_tuning: bool = False,
    ):
        super().__init__()
        n_img = swin.num_fused_blocks
        n_txt = len(text_encoder.encoder.layer) - text_encoder.num_prefusion_layers
        if n_img != n_txt:
            raise ValueError(f"{n_img} fused Swin blocks but {n_txt} fused RoBERTa layers")
        self.body = swin
        self.language = text_encoder
        self.fpn = fpn
        self.in_stages = tuple(in_stages)
        self.num_fused = n_img
        self.num_prefusion_blocks = sum(swin.depths) - n_img
        self._size_divisibility = size_divisibility
        self.mask_image_padding = mask_image_padding
        if use_prompt_tuning:
            self.tunable_linear = nn.Linear(
                text_encoder.hidden_size, PROMPT_TUNING_POSITIONS, bias=False
            )
            nn.init.zeros_(self.tunable_linear.weight)
        else:
            self.tunable_linear = None
        if fpn is None:
            self._out_features, self._out_feature_strides, self._out_feature_channels = [], {}, {}
            return
        first = 2 ** (self.in_stages[0] + 2)
        self._out_features = [f"p{i}" for i in range(3, 3 + len(self.in_stages) + 2)]
        self._out_feature_strides = {
            name: first * 2**i for i, name in enumerate(self._out_features)
        }
        self._out_feature_channels = {name: fpn.out_channels for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }

    # -- inputs ------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        d = self._size_divisibility
        if d and (h % d or w % d):
            raise ValueError(
                f"image size {h}x{w} is not a multiple of {d}: pad the batch first, e.g. "
                f"detectron2.structures.ImageList.from_tensors(images, size_divisibility={d}) "
                "(FIBERDetector does this for you)"
            )

    def _check_text(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, T)"
            )
        limit = self.language.config.max_position_embeddings - self.language.config.pad_token_id - 1
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"prompt of {input_ids.shape[1]} tokens exceeds the text encoder's maximum of "
                f"{limit}: tokenize with fiber_det.text.tokenize_prompts(..., max_length=...), "
                "which truncates explicitly and warns"
            )
        empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"empty prompt (no token in attention_mask) for batch items {empty}")

    # -- the two halves ------------------------------------------------------------------------
    def encode_image(self, images: Tensor, *, uni_modal: bool = False) -> SwinState:
        """Image blocks before the first fused block: (B, 3, H, W) -> :class:`SwinState`.

        ``uni_modal=True`` runs every block, the fused ones without their cross-attention (the
        image encoder alone, as the coarse-grained model's ITC path); the state is then final
        (last stage, no patch merging after it, no output norm)."""
        self._check_images(images)
        if uni_modal:
            return self.body.run(self.body.embed(images), sum(self.body.depths), fusion=False)
        return self.body.run(self.body.embed(images), self.num_prefusion_blocks)

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor, *, uni_modal: bool = False
    ) -> TextState:
        """Text layers before the first fused layer: (B, T) ids and mask -> :class:`TextState`.

        ``uni_modal=True`` runs every layer, the fused ones without their cross-attention (the
        text encoder alone, as the coarse-grained model's ITC path)."""
        self._check_text(input_ids, attention_mask)
        mask = attention_mask.bool()
        hidden = self.language.embed(input_ids)
        if self.tunable_linear is not None:
            hidden = hidden + self.tunable_linear.weight[: hidden.shape[1]].unsqueeze(0)
        attn_mask = mask[:, None, None, :]
        layers = (
            len(self.language.encoder.layer) if uni_modal else self.language.num_prefusion_layers
        )
        for i in range(layers):
            hidden = self.language.layer_forward(i, hidden, attn_mask, fusion=False)
        return TextState(hidden=hidden, mask=mask)

    def fuse(
        self,
        image: SwinState,
        text: TextState,
        image_sizes: Sequence[Tuple[int, int]] | None = None,
    ) -> Tuple[Dict[str, Tensor], TextFeatures]:
        """Fused tail and FPN.

        Args:
            image (SwinState): from :meth:`encode_image` (batch B, or 1 to share one image
                across B prompts).
            text (TextState): from :meth:`encode_text` (batch B, or 1 to share one prompt).
            image_sizes (list of (h, w), optional): valid size of each image before padding;
                only used when ``mask_image_padding`` is on.
        Returns:
            features (dict[str, Tensor]): "p3".."p7", each (B, C, H_l, W_l).
            text (TextFeatures): fused text features (B, T, D).
        """
        if self.fpn is None:
            raise RuntimeError("this backbone has no FPN: use fused_tail() for its fused tokens")
        image, fused = self.fused_tail(image, text, image_sizes)
        feats = self.fpn([image.outputs[s] for s in self.in_stages])
        return dict(zip(self._out_features, feats)), fused

    def fused_tail(
        self,
        image: SwinState,
        text: TextState,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        *,
        last_text_norm: bool = True,
    ) -> Tuple[SwinState, TextFeatures]:
        """The fused blocks and layers only (no FPN); see :meth:`fuse` for the arguments.

        ``last_text_norm=False`` skips the output LayerNorm of the last text layer, as the
        coarse-grained model's fused path does (``last_norm`` in the official
        ``fiber_module.py``); the detector applies it."""
        b_img, b_txt = image.tokens.shape[0], text.hidden.shape[0]
        if b_img != b_txt:
            if b_img == 1:
                image = image.expand(b_txt)
            elif b_txt == 1:
                text = text.expand(b_img)
            else:
                raise ValueError(f"batch of {b_img} images and {b_txt} prompts cannot be paired")
        hidden, mask = text.hidden, text.mask
        attn_mask = mask[:, None, None, :]
        first_layer = self.language.num_prefusion_layers
        for k in range(self.num_fused):
            image_in = image.tokens
            img_mask = (
                self._image_token_mask(image, image_sizes) if self.mask_image_padding else None
            )
            # Parallel update: both sides read the other's state from before this pair.
            image = self.body.step(image, hidden, mask)
            last = k == self.num_fused - 1
            hidden = self.language.layer_forward(
                first_layer + k,
                hidden,
                attn_mask,
                image_in,
                img_mask,
                last_norm=last_text_norm or not last,
            )
        return image, TextFeatures(hidden=hidden, mask=mask)

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_sizes: Sequence[Tuple[int, int]] | None = None,
    ) -> Tuple[Dict[str, Tensor], TextFeatures]:
        """Full forward: images (B, 3, H, W) and prompts (B, T) -> (features, text features)."""
        return self.fuse(
            self.encode_image(images), self.encode_text(input_ids, attention_mask), image_sizes
        )

    def compile_blocks(self, backend: str = "inductor", **options) -> None:
        """``torch.compile`` every Swin block, every RoBERTa layer and the FPN, in place.

        These modules have a fixed graph for a given input size; the joint loop that hands the
        states between them (and the split into pre-fusion and fused parts) stays in Python, so
        the cached multi-prompt path is unchanged. ``nn.Module.compile`` keeps the parameter
        names, so checkpoints load as before. Compilation happens at the first forward of each
        input size (minutes for FIBER-B with inductor on CPU).

        Args:
            backend (str): ``torch.compile`` backend ("inductor"; "aot_eager" / "eager" compile
                nothing, for debugging).
            options: further ``torch.compile`` arguments (e.g. ``mode="max-autotune"``).
        """
        modules = [blk for stage in self.body.layers for blk in stage.blocks]
        modules += list(self.language.encoder.layer) + [self.fpn]
        # Dynamo guards on the module: every block is one more compilation of the same
        # ``SwinBlock.forward`` code, and past ``recompile_limit`` (8 by default) it silently
        # runs the rest eagerly (FIBER-B's Swin has 24 blocks). Room for each block at a few
        # input sizes; the limit is process-wide and only ever raised here.
        import torch._dynamo  # here: loading dynamo would cost every process that never compiles

        needed = 4 * len(modules)
        if torch._dynamo.config.recompile_limit < needed:
            torch._dynamo.config.recompile_limit = needed
        for m in modules:
            m.compile(backend=backend, **options)

    # -- helpers -------------------------------------------------------------------------------
    def _image_token_mask(
        self, state: SwinState, image_sizes: Sequence[Tuple[int, int]] | None
    ) -> Tensor | None:
        """(B, 1, 1, H*W) bool mask of image tokens covering real (unpadded) pixels."""
        if image_sizes is None:
            return None
        h, w = state.hw
        stride = self.body.patch_size * 2**state.stage
        rows = torch.arange(h, device=state.tokens.device)
        cols = torch.arange(w, device=state.tokens.device)
        masks = []
        for ih, iw in image_sizes:
            valid_h, valid_w = -(-ih // stride), -(-iw // stride)
            masks.append((rows[:, None] < valid_h) & (cols[None, :] < valid_w))
        mask = torch.stack(masks).flatten(1)
        if mask.shape[0] == 1 and state.tokens.shape[0] > 1:
            mask = mask.expand(state.tokens.shape[0], -1)
        return mask[:, None, None, :]


def roberta_config_from_cfg(cfg) -> RobertaConfig:
    """transformers' RobertaConfig from ``cfg.MODEL.LANGUAGE``."""
    lang = cfg.MODEL.LANGUAGE
    return RobertaConfig(
        vocab_size=lang.VOCAB_SIZE,
        hidden_size=lang.HIDDEN_SIZE,
        num_hidden_layers=lang.NUM_LAYERS,
        num_attention_heads=lang.NUM_HEADS,
        intermediate_size=lang.INTERMEDIATE_SIZE,
        max_position_embeddings=lang.MAX_POSITION_EMBEDDINGS,
        type_vocab_size=lang.TYPE_VOCAB_SIZE,
        layer_norm_eps=lang.LAYER_NORM_EPS,
        pad_token_id=lang.PAD_TOKEN_ID,
        hidden_dropout_prob=lang.HIDDEN_DROPOUT,
        attention_probs_dropout_prob=lang.ATTENTION_DROPOUT,
    )


def swin_from_cfg(cfg, out_indices: Sequence[int], **options) -> FusionSwinTransformer:
    """:class:`FusionSwinTransformer` from ``cfg.MODEL.{SWIN,FIBER}``; ``options`` are passed on
    (``shift_single_window``, ``final_norm`` and ``window_size`` for the coarse-grained model)."""
    sw = cfg.MODEL.SWIN
    kwargs = dict(
        patch_size=sw.PATCH_SIZE,
        embed_dim=sw.EMBED_DIM,
        depths=sw.DEPTHS,
        num_heads=sw.NUM_HEADS,
        window_size=sw.WINDOW_SIZE,
        mlp_ratio=sw.MLP_RATIO,
        qkv_bias=sw.QKV_BIAS,
        drop_path_rate=sw.DROP_PATH_RATE,
        num_fused_blocks=cfg.MODEL.FIBER.NUM_FUSION_LAYERS,
        text_dim=cfg.MODEL.LANGUAGE.HIDDEN_SIZE,
        fusion_version=cfg.MODEL.FIBER.FUSION_VERSION,
        out_indices=out_indices,
        ape=sw.APE,
        pretrain_img_size=sw.PRETRAIN_IMG_SIZE,
        frozen_stages=sw.FROZEN_STAGES,
        use_checkpoint=sw.USE_CHECKPOINT,
        recompute_activations=sw.RECOMPUTE_ACTIVATIONS,
    )
    kwargs.update(options)
    return FusionSwinTransformer(**kwargs)


def text_encoder_from_cfg(cfg, swin: FusionSwinTransformer) -> FusionRobertaModel:
    """:class:`FusionRobertaModel` from ``cfg.MODEL.LANGUAGE``, fused with ``swin``'s tail."""
    return FusionRobertaModel(
        roberta_config_from_cfg(cfg),
        image_dims=swin.fused_block_dims(),
        use_checkpoint=cfg.MODEL.LANGUAGE.USE_CHECKPOINT,
    )


@BACKBONE_REGISTRY.register()
def build_fiber_backbone(cfg, input_shape: ShapeSpec | None = None) -> FIBERBackbone:
    """Build :class:`FIBERBackbone` from ``cfg.MODEL.{SWIN,LANGUAGE,FIBER,FPN}``."""
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"FIBER takes 3-channel images, got {input_shape.channels}")
    unknown = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in _STAGE_INDEX]
    if unknown:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES has unknown stages {unknown}; use {list(_STAGE_INDEX)}"
        )
    in_stages = [_STAGE_INDEX[f] for f in cfg.MODEL.FPN.IN_FEATURES]
    if max(in_stages) >= len(cfg.MODEL.SWIN.DEPTHS):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {cfg.MODEL.FPN.IN_FEATURES} needs more Swin stages"
        )
    swin = swin_from_cfg(cfg, in_stages)
    # built in this order (Swin, RoBERTa, FPN): a model initialised from scratch with a seed
    # keeps its initial weights across versions
    text_encoder = text_encoder_from_cfg(cfg, swin)
    fpn = FIBERFPN(
        [swin.num_features[s] for s in in_stages],
        cfg.MODEL.FPN.OUT_CHANNELS,
        drop_block_prob=cfg.MODEL.FPN.DROP_BLOCK_PROB,
        drop_block_size=cfg.MODEL.FPN.DROP_BLOCK_SIZE,
    )
    backbone = FIBERBackbone(
        swin=swin,
        text_encoder=text_encoder,
        fpn=fpn,
        in_stages=in_stages,
        size_divisibility=cfg.MODEL.FIBER.SIZE_DIVISIBILITY,
        mask_image_padding=cfg.MODEL.FIBER.MASK_IMAGE_PADDING,
        use_prompt_tuning=cfg.MODEL.FIBER.USE_PROMPT_TUNING,
    )
    if cfg.MODEL.FIBER.COMPILE_BACKBONE:
        backbone.compile_blocks(cfg.MODEL.FIBER.COMPILE_BACKEND)
    return backbone
