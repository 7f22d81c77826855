"""FIBERDetector: the fine-grained FIBER model as a detectron2 meta-architecture.

Input contract (one dict per image, detectron2 style):

* ``image``: (3, H, W) tensor in ``cfg.INPUT.FORMAT`` (BGR 0..255 for FIBER), already resized;
* ``height``, ``width`` (optional): size to rescale the output boxes to;
* ``input_ids``, ``attention_mask``: (L,) tokenized prompt;
* ``positive_map``: (num_labels, L) label -> tokens (a category of a detection prompt, or a phrase
  of a caption); required at inference;
* in training, ``instances`` with ``gt_boxes`` and ``positive_map`` (num_gt, L).

At inference an image may instead carry ``prompts``: a list of dicts, each with ``input_ids``,
``attention_mask`` and ``positive_map`` (a large vocabulary split in chunks, e.g. LVIS in 31
prompts of 40 names). Each prompt is scored separately (its own detection cap, as the official
chunked evaluation) and the labels of prompt p are offset by the number of labels of prompts
0..p-1, so ``pred_classes`` index the concatenation of all prompts' labels. The pre-fusion image
part then runs once per image and the pre-fusion text part once per distinct prompt
(``MODEL.FIBER.CACHED_MULTI_PROMPT``, see :mod:`.multi_prompt`).

Output at inference: ``[{"instances": Instances}]`` with ``pred_boxes``, ``scores`` and
``pred_classes`` (0-based row of that image's ``positive_map``), sorted by score.

Images in a batch may have different prompts and sizes. Batching images of different sizes
changes the numbers: padding enters window attention, the text-to-image attention (the official
model does not mask padded image tokens), convolutions and global pools. Batched results equal
one-by-one results when the images share a padded size; evaluators that must reproduce official
numbers run one image per forward or group images by padded size.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone"
(NeurIPS 2022). Official code: ``microsoft/FIBER`` ``GeneralizedVLRCNN`` + ``VLDyHeadModule``.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ..backbone.fiber_backbone import FIBERBackbone, TextFeatures, TextState
from ..head.boxes import BoxCoder, make_anchors
from ..head.grounding_head import FIBERGroundingHead, HeadOutputs
from ..head.inference import Detections, PostProcessor
from ..head.losses import FIBERLoss
from .multi_prompt import (
    TextStateCache,
    merge_prompt_results,
    split_prompts,
    stack_text_states,
    weights_version,
)

__all__ = ["FIBERDetector"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class FIBERDetector(nn.Module):
    """FIBER fine-grained detector: fused backbone, DyHead grounding head, ATSS losses.

    Args:
        backbone (FIBERBackbone): fused image-text backbone with FPN.
        head (FIBERGroundingHead): tower and predictions.
        loss (FIBERLoss): training losses.
        postprocessor (PostProcessor): inference.
        anchor_sizes, anchor_strides (sequence): one anchor per location and level.
        pixel_mean, pixel_std (sequence of 3 floats): normalisation in ``input_format``.
        input_format (str): channel order of ``image`` ("BGR" for official weights).
        pad_token_id (int): id used to pad prompts of different lengths in a batch.
        plus_one (bool): legacy "+1" box conventions (anchors).
        cached_multi_prompt (bool): share pre-fusion work across the prompts of an image.
        prompt_batch_size (int): prompts run together in the fused tail (memory vs speed).
        text_cache_size (int): pre-fusion text states kept (LRU) across images.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: FIBERBackbone,
        head: FIBERGroundingHead,
        loss: FIBERLoss,
        postprocessor: PostProcessor,
        anchor_sizes: Sequence[float],
        anchor_strides: Sequence[int],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        pad_token_id: int = 1,
        plus_one: bool = True,
        cached_multi_prompt: bool = True,
        prompt_batch_size: int = 8,
        text_cache_size: int = 128,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.loss = loss
        self.postprocessor = postprocessor
        self.anchor_sizes = tuple(anchor_sizes)
        self.anchor_strides = tuple(anchor_strides)
        self.input_format = input_format
        self.pad_token_id = pad_token_id
        self.plus_one = plus_one
        self.cached_multi_prompt = cached_multi_prompt
        self.prompt_batch_size = max(1, int(prompt_batch_size))
        self.text_cache = TextStateCache(text_cache_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        strides = [s.stride for s in backbone.output_shape().values()]
        if list(strides) != list(self.anchor_strides):
            raise ValueError(
                f"MODEL.ATSS.ANCHOR_STRIDES {list(anchor_strides)} != feature strides {strides}"
            )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        plus_one = cfg.MODEL.FIBER.LEGACY_PLUS_ONE
        backbone = build_backbone(cfg)
        dy, atss = cfg.MODEL.DYHEAD, cfg.MODEL.ATSS
        head = FIBERGroundingHead(
            channels=dy.CHANNELS,
            text_dim=cfg.MODEL.LANGUAGE.HIDDEN_SIZE,
            num_levels=len(backbone.output_shape()),
            num_convs=dy.NUM_CONVS,
            gn_groups=dy.GN_GROUPS,
            use_dyrelu=dy.USE_DYRELU,
            use_dyfuse=dy.USE_DYFUSE,
            use_deform=dy.USE_DFCONV,
            emulate_offset_quirk=dy.EMULATE_DCN_OFFSET_QUIRK,
            prior_prob=dy.PRIOR_PROB,
            log_scale=dy.LOG_SCALE,
            use_checkpoint=dy.USE_CHECKPOINT,
            dcn_impl=dy.DCN_IMPL,
            dcn_recompute=dy.DCN_RECOMPUTE,
        )
        if dy.CHANNELS != cfg.MODEL.FPN.OUT_CHANNELS:
            raise ValueError(
                f"MODEL.DYHEAD.CHANNELS ({dy.CHANNELS}) must equal MODEL.FPN.OUT_CHANNELS "
                f"({cfg.MODEL.FPN.OUT_CHANNELS})"
            )
        coder = BoxCoder(atss.BBOX_REG_WEIGHTS, plus_one=plus_one)
        return {
            "backbone": backbone,
            "head": head,
            "loss": FIBERLoss(
                coder,
                topk=atss.TOPK,
                focal_alpha=atss.FOCAL_ALPHA,
                focal_gamma=atss.FOCAL_GAMMA,
                reg_weight=atss.REG_LOSS_WEIGHT,
                centerness_weight=atss.CENTERNESS_LOSS_WEIGHT,
                token_weight=atss.TOKEN_LOSS_WEIGHT,
                plus_one=plus_one,
                max_query_len=cfg.MODEL.LANGUAGE.MAX_QUERY_LEN,
            ),
            "postprocessor": PostProcessor.from_config(cfg),
            "anchor_sizes": atss.ANCHOR_SIZES,
            "anchor_strides": atss.ANCHOR_STRIDES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "pad_token_id": cfg.MODEL.LANGUAGE.PAD_TOKEN_ID,
            "plus_one": plus_one,
            "cached_multi_prompt": cfg.MODEL.FIBER.CACHED_MULTI_PROMPT,
            "prompt_batch_size": cfg.MODEL.FIBER.PROMPT_BATCH_SIZE,
            "text_cache_size": cfg.MODEL.FIBER.TEXT_CACHE_SIZE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- inputs --------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise, then zero-pad to the backbone's size divisibility (official order)."""
        images = []
        for i, x in enumerate(batched_inputs):
            if "image" not in x:
                raise KeyError(f"input {i} has no 'image' (keys: {sorted(x)})")
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"input {i}: 'image' must be (3, H, W), got {tuple(img.shape)}")
            images.append((img.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility, pad_value=0.0)

    def preprocess_text(self, batched_inputs: List[Dict]) -> Tuple[Tensor, Tensor]:
        """Stack prompts, padding to the longest with ``pad_token_id`` / mask 0."""
        for i, x in enumerate(batched_inputs):
            for key in ("input_ids", "attention_mask"):
                if key not in x:
                    raise KeyError(
                        f"input {i} has no '{key}': tokenize the prompt in the data mapper "
                        "(fiber_det.text.tokenize_prompts)"
                    )
        length = max(int(x["input_ids"].shape[-1]) for x in batched_inputs)
        ids = torch.full((len(batched_inputs), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batched_inputs), length), dtype=torch.long)
        for i, x in enumerate(batched_inputs):
            n = x["input_ids"].shape[-1]
            ids[i, :n] = x["input_ids"].reshape(-1)
            mask[i, :n] = x["attention_mask"].reshape(-1)
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _pad_map(pmap: Tensor, length: int) -> Tensor:
        if pmap.shape[-1] > length:
            raise ValueError(
                f"positive_map has {pmap.shape[-1]} token columns, prompt has {length}"
            )
        return torch.nn.functional.pad(pmap.float(), (0, length - pmap.shape[-1]))

    def anchors(self, features: Dict[str, Tensor]) -> List[Tensor]:
        grids = [tuple(f.shape[-2:]) for f in features.values()]
        return make_anchors(
            grids, self.anchor_strides, self.anchor_sizes, self.plus_one, self.device
        )

    # -- forward -------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training and any("prompts" in x for x in batched_inputs):
            return [self.inference_multi_prompt(x) for x in batched_inputs]
        images = self.preprocess_image(batched_inputs)
        input_ids, attention_mask = self.preprocess_text(batched_inputs)
        features, text = self.backbone(images.tensor, input_ids, attention_mask, images.image_sizes)
        outputs = self.head(list(features.values()), text)
        anchors = self.anchors(features)
        if self.training:
            return self.losses(batched_inputs, outputs, anchors, text)
        return self.inference(batched_inputs, outputs, anchors, images.image_sizes)

    def losses(
        self,
        batched_inputs: List[Dict],
        outputs: HeadOutputs,
        anchors: List[Tensor],
        text: TextFeatures,
    ) -> Dict[str, Tensor]:
        length = text.mask.shape[1]
        boxes, maps = [], []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise KeyError(f"training input {i} has no 'instances'")
            inst = x["instances"].to(self.device)
            if not inst.has("positive_map") and len(inst):
                raise KeyError(f"training input {i}: instances need a 'positive_map' (num_gt, L)")
            boxes.append(inst.gt_boxes.tensor)
            maps.append(
                self._pad_map(inst.positive_map, length)
                if len(inst)
                else torch.zeros(0, length, device=self.device)
            )
        return self.loss(
            outputs.box_regression,
            outputs.centerness,
            outputs.logits,
            anchors,
            boxes,
            maps,
            text.mask,
        )

    def inference(
        self,
        batched_inputs: List[Dict],
        outputs: HeadOutputs,
        anchors: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        results = []
        length = outputs.logits[0].shape[-1]
        for i, x in enumerate(batched_inputs):
            if "positive_map" not in x:
                raise KeyError(f"input {i} has no 'positive_map' (num_labels, L): nothing to score")
            pmap = self._pad_map(x["positive_map"].to(self.device), length)
            dets = self.postprocessor(
                [r[i] for r in outputs.box_regression],
                [c[i] for c in outputs.centerness],
                [lg[i] for lg in outputs.logits],
                anchors,
                pmap,
                image_sizes[i],
            )
            height = x.get("height", image_sizes[i][0])
            width = x.get("width", image_sizes[i][1])
            results.append({"instances": self.to_instances(dets, image_sizes[i], (height, width))})
        return results

    def inference_multi_prompt(self, x: Dict) -> Dict[str, Instances]:
        """One image queried with several prompts (``x["prompts"]``).

        Cached path (default): pre-fusion image part once, pre-fusion text part once per distinct
        prompt (LRU-cached across images), fused tail + head per batch of prompts
        (:mod:`.multi_prompt`). Naive path: one full forward per prompt (official protocol).
        Both give the same detections.
        """
        prompts = split_prompts(x)
        sizes = [int(p["positive_map"].shape[0]) for p in prompts]
        base = {k: v for k, v in x.items() if k != "prompts"}
        if not self.cached_multi_prompt:
            parts = [self.forward([{**base, **p}])[0]["instances"] for p in prompts]
            return {"instances": merge_prompt_results(parts, sizes)}
        images = self.preprocess_image([x])
        size = images.image_sizes[0]
        out_size = (x.get("height", size[0]), x.get("width", size[1]))
        image_state = self.backbone.encode_image(images.tensor)
        states = [self._prompt_text_state(p) for p in prompts]
        parts = []
        for start in range(0, len(prompts), self.prompt_batch_size):
            chunk = slice(start, start + self.prompt_batch_size)
            feats, text = self.backbone.fuse(image_state, stack_text_states(states[chunk]), [size])
            outputs = self.head(list(feats.values()), text)
            anchors = self.anchors(feats)
            length = text.mask.shape[1]
            for j, p in enumerate(prompts[chunk]):
                dets = self.postprocessor(
                    [r[j] for r in outputs.box_regression],
                    [c[j] for c in outputs.centerness],
                    [lg[j] for lg in outputs.logits],
                    anchors,
                    self._pad_map(p["positive_map"].to(self.device), length),
                    size,
                )
                parts.append(self.to_instances(dets, size, out_size))
        return {"instances": merge_prompt_results(parts, sizes)}

    def _prompt_text_state(self, prompt: Dict) -> TextState:
        """Pre-fusion text state of one prompt, from the cache when nothing needs its graph and
        the text encoder's weights are those the cached state was computed with."""
        ids = prompt["input_ids"].reshape(1, -1).to(self.device)
        mask = prompt["attention_mask"].reshape(1, -1).to(self.device)
        cacheable = not self.training and not torch.is_grad_enabled()  # eval: no dropout
        if not cacheable:
            return self.backbone.encode_text(ids, mask)
        self.text_cache.validate(weights_version(self._text_encoder_tensors()))
        key = TextStateCache.key(ids, mask)
        state = self.text_cache.get(key)
        if state is None:
            state = self.backbone.encode_text(ids, mask)
            self.text_cache.put(key, state)
        return state

    def _text_encoder_tensors(self) -> List[Tensor]:
        """Every tensor :meth:`FIBERBackbone.encode_text` reads (the whole text encoder)."""
        tensors = list(self.backbone.language.parameters())
        tensors += list(self.backbone.language.buffers())
        if self.backbone.tunable_linear is not None:
            tensors.append(self.backbone.tunable_linear.weight)
        return tensors

    @staticmethod
    def to_instances(
        dets: Detections, input_size: Tuple[int, int], output_size: Tuple[int, int]
    ) -> Instances:
        """Detections in input pixels -> Instances at ``output_size`` (boxes scaled, not clipped:
        the official evaluation rescales without clipping)."""
        h, w = int(output_size[0]), int(output_size[1])
        sy, sx = h / input_size[0], w / input_size[1]
        boxes = dets.boxes * dets.boxes.new_tensor([sx, sy, sx, sy])
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(boxes)
        inst.scores = dets.scores
        inst.pred_classes = dets.labels
        return inst
