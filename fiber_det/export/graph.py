"""The part of FIBER that goes into the ONNX graph: a traceable module around ``FIBERDetector``.

:class:`ExportableFIBER` runs, for one image of a fixed padded size ``(H, W)``:

1. normalisation with the model's pixel mean / std, then zeroes outside the valid
   ``image_size`` (the official order: normalise, then zero-pad);
2. the pre-fusion image side; the pre-fusion text side, or, in the **fixed-vocabulary** mode, the
   pre-fusion text states of a vocabulary computed at export time and stored as constants;
3. the fused tail, the FPN and the grounding head (the deformable convs of the DyHead are the
   ``grid_sample`` formulation, made of standard ops);
4. the fixed-shape part of the post-processing (:meth:`PostProcessor.dense`): every anchor
   decoded, its label scores (mean token probability over each label's tokens) and centerness.

The data-dependent rest (threshold, per-level top-k, clipping, class-wise NMS with the legacy
"+1" IoU, the detection cap) runs after the graph in :class:`~fiber_det.export.OnnxDetector`
with the same code as the PyTorch model (:meth:`PostProcessor.select`), so that the detections
are those of PyTorch by construction and not those of ONNX's NonMaxSuppression, which keeps
boxes in a different order and knows no "+1" convention.

Graph inputs and outputs (``P``: prompts, 1 for the full graph; ``A``: anchors of all levels)::

    image           (1, 3, H, W) float32, the model's channel order (BGR for FIBER), 0..255,
                    the resized image at the top-left, anything in the padding
    image_size      (2,) int64, (h, w) of the resized image before padding
    input_ids       (1, T) int64          } full graph only (the tokenizer stays outside)
    attention_mask  (1, T) int64          }
    positive_map    (C, T) float32        }
    boxes           (P, A, 4) float32, xyxy in resized-image pixels, not clipped
    label_scores    (P, A, C) float32
    centerness      (P, A) float32
"""

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..modeling.backbone.fiber_backbone import TextState
from ..modeling.head import deform_conv
from ..modeling.meta_arch.multi_prompt import stack_text_states

__all__ = ["ExportableFIBER", "whole_image_dcn_tiles", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("image", "image_size", "input_ids", "attention_mask", "positive_map")
OUTPUT_NAMES = ("boxes", "label_scores", "centerness")


@contextmanager
def whole_image_dcn_tiles() -> Iterator[None]:
    """Run the grid_sample DCN in one tile per image while tracing (the CPU row bands exist for
    cache locality in eager PyTorch; in a graph they would only multiply the nodes)."""
    saved = deform_conv.CPU_TILE_ELEMENTS
    deform_conv.CPU_TILE_ELEMENTS = 1 << 62
    try:
        yield
    finally:
        deform_conv.CPU_TILE_ELEMENTS = saved


class ExportableFIBER(nn.Module):
    """``FIBERDetector`` for one image of a fixed padded size, as a traceable module.

    Args:
        model (FIBERDetector): the detector, weights loaded, in eval mode.
        height, width (int): padded input size of the graph (multiples of the model's
            ``size_divisibility``).
        text_states (list[TextState], optional): pre-fusion text states of a fixed vocabulary,
            one (1, T, D) state per prompt; the graph then takes the image only.
        positive_maps (list[Tensor], optional): with ``text_states``, each prompt's (C_p, T)
            label -> token map.
    """

    def __init__(
        self,
        model: nn.Module,
        height: int,
        width: int,
        text_states: Optional[Sequence[TextState]] = None,
        positive_maps: Optional[Sequence[Tensor]] = None,
    ):
        super().__init__()
        if model.backbone.mask_image_padding:
            raise ValueError(
                "MODEL.FIBER.MASK_IMAGE_PADDING=True is not supported by the ONNX export (the "
                "mask depends on each image's size); export a model without it"
            )
        self.model = model
        self.height, self.width = int(height), int(width)
        self.fixed_vocabulary = text_states is not None
        if self.fixed_vocabulary:
            if positive_maps is None or len(positive_maps) != len(text_states):
                raise ValueError("a fixed vocabulary needs one positive map per text state")
            stacked = stack_text_states(list(text_states))
            length = stacked.hidden.shape[1]
            labels = max(int(m.shape[0]) for m in positive_maps)
            maps = torch.zeros(len(positive_maps), labels, length)
            for i, m in enumerate(positive_maps):
                maps[i, : m.shape[0], : m.shape[1]] = m.float()
            self.register_buffer("text_hidden", stacked.hidden.detach().clone())
            self.register_buffer("text_mask", stacked.mask.clone())
            self.register_buffer("positive_maps", maps)

    @property
    def input_names(self) -> List[str]:
        return list(INPUT_NAMES[:2] if self.fixed_vocabulary else INPUT_NAMES)

    def normalized_image(self, image: Tensor, image_size: Tensor) -> Tensor:
        """(1, 3, H, W) raw image -> normalised, zero outside the valid (h, w) region."""
        model = self.model
        x = (image - model.pixel_mean) / model.pixel_std
        rows = torch.arange(self.height, device=image.device) < image_size[0]
        cols = torch.arange(self.width, device=image.device) < image_size[1]
        valid = rows[:, None] & cols[None, :]
        return torch.where(valid, x, torch.zeros_like(x))

    def forward(
        self,
        image: Tensor,
        image_size: Tensor,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        positive_map: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """See the module docstring for the shapes."""
        model = self.model
        backbone = model.backbone
        image_state = backbone.encode_image(self.normalized_image(image, image_size))
        if self.fixed_vocabulary:
            text_state = TextState(hidden=self.text_hidden, mask=self.text_mask)
            maps = self.positive_maps
        else:
            text_state = backbone.encode_text(input_ids, attention_mask)
            maps = positive_map[None].float()
        feats, text = backbone.fuse(image_state, text_state)
        outputs = model.head(list(feats.values()), text)
        anchors = model.anchors(feats)
        boxes, scores, centerness = [], [], []
        for p in range(maps.shape[0]):
            levels = [
                model.postprocessor.dense(r[p], c[p], lg[p], a, maps[p])
                for r, c, lg, a in zip(
                    outputs.box_regression, outputs.centerness, outputs.logits, anchors
                )
            ]
            boxes.append(torch.cat([lv[0] for lv in levels]))
            scores.append(torch.cat([lv[1] for lv in levels]))
            centerness.append(torch.cat([lv[2] for lv in levels]))
        return torch.stack(boxes), torch.stack(scores), torch.stack(centerness)
