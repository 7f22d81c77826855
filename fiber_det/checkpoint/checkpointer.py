"""A DetectionCheckpointer that also reads official FIBER files directly."""

import logging
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer

from .coarse_model import convert_checkpoint_for_model
from .official import convert_official_state_dict, is_official_state_dict

__all__ = ["FIBERCheckpointer"]

logger = logging.getLogger(__name__)


class FIBERCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that converts official FIBER checkpoints on the fly.

    When ``MODEL.WEIGHTS`` points at an official fine-grained file (maskrcnn_benchmark keys
    ``fusion_backbone.*``, ``rpn.head.*``), it is converted exactly as
    ``tools/convert_fiber_checkpoint.py`` does, checked against the model (fusion variant, key
    names, shapes) and the conversion report is logged. Coarse-grained files (official Lightning
    files, FIBERCoarse checkpoints) are converted for the model they load into
    (:mod:`.coarse_model`). Other files load as in detectron2.
    """

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        self.last_conversion_report = None
        coarse = convert_checkpoint_for_model(loaded, self.model, filename)
        if coarse is not None:  # coarse-grained files, the coarse model, refusals
            loaded, self.last_conversion_report = coarse
            return loaded
        state = loaded.get("model", {})
        if isinstance(state, dict) and is_official_state_dict(state):
            model = self.model
            version = _fusion_version(model)
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            converted, report = convert_official_state_dict(
                state, expected_variant=version, model_shapes=shapes
            )
            self.last_conversion_report = report
            logger.info("Converting official FIBER checkpoint %s\n%s", filename, report.format())
            return {
                "model": converted,
                "__author__": "FIBER (official)",
                "matching_heuristics": False,
            }
        return loaded


def _fusion_version(model) -> str:
    """ "v3" if the model's fused Swin blocks have the i2t query LayerNorm, else "v2"."""
    names = (n for n, _ in model.named_parameters())
    return "v3" if any(".attn.norm_i2t_i." in n for n in names) else "v2"
