"""FIBERDatasetMapper: a dataset dict (detection or grounding) -> a FIBER model input.

The input contract is ``fiber_det/data/CONTRACT.md`` (section 2). Which path an image takes is
decided by the ``data_format`` metadata of its dataset (``"detection"`` or ``"grounding"``,
looked up through the ``source_dataset`` key that ``build_fiber_*_loader`` add), so one mapper
serves runs that mix detection and grounding data (FIBER pre-training: Objects365 + GoldG +
Flickr30k). Follows the official data path of microsoft/FIBER: ``modulated_coco.py``
(``CocoGrounding``, ``ModulatedDataset``, ``ConvertCocoPolysToMask``), ``od_to_grounding.py``,
``data/transforms/build.py`` and ``engine/inference.py`` (evaluation prompts).

Training: resize (one short side drawn per image), horizontal flip of image and boxes (MDETR's
left/right caption swap is optional), boxes converted / clipped / filtered, a caption
(detection: :mod:`fiber_det.text.od_to_grounding`; grounding: the image's caption), tokens and
``instances`` with ``gt_boxes`` (xyxy), ``positive_map`` (G, L) and ``gt_classes``. Boxes that end
up with no token (name or phrase not in the prompt, truncated, unlocatable span) are dropped and
counted. Evaluation: fixed resize and the image's prompt(s): detection data get every category
(or the image's ``sent_ids`` for D3) in one prompt or in chunks (``prompts``) with
``label_to_category``; grounding data get their caption with one positive-map row per phrase of
``tokens_positive_eval``, and their grounding fields pass through.

A "full" training prompt that cannot hold the whole vocabulary (e.g. 2000 categories in 256
tokens) would silently lose the boxes of every name past the cut: a dataset whose own policy is
"full" switches to "sampled" prompts with a warning, and an explicit
``DATASETS.FIBER.TRAIN_PROMPT full`` is refused.
"""

import copy
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ..text import (
    full_category_prompt,
    load_tokenizer,
    sampled_category_prompt,
    swap_left_right,
    vocabulary_prompts,
)
from .prompting import DatasetVocabulary, EncodedPrompt, PromptEncoder, dataset_vocabulary
from .transforms import annotations_to_boxes, build_fiber_augmentations
from .utils import DataIssueCounter, read_image

__all__ = ["FIBERDatasetMapper"]

logger = logging.getLogger(__name__)

# Encoded evaluation prompts kept (LRU) per mapper: one entry per distinct vocabulary / label set
# (D3 queries each image with its group's descriptions: a few hundred distinct sets).
EVAL_PROMPT_CACHE_SIZE = 1024

# Dataset-dict keys that are not passed through to the model input of a grounding image.
_NOT_PASSED = ("file_name", "height", "width", "image_id", "annotations", "image")


class FIBERDatasetMapper:
    """Map detectron2 dataset dicts to FIBER inputs (see module docstring).

    Args:
        is_train: training (augmentations, ``instances``) or evaluation (prompts only).
        augmentations: detectron2 augmentations (:func:`build_fiber_augmentations`).
        tokenizer: fast RoBERTa tokenizer (``MODEL.LANGUAGE.TOKENIZER``, loaded once).
        image_format: ``INPUT.FORMAT`` ("BGR" for official weights).
        max_query_len: ``MODEL.LANGUAGE.MAX_QUERY_LEN`` (tokens, special tokens included).
        pad_to_max: ``MODEL.LANGUAGE.PAD_TO_MAX``.
        plus_one: ``MODEL.FIBER.LEGACY_PLUS_ONE`` box conventions.
        separator: ``DATASETS.FIBER.SEPARATION_TOKENS``.
        shuffle_categories: ``DATASETS.FIBER.SHUFFLE_CATEGORIES`` (full-list training prompts).
        train_prompt: ``DATASETS.FIBER.TRAIN_PROMPT``; "" uses each dataset's ``train_prompt``.
        random_sample_neg: ``DATASETS.FIBER.RANDOM_SAMPLE_NEG`` (sampled prompts).
        control_probs: ``DATASETS.FIBER.CONTROL_PROB``.
        max_caption_tokens: token budget of a sampled training caption (no special tokens).
        swap_left_right: ``DATASETS.FIBER.FLIP_SWAP_LEFT_RIGHT``.
        chunk_size: ``TEST.FIBER.CHUNK_SIZE`` (evaluation prompts of detection data).
        dataset_names: datasets whose vocabularies are read now (so that worker processes do not
            depend on the metadata catalog).
        log_period: images between two summaries of the bad-data counts.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        tokenizer,
        image_format: str = "BGR",
        max_query_len: int = 256,
        pad_to_max: bool = False,
        plus_one: bool = True,
        separator: str = ". ",
        shuffle_categories: bool = True,
        train_prompt: str = "",
        random_sample_neg: int = 85,
        control_probs: Sequence[float] = (0.0, 0.0, 1.0, 0.0),
        max_caption_tokens: int = 254,
        swap_left_right: bool = False,
        chunk_size: int = -1,
        dataset_names: Sequence[str] = (),
        log_period: int = 1000,
    ):
        if train_prompt not in ("", "full", "sampled"):
            raise ValueError(
                f"DATASETS.FIBER.TRAIN_PROMPT must be '', 'full' or 'sampled', got {train_prompt!r}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, max_length=max_query_len, pad_to_max=pad_to_max)
        self.image_format = image_format
        self.max_query_len = max_query_len
        self.plus_one = plus_one
        self.separator = separator
        self.shuffle_categories = shuffle_categories
        self.train_prompt = train_prompt
        self.random_sample_neg = random_sample_neg
        self.control_probs = tuple(control_probs)
        self.max_caption_tokens = min(max_caption_tokens, max_query_len - 2)
        self.swap_left_right = swap_left_right
        self.chunk_size = chunk_size
        self.issues = DataIssueCounter(
            "FIBERDatasetMapper(train)" if is_train else "FIBERDatasetMapper(eval)",
            log_period=log_period,
        )
        self._vocabularies: Dict[str, DatasetVocabulary] = {}
        self._train_policies: Dict[Optional[str], str] = {}
        self._formats: Dict[str, str] = {}
        self._eval_prompts: OrderedDict[Tuple, List[EncodedPrompt]] = OrderedDict()
        for name in dataset_names:
            self._data_format(name)
            if self._formats[name] == "detection":
                try:
                    self._vocabularies[name] = dataset_vocabulary(name)
                except KeyError:
                    pass  # not loaded yet: read at the first image
        mode = "training" if is_train else "inference"
        logger.info("[FIBERDatasetMapper] augmentations used in %s: %s", mode, augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_names: Optional[Sequence[str]] = None):
        if dataset_names is None:
            dataset_names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        data = cfg.DATASETS.FIBER
        return {
            "is_train": is_train,
            "augmentations": build_fiber_augmentations(cfg, is_train),
            "tokenizer": load_tokenizer(cfg.MODEL.LANGUAGE.TOKENIZER),
            "image_format": cfg.INPUT.FORMAT,
            "max_query_len": cfg.MODEL.LANGUAGE.MAX_QUERY_LEN,
            "pad_to_max": cfg.MODEL.LANGUAGE.PAD_TO_MAX,
            "plus_one": cfg.MODEL.FIBER.LEGACY_PLUS_ONE,
            "separator": data.SEPARATION_TOKENS,
            "shuffle_categories": data.SHUFFLE_CATEGORIES,
            "train_prompt": data.TRAIN_PROMPT,
            "random_sample_neg": data.RANDOM_SAMPLE_NEG,
            "control_probs": tuple(data.CONTROL_PROB),
            "max_caption_tokens": data.MAX_CAPTION_TOKENS,
            "swap_left_right": data.FLIP_SWAP_LEFT_RIGHT,
            "chunk_size": cfg.TEST.FIBER.CHUNK_SIZE,
            "dataset_names": list(dataset_names),
        }

    # -- dataset information ---------------------------------------------------------------------
    def _data_format(self, source: Optional[str], record: Optional[Dict] = None) -> str:
        if source is not None and source in self._formats:
            return self._formats[source]
        fmt = MetadataCatalog.get(source).get("data_format", None) if source else None
        if fmt is None:  # a dataset registered elsewhere (e.g. register_coco_instances)
            fmt = "grounding" if record is not None and "caption" in record else "detection"
        if fmt not in ("detection", "grounding"):
            raise ValueError(f"dataset {source!r}: data_format must be detection or grounding")
        if source is not None:
            self._formats[source] = fmt
        return fmt

    def vocabulary(self, source: Optional[str]) -> DatasetVocabulary:
        if source is None:
            raise KeyError(
                "a detection image without 'source_dataset': the mapper cannot tell its "
                "categories; build the loader with fiber_det.data.build_fiber_*_loader"
            )
        if source not in self._vocabularies:
            self._vocabularies[source] = dataset_vocabulary(source)
        return self._vocabularies[source]

    def train_policy(self, source: Optional[str], vocab: DatasetVocabulary) -> str:
        """The training prompt policy of a dataset: "full" or "sampled" (decided once).

        Raises:
            ValueError: ``DATASETS.FIBER.TRAIN_PROMPT`` is "full" but the vocabulary does not
                fit in one prompt.
        """
        if source in self._train_policies:
            return self._train_policies[source]
        policy = self.train_prompt or vocab.train_prompt
        if policy == "full":
            need = vocab.full_prompt_tokens(self.tokenizer, self.separator)
            budget = self.max_query_len - 2  # <s> and </s>
            if need > budget:
                what = (
                    f"dataset {source!r}: its {len(vocab.names)} category names take {need} "
                    f"tokens, more than a training prompt holds ({budget} of "
                    "MODEL.LANGUAGE.MAX_QUERY_LEN); a full-list prompt would lose the boxes of "
                    "every name past the cut"
                )
                if self.train_prompt == "full":
                    raise ValueError(
                        f"{what}. Set DATASETS.FIBER.TRAIN_PROMPT to 'sampled' (positives + "
                        "sampled negatives, as for LVIS) or '' (each dataset's own policy)"
                    )
                logger.warning(
                    "%s: using 'sampled' prompts (positives + sampled negatives) instead. "
                    "Register it with train_prompt='sampled' to silence this warning.",
                    what,
                )
                policy = "sampled"
        self._train_policies[source] = policy
        return policy

    # -- mapping ---------------------------------------------------------------------------------
    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], self.image_format)
        height, width = image.shape[:2]
        if (d.get("height", height), d.get("width", width)) != (height, width):
            raise ValueError(
                f"image {d['file_name']} is {width}x{height} but its annotation file says "
                f"{d.get('width')}x{d.get('height')}: fix the file or the annotation"
            )
        d["height"], d["width"] = height, width
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        out = {
            "file_name": d["file_name"],
            "image_id": d.get("image_id"),
            "height": height,
            "width": width,
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
        }
        if "source_dataset" in d:
            out["source_dataset"] = d["source_dataset"]
        source = d.get("source_dataset")
        grounding = self._data_format(source, d) == "grounding"
        if self.is_train:
            flipped = any(isinstance(t, T.HFlipTransform) for t in transforms.transforms)
            if grounding:
                self._train_grounding(d, out, transforms, image.shape[:2], flipped)
            else:
                self._train_detection(d, out, transforms, image.shape[:2])
        elif grounding:
            self._eval_grounding(d, out)
        else:
            self._eval_detection(d, out)
        self.issues.step()
        return out

    def _boxes(self, d: Dict) -> Tuple[List[Dict], np.ndarray]:
        """Non-crowd annotations kept after conversion / clipping, and their xyxy boxes."""
        annos = [a for a in d.get("annotations", []) if a.get("iscrowd", 0) == 0]
        boxes, kept, counts = annotations_to_boxes(
            annos, d["height"], d["width"], plus_one=self.plus_one
        )
        self.issues.update(counts, detail=d["file_name"])
        return [annos[i] for i in kept], boxes

    def _train_detection(self, d: Dict, out: Dict, transforms, image_shape) -> None:
        annos, boxes = self._boxes(d)
        classes = [int(a["category_id"]) for a in annos]
        vocab = self.vocabulary(d.get("source_dataset"))
        policy = self.train_policy(d.get("source_dataset"), vocab)
        if policy == "sampled":
            sampled = sampled_category_prompt(
                vocab.names,
                classes,
                name_tokens=vocab.name_tokens(self.tokenizer, self.separator),
                max_tokens=self.max_caption_tokens,
                num_negatives=self.random_sample_neg,
                control_probs=self.control_probs,
                separator=self.separator,
            )
            prompt = sampled.prompt
        else:
            prompt = full_category_prompt(
                vocab.names, shuffle=self.shuffle_categories, separator=self.separator
            )
        label_of = {c: i for i, c in enumerate(prompt.label_ids)}
        keep = [j for j, c in enumerate(classes) if c in label_of]
        self.issues.add("box_name_overflow", len(classes) - len(keep), d["file_name"])
        fixed = policy != "sampled" and not self.shuffle_categories  # same caption every image
        encoded = self.encoder.encode(prompt.caption, prompt.spans, prompt.label_ids, cache=fixed)
        rows = encoded.positive_map[[label_of[classes[j]] for j in keep]]
        self._set_text(out, encoded, d)
        out["instances"] = self._instances(
            boxes[keep], rows, [classes[j] for j in keep], transforms, image_shape, d
        )

    def _train_grounding(self, d: Dict, out: Dict, transforms, image_shape, flipped: bool) -> None:
        annos, boxes = self._boxes(d)
        caption = d["caption"]
        spans = [a["tokens_positive"] for a in annos]
        if flipped and self.swap_left_right:
            caption, spans = swap_left_right(caption, spans)
        encoded = self.encoder.encode(caption, spans, cache=False)
        self._set_text(out, encoded, d)
        out["caption"] = caption
        classes = [int(a.get("category_id", 0)) for a in annos]
        out["instances"] = self._instances(
            boxes, encoded.positive_map, classes, transforms, image_shape, d
        )

    def _instances(self, boxes, pmap, classes, transforms, image_shape, d) -> Instances:
        """Instances in the augmented image; boxes whose positive-map row is empty are dropped."""
        has_tokens = pmap.sum(dim=1) > 0 if len(pmap) else torch.zeros(0, dtype=torch.bool)
        self.issues.add("box_without_tokens", int((~has_tokens).sum()), d["file_name"])
        boxes = transforms.apply_box(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        inst = Instances(tuple(image_shape))
        keep = has_tokens.numpy()
        inst.gt_boxes = Boxes(torch.as_tensor(boxes[keep], dtype=torch.float32).reshape(-1, 4))
        inst.positive_map = pmap[has_tokens].float()
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)[has_tokens]
        return inst

    def _set_text(self, out: Dict, encoded: EncodedPrompt, d: Dict) -> None:
        if encoded.truncated:
            self.issues.add("prompt_truncated", 1, d["file_name"])
        out["input_ids"] = encoded.input_ids
        out["attention_mask"] = encoded.attention_mask
        out["positive_map"] = encoded.positive_map

    def _eval_grounding(self, d: Dict, out: Dict) -> None:
        phrases = d.get("tokens_positive_eval")
        if phrases is None:  # e.g. RefCOCO files without it: the distinct box phrases, in order
            phrases = []
            for a in d.get("annotations", []):
                if a["tokens_positive"] not in phrases:
                    phrases.append(a["tokens_positive"])
        encoded = self.encoder.encode(d["caption"], phrases, cache=False)
        self._set_text(out, encoded, d)
        empty = int((encoded.positive_map.sum(dim=1) == 0).sum()) if len(phrases) else 0
        self.issues.add("phrase_without_tokens", empty, d["file_name"])
        for key, value in d.items():
            if key not in _NOT_PASSED:
                out[key] = value
        out["tokens_positive_eval"] = phrases

    def _eval_detection(self, d: Dict, out: Dict) -> None:
        source = d.get("source_dataset")
        vocab = self.vocabulary(source)
        if "sent_ids" in d:  # D3 intra-scenario: the descriptions of the image's group
            id_map = vocab.dataset_id_to_contiguous
            labels = tuple(sorted(id_map[s] for s in d["sent_ids"] if s in id_map))
        else:
            labels = tuple(range(len(vocab.names)))
        prompts = self._prompts_for(source, vocab, labels)
        out["label_to_category"] = [c for p in prompts for c in p.label_ids]
        if len(prompts) == 1:
            out.update(prompts[0].as_input())
        else:
            out["prompts"] = [p.as_input() for p in prompts]

    def _prompts_for(self, source, vocab: DatasetVocabulary, labels: Tuple[int, ...]):
        key = (source, labels)
        if key not in self._eval_prompts:
            if not labels:
                raise ValueError(
                    f"dataset {source!r}: an image has no category to query (empty vocabulary)"
                )
            chunk = vocab.eval_chunk_size if vocab.eval_chunk_size is not None else self.chunk_size
            prompts = vocabulary_prompts(
                [vocab.names[c] for c in labels],
                list(labels),
                tokenizer=self.tokenizer,
                max_tokens=self.max_query_len,
                chunk_size=chunk,
                separator=self.separator,
            )
            self._eval_prompts[key] = [
                self.encoder.encode(p.caption, p.spans, p.label_ids, cache=False) for p in prompts
            ]
            if len(self._eval_prompts) > EVAL_PROMPT_CACHE_SIZE:
                self._eval_prompts.popitem(last=False)
        return self._eval_prompts[key]
