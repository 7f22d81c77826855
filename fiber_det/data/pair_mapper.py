"""PairDatasetMapper: an image-text pair dict -> the input of the coarse-grained FIBER model.

Dataset dicts come from :mod:`fiber_det.data.datasets.pairs` (one per image, all its captions;
``CONTRACT.md`` section 6). Follows the official stage-1 data path of microsoft/FIBER
(``coarse_grained/fiber/datasets/base_dataset.py`` and ``datamodules/datamodule_base.py``): the
image through the "albef" transforms (:mod:`fiber_det.data.pair_transforms`), the caption padded
and truncated to ``INPUT.COARSE.MAX_TEXT_LEN`` tokens, MLM masking by the rules of transformers'
``DataCollatorForLanguageModeling`` (:func:`fiber_det.text.mask_tokens_for_mlm`).

Training output (one pair: one caption drawn uniformly per visit of an image)::

    image (3, S, S) float32, normalised RGB; input_ids, attention_mask (L,) int64;
    mlm_input_ids, mlm_labels (L,) int64; image_id, caption_id, source_dataset; height = width = S

Evaluation output: the same for the image's first caption (no MLM keys), plus every caption for
retrieval: ``caption_ids`` (K,), ``captions_input_ids`` and ``captions_attention_mask`` (K, L).

Bad data: a caption longer than L tokens is truncated and counted (logged with the first
examples, then in the periodic summary). In training an image that cannot be read or decoded is
skipped and counted: the mapper returns None and detectron2's ``MapDataset`` maps another image
instead, so an epoch never stops on a bad file; if more than ``max_skip_fraction`` of the images
fail, the mapper raises (a wrong folder, not a few bad files). In evaluation it is an error (a
retrieval matrix without the image would be wrong).
"""

import io
import logging
from typing import Callable, Dict, Optional

import torch
from detectron2.config import configurable
from PIL import Image

from ..text import encode_captions, load_tokenizer, mask_tokens_for_mlm, special_token_mask
from .datasets.pairs import ArrowImageReader
from .pair_transforms import build_pair_transform
from .utils import DataIssueCounter, read_image

__all__ = ["PairDatasetMapper", "decode_image_bytes"]

logger = logging.getLogger(__name__)

MIN_IMAGES_BEFORE_GIVING_UP = 20  # images mapped before the skip fraction can stop training


def decode_image_bytes(data: bytes, where: str) -> Image.Image:
    """Decode encoded image bytes (an Arrow row) to an RGB PIL image.

    Raises:
        OSError: empty or undecodable bytes, naming ``where``.
    """
    if not data:
        raise OSError(f"cannot read image {where}: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(
            f"cannot read image {where} ({type(e).__name__}: {e}): the bytes are corrupt or not an "
            "image; re-create the Arrow file from the original images"
        ) from e


def _where(d: Dict) -> str:
    if "file_name" in d:
        return str(d["file_name"])
    if "arrow_file" in d:
        return f"{d['arrow_file']} row {d.get('arrow_row')} (image_id {d.get('image_id')!r})"
    return f"image_id {d.get('image_id')!r}"


class PairDatasetMapper:
    """Map image-text pair dicts to coarse-grained FIBER inputs (see module docstring).

    Args:
        is_train: training (random caption, MLM, skip unreadable images) or evaluation.
        transform: PIL RGB image -> (3, S, S) float tensor (:func:`build_pair_transform`).
        tokenizer: RoBERTa tokenizer with a ``<mask>`` token (``MODEL.LANGUAGE.TOKENIZER``).
        image_size: S, ``INPUT.COARSE.IMAGE_SIZE`` (reported as the input's height / width).
        max_text_len: L, ``INPUT.COARSE.MAX_TEXT_LEN`` (special tokens included; official 40).
        mlm_probability: ``INPUT.COARSE.MLM_PROB`` (official 0.15).
        max_skip_fraction: training stops with an error once more than this share of the images
            mapped so far (at least 20) could not be read.
        log_period: images between two summaries of the bad-data counts.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        transform: Callable,
        tokenizer,
        image_size: int,
        max_text_len: int = 40,
        mlm_probability: float = 0.15,
        max_skip_fraction: float = 0.5,
        log_period: int = 1000,
    ):
        if is_train and tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no <mask> token, which MLM needs")
        self.is_train = is_train
        self.transform = transform
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.mlm_probability = mlm_probability
        self.max_skip_fraction = max_skip_fraction
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.arrow = ArrowImageReader()
        mode = "train" if is_train else "eval"
        self.issues = DataIssueCounter(f"PairDatasetMapper({mode})", log_period=log_period)
        self.skipped = 0
        logger.info("[PairDatasetMapper] %s transform: %s", mode, transform)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        c = cfg.INPUT.COARSE
        name = c.TRAIN_TRANSFORM if is_train else c.TEST_TRANSFORM
        return {
            "is_train": is_train,
            "transform": build_pair_transform(name, c.IMAGE_SIZE),
            "tokenizer": load_tokenizer(cfg.MODEL.LANGUAGE.TOKENIZER),
            "image_size": c.IMAGE_SIZE,
            "max_text_len": c.MAX_TEXT_LEN,
            "mlm_probability": c.MLM_PROB,
        }

    def read_pil(self, d: Dict) -> Image.Image:
        """The dict's image as RGB PIL (``file_name``, ``image_bytes`` or an Arrow row)."""
        if "file_name" in d:
            return Image.fromarray(read_image(d["file_name"], "RGB"))
        if "image_bytes" in d:
            return decode_image_bytes(d["image_bytes"], _where(d))
        if "arrow_file" in d and "arrow_row" in d:
            data = self.arrow.read(d["arrow_file"], int(d["arrow_row"]))
            return decode_image_bytes(data, _where(d))
        raise KeyError(
            f"pair dict {_where(d)} has no image: it needs 'file_name', 'image_bytes' or "
            "'arrow_file' + 'arrow_row' (see fiber_det/data/CONTRACT.md)"
        )

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        d = dataset_dict
        captions, caption_ids = d.get("captions"), d.get("caption_ids")
        if not captions or caption_ids is None or len(caption_ids) != len(captions):
            raise ValueError(
                f"pair dict {_where(d)} needs non-empty 'captions' and one 'caption_ids' entry per "
                "caption (load it with fiber_det.data.datasets.pairs)"
            )
        try:
            image = self.read_pil(d)
        except (OSError, Image.DecompressionBombError) as e:
            if not self.is_train:
                raise
            return self._skip(d, e)
        out = {
            "image": self.transform(image),
            "image_id": d.get("image_id"),
            "height": self.image_size,
            "width": self.image_size,
        }
        if "source_dataset" in d:
            out["source_dataset"] = d["source_dataset"]
        if self.is_train:  # one caption drawn per visit of the image
            k = int(torch.randint(len(captions), ()).item())
            encoded, row = self._encode([captions[k]], d), 0
        else:  # the first caption, and every caption for retrieval
            encoded, k, row = self._encode(captions, d), 0, 0
        out["caption_id"] = int(caption_ids[k])
        out["input_ids"] = encoded.input_ids[row]
        out["attention_mask"] = encoded.attention_mask[row]
        if self.is_train:
            out["mlm_input_ids"], out["mlm_labels"] = mask_tokens_for_mlm(
                out["input_ids"],
                special_mask=special_token_mask(out["input_ids"], self.special_ids),
                mask_token_id=self.tokenizer.mask_token_id,
                vocab_size=len(self.tokenizer),
                mlm_probability=self.mlm_probability,
            )
        else:
            out["caption_ids"] = [int(c) for c in caption_ids]
            out["captions_input_ids"] = encoded.input_ids
            out["captions_attention_mask"] = encoded.attention_mask
        self.issues.step()
        return out

    def _encode(self, captions, d: Dict):
        encoded = encode_captions(self.tokenizer, captions, self.max_text_len)
        for caption, n in zip(captions, encoded.num_tokens):
            if n > self.max_text_len:
                self.issues.add(
                    "caption_truncated",
                    1,
                    f"{n} tokens > INPUT.COARSE.MAX_TEXT_LEN {self.max_text_len}: {caption[:60]!r}",
                )
        return encoded

    def _skip(self, d: Dict, error: Exception) -> None:
        self.skipped += 1
        self.issues.add("unreadable_image_skipped", 1, str(error))
        self.issues.step()
        seen = self.issues.images
        if seen >= MIN_IMAGES_BEFORE_GIVING_UP and self.skipped > self.max_skip_fraction * seen:
            raise RuntimeError(
                f"{self.skipped} of the {seen} images mapped so far could not be read (last: "
                f"{error}); check the image folder or the Arrow files of {d.get('source_dataset')}"
            ) from error
        return None
