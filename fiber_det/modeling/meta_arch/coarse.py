"""FIBERCoarse: the coarse-grained FIBER model (stage 1: ITC, ITM, MLM) as a meta-architecture.

The same fused backbone as the detector (:class:`~fiber_det.modeling.backbone.FIBERBackbone`,
without its FPN) with the heads of the official coarse-grained model (``microsoft/FIBER``
``coarse_grained/fiber/modules/fiber_module.py``, METER-style):

* uni-modal path (ITC): every Swin block and RoBERTa layer with its cross-attention off, the
  Swin's final LayerNorm, the ``*_itc`` transforms and poolers (image: mean over tokens first),
  L2 normalisation;
* fused path (ITM, MLM): the pre-fusion parts, then the fused pairs updated in parallel, the last
  text layer without its output LayerNorm (official quirk), the cross-modal transforms, poolers
  (text: first token; image: mean over tokens) and ``cls_feats = [text, image]``; no Swin final
  norm on this path (the official model applies it only in the ITC path).

Input contract (``COARSE_CONTRACT.md``; one dict per image-text pair):

* ``image``: (3, S, S) float, ImageNet-normalised RGB, S = ``INPUT.COARSE.IMAGE_SIZE``;
* ``input_ids``, ``attention_mask``: (L,) int64 RoBERTa ids and mask;
* training: ``mlm_input_ids`` (L,) masked ids and ``mlm_labels`` (L,) (-100 where not masked).

In training, ``forward`` returns ``{"loss_itc", "loss_mlm", "loss_itm"}`` (those whose weight is
> 0). At inference it returns, per pair, its ITC embeddings ``{"image_embedding",
"text_embedding"}`` (D,); retrieval scores over whole test sets are computed by
:mod:`fiber_det.modeling.coarse.retrieval`.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone"
(NeurIPS 2022), Sec. 3.2; the queue and hard negatives follow ALBEF (Li et al., NeurIPS 2021).
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn

from ..backbone.fiber_backbone import (
    FIBERBackbone,
    TextState,
    swin_from_cfg,
    text_encoder_from_cfg,
)
from ..backbone.swin import SwinState
from ..coarse.heads import ITMHead, MLMHead, Pooler, init_head_weights
from ..coarse.queue import ITCQueue
from ..coarse.retrieval import RetrievalScores, itm_scores
from ..coarse.training import CoarseLosses

__all__ = ["FIBERCoarse", "FusedOutputs", "build_coarse_backbone"]

logger = logging.getLogger(__name__)

# Official temperature bounds (``pl_module.temp.clamp_(0.001, 1.0)`` in ``compute_itc``).
TEMPERATURE_RANGE = (0.001, 1.0)


@dataclass
class FusedOutputs:
    """Outputs of the fused path for B image-text pairs.

    Attributes:
        text_feats (Tensor): (B, T, D) text tokens after ``cross_modal_text_transform``.
        image_feats (Tensor): (B, N, D) image tokens after ``cross_modal_image_transform``.
        cls_feats (Tensor): (B, 2D) ``[text pooler(token 0), image pooler(token mean)]``.
    """

    text_feats: Tensor
    image_feats: Tensor
    cls_feats: Tensor


def build_coarse_backbone(cfg) -> FIBERBackbone:
    """The fused Swin + RoBERTa of the coarse model (no FPN), from ``cfg.MODEL`` and
    ``cfg.INPUT.COARSE.IMAGE_SIZE``.

    As the official coarse model (timm's classification Swin), the window is the size of the last
    stage's map (``image_size / 32`` for Swin-B: 12 at 384, 18 at 576); ``MODEL.SWIN.WINDOW_SIZE``
    must say so. Such a map is not shifted, and the Swin has the classification final norm.
    """
    size = cfg.INPUT.COARSE.IMAGE_SIZE
    sw = cfg.MODEL.SWIN
    stride = sw.PATCH_SIZE * 2 ** (len(sw.DEPTHS) - 1)
    if size % stride:
        raise ValueError(
            f"INPUT.COARSE.IMAGE_SIZE {size} must be a multiple of {stride} (patch size x the "
            "downsampling of the Swin stages)"
        )
    if sw.WINDOW_SIZE != size // stride:
        raise ValueError(
            f"MODEL.SWIN.WINDOW_SIZE {sw.WINDOW_SIZE} does not fit INPUT.COARSE.IMAGE_SIZE {size}: "
            f"the coarse model's window covers the last stage's map (official: image size / "
            f"{stride}); set MODEL.SWIN.WINDOW_SIZE {size // stride}"
        )
    swin = swin_from_cfg(cfg, (), shift_single_window=False, final_norm=True)
    return FIBERBackbone(
        swin=swin,
        text_encoder=text_encoder_from_cfg(cfg, swin),
        fpn=None,
        in_stages=(),
        size_divisibility=stride,
    )


@META_ARCH_REGISTRY.register()
class FIBERCoarse(nn.Module):
    """Coarse-grained FIBER: image-text contrastive, matching and masked-language-model heads on
    the fused backbone (see the module docstring).

    Args:
        backbone (FIBERBackbone): fused Swin + RoBERTa without FPN (:func:`build_coarse_backbone`).
        hidden_size (int): width D of the cross-modal transforms, poolers, ITC embeddings and MLM
            head (official 768).
        vocab_size (int): MLM classes.
        image_size (int): side S of the input images.
        max_text_len (int): L, token length of the queued texts.
        itc_weight, itm_weight, mlm_weight (float): loss weights; 0 turns a loss and its head off
            (ITC off also removes the temperature and the queue).
        queue_size (int): ITC queue entries (official 4096).
        hard_negatives_from_queue (bool): keep the raw inputs of the queue entries and draw ITM
            negatives from them too (official; memory: see :mod:`..coarse.queue`).
        normalize_queue_init (bool): L2-normalise the initial random queue (not official).
        temperature (float): initial ITC temperature (official 0.07).
        gather_batch (bool): ITC and hard negatives over the batch of every process (not
            official; the official model uses its own batch plus the shared queue).
        pad_token_id (int): RoBERTa's padding id.
        mlm_norm_eps (float): LayerNorm epsilon of the MLM head (official 1e-12).
        rerank_topk (int): default of :func:`~fiber_det.modeling.coarse.retrieval.itm_scores`:
            ITM re-ranks the ITC top-k (0: every pair, official).
        itm_batch_size (int): pairs per fused-tail batch in retrieval scoring.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: FIBERBackbone,
        hidden_size: int,
        vocab_size: int,
        image_size: int,
        max_text_len: int,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        queue_size: int = 4096,
        hard_negatives_from_queue: bool = True,
        normalize_queue_init: bool = False,
        temperature: float = 0.07,
        gather_batch: bool = False,
        pad_token_id: int = 1,
        mlm_norm_eps: float = 1e-12,
        rerank_topk: int = 0,
        itm_batch_size: int = 64,
    ):
        super().__init__()
        if backbone.fpn is not None or backbone.body.norm is None:
            raise ValueError("FIBERCoarse needs build_coarse_backbone(cfg): no FPN, final norm")
        self.backbone = backbone
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.pad_token_id = pad_token_id
        self.hidden_size = hidden_size
        self.rerank_topk = rerank_topk
        self.itm_batch_size = itm_batch_size
        image_dim = backbone.body.num_features[-1]
        text_dim = backbone.language.hidden_size
        d = hidden_size
        self.cross_modal_text_transform = nn.Linear(text_dim, d)
        self.cross_modal_image_transform = nn.Linear(image_dim, d)
        self.cross_modal_text_transform_itc = nn.Linear(text_dim, d)
        self.cross_modal_image_transform_itc = nn.Linear(image_dim, d)
        self.cross_modal_image_pooler = Pooler(d)
        self.cross_modal_text_pooler = Pooler(d)
        self.cross_modal_image_pooler_itc = Pooler(d)
        self.cross_modal_text_pooler_itc = Pooler(d)
        self.mlm_score = MLMHead(d, vocab_size, mlm_norm_eps) if mlm_weight > 0 else None
        self.itm_score = ITMHead(2 * d) if itm_weight > 0 else None
        for name, module in self.named_children():
            if name != "backbone":
                module.apply(init_head_weights)
        if itc_weight > 0:
            self.temp = nn.Parameter(torch.tensor(float(temperature)))
            self.queue = ITCQueue(
                dim=d,
                size=queue_size,
                image_size=image_size,
                text_len=max_text_len,
                keep_inputs=hard_negatives_from_queue,
                normalize_init=normalize_queue_init,
                pad_token_id=pad_token_id,
            )
        else:
            self.temp, self.queue = None, None
        self.losses = CoarseLosses(
            itc_weight=itc_weight,
            itm_weight=itm_weight,
            mlm_weight=mlm_weight,
            gather_batch=gather_batch,
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        co = cfg.MODEL.COARSE
        return {
            "backbone": build_coarse_backbone(cfg),
            "hidden_size": co.HIDDEN_SIZE,
            "vocab_size": cfg.MODEL.LANGUAGE.VOCAB_SIZE,
            "image_size": cfg.INPUT.COARSE.IMAGE_SIZE,
            "max_text_len": cfg.INPUT.COARSE.MAX_TEXT_LEN,
            "itc_weight": co.ITC_LOSS_WEIGHT,
            "itm_weight": co.ITM_LOSS_WEIGHT,
            "mlm_weight": co.MLM_LOSS_WEIGHT,
            "queue_size": co.QUEUE_SIZE,
            "hard_negatives_from_queue": co.HARD_NEGATIVES_FROM_QUEUE,
            "normalize_queue_init": co.NORMALIZE_QUEUE_INIT,
            "temperature": co.TEMPERATURE,
            "gather_batch": co.GATHER_BATCH,
            "pad_token_id": cfg.MODEL.LANGUAGE.PAD_TOKEN_ID,
            "rerank_topk": co.RERANK_TOPK,
            "itm_batch_size": co.ITM_BATCH_SIZE,
        }

    @property
    def device(self) -> torch.device:
        return self.cross_modal_text_transform.weight.device

    # -- input checks --------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(
                f"the coarse model takes normalised images of shape (N, 3, {s}, {s}) "
                f"(INPUT.COARSE.IMAGE_SIZE {s}), got {tuple(images.shape)}: resize with the "
                "'albef' transform of the coarse data mapper, or build the model with that size"
            )

    # -- uni-modal path (ITC) ------------------------------------------------------------------
    def encode_image_itc(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) normalised images -> (N, D) L2-normalised ITC embeddings."""
        self._check_images(images)
        state = self.backbone.encode_image(images, uni_modal=True)
        tokens = self.cross_modal_image_transform_itc(self.backbone.body.norm(state.tokens))
        cls = self.cross_modal_image_pooler_itc(tokens.mean(dim=1, keepdim=True))
        return F.normalize(cls, dim=-1)

    def encode_text_itc(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(N, L) ids and mask -> (N, D) L2-normalised ITC embeddings."""
        state = self.backbone.encode_text(input_ids, attention_mask, uni_modal=True)
        cls = self.cross_modal_text_pooler_itc(self.cross_modal_text_transform_itc(state.hidden))
        return F.normalize(cls, dim=-1)

    def encode_itc(
        self,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tuple[Tensor | None, Tensor | None]:
        """ITC embeddings of the inputs given: ``(image_cls, text_cls)``, each (N, D)
        L2-normalised, or None when its input is not given."""
        image_cls = self.encode_image_itc(images) if images is not None else None
        text_cls = None
        if input_ids is not None or attention_mask is not None:
            if input_ids is None or attention_mask is None:
                raise ValueError("encode_itc needs both input_ids and attention_mask for text")
            text_cls = self.encode_text_itc(input_ids, attention_mask)
        return image_cls, text_cls

    # -- fused path (ITM, MLM) -----------------------------------------------------------------
    def encode_image_prefusion(self, images: Tensor) -> SwinState:
        """Swin blocks before the first fused one (computed once per image in retrieval)."""
        self._check_images(images)
        return self.backbone.encode_image(images)

    def encode_text_prefusion(self, input_ids: Tensor, attention_mask: Tensor) -> TextState:
        """RoBERTa layers before the first fused one (computed once per caption in retrieval)."""
        return self.backbone.encode_text(input_ids, attention_mask)

    def fuse_states(self, image: SwinState, text: TextState) -> FusedOutputs:
        """Fused tail and cross-modal heads from pre-fusion states (batch B, or 1 to share)."""
        image, text_out = self.backbone.fused_tail(image, text, last_text_norm=False)
        text_feats = self.cross_modal_text_transform(text_out.hidden)
        image_feats = self.cross_modal_image_transform(image.tokens)
        cls_text = self.cross_modal_text_pooler(text_feats)
        cls_image = self.cross_modal_image_pooler(image_feats.mean(dim=1, keepdim=True))
        return FusedOutputs(text_feats, image_feats, torch.cat([cls_text, cls_image], dim=-1))

    def fuse(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> FusedOutputs:
        """Fused path for N aligned pairs: images (N, 3, S, S), ids and mask (N, L)."""
        return self.fuse_states(
            self.encode_image_prefusion(images),
            self.encode_text_prefusion(input_ids, attention_mask),
        )

    def itm_logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(N, 2) image-text matching logits (no match, match) of N aligned pairs; column 1 is
        the official retrieval score (``rank_output``)."""
        return self._head("itm_score")(self.fuse(images, input_ids, attention_mask).cls_feats)

    def mlm_logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(N, L, vocab) masked-language-model logits of the fused text tokens."""
        return self._head("mlm_score")(self.fuse(images, input_ids, attention_mask).text_feats)

    @property
    def has_itm_head(self) -> bool:
        """Whether ITM scores exist (``MODEL.COARSE.ITM_LOSS_WEIGHT`` > 0)."""
        return self.itm_score is not None

    def itm_retrieval_scores(
        self, images, input_ids: Tensor, attention_mask: Tensor, **kwargs
    ) -> RetrievalScores:
        """ITM scores of every image with every caption from cached pre-fusion states, for
        retrieval evaluation: :func:`fiber_det.modeling.coarse.retrieval.itm_scores` (images
        (I, 3, S, S) or an iterable of batches, ids and mask (T, L); keyword arguments there)."""
        return itm_scores(self, images, input_ids, attention_mask, **kwargs)

    def _head(self, name: str) -> nn.Module:
        head = getattr(self, name)
        if head is None:
            key = {"itm_score": "ITM", "mlm_score": "MLM"}[name]
            raise RuntimeError(
                f"this model has no {key} head: it was built with MODEL.COARSE.{key}_LOSS_WEIGHT 0"
            )
        return head

    def clamp_temperature(self) -> Tensor:
        """Clamp the ITC temperature in place to [0.001, 1] (official) and return it."""
        if self.temp is None:
            raise RuntimeError("this model has no ITC head (MODEL.COARSE.ITC_LOSS_WEIGHT 0)")
        with torch.no_grad():
            self.temp.clamp_(*TEMPERATURE_RANGE)
        return self.temp

    def reset_queue(self) -> None:
        """Empty the ITC queue (a fine-tuning run starting from a checkpoint, as officially)."""
        if self.queue is not None:
            self.queue.reset()

    # -- detectron2 interface ------------------------------------------------------------------
    def batch_inputs(self, batched_inputs: Sequence[Dict]) -> Dict[str, Tensor]:
        """Stack the per-pair dicts: ``images`` (N, 3, S, S), ``input_ids`` / ``attention_mask``
        (N, T) padded to the longest, and in training with MLM ``mlm_input_ids`` /
        ``mlm_labels``."""
        if not batched_inputs:
            raise ValueError("empty batch")
        dev = self.device
        out = {"images": torch.stack([x["image"] for x in batched_inputs]).to(dev)}
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0}
        if self.training and self.losses.mlm_weight > 0:
            pads.update(mlm_input_ids=self.pad_token_id, mlm_labels=-100)
        for key, value in pads.items():
            missing = [i for i, x in enumerate(batched_inputs) if key not in x]
            if missing:
                raise KeyError(f"inputs {missing[:5]} have no '{key}' (see COARSE_CONTRACT.md)")
            seqs = [torch.as_tensor(x[key], dtype=torch.long) for x in batched_inputs]
            out[key] = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
            out[key] = out[key].to(dev)
        return out

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses. Inference: per pair ``{"image_embedding",
        "text_embedding"}`` (D,) ITC embeddings."""
        batch = self.batch_inputs(batched_inputs)
        if self.training:
            return self.losses(self, batch)
        image_cls, text_cls = self.encode_itc(
            batch["images"], batch["input_ids"], batch["attention_mask"]
        )
        return [{"image_embedding": i, "text_embedding": t} for i, t in zip(image_cls, text_cls)]
