"""Flickr30k Entities phrase grounding: Recall@1/5/10 and upper bound, any-box or merged-box.

Protocol of MDETR's ``flickr_eval.py`` (Kamath et al., ICCV 2021), which FIBER reports
(microsoft/FIBER ``evaluation/flickr/flickr_eval.py``, ``engine/inference.py``): GT from the
original Flickr30k Entities ``Annotations/*.xml`` and ``Sentences/*.txt`` of the split; each
caption is one dataset image (MDETR ``final_flickr_separateGT_*.json``) identified by
``original_img_id`` and ``sentence_id``; label j of the caption is its j-th phrase that has boxes.
Recall is reported over all phrases and per phrase type (people, clothing, ...; a phrase with
several types counts in each).
"""

import os
from collections import OrderedDict
from typing import Any, Dict, Mapping, Sequence, Tuple

from detectron2.data import MetadataCatalog

from .base import FIBEREvaluator
from .flickr_entities import FlickrEntitiesGT, load_flickr_entities
from .grounding import (
    RecallTally,
    check_topk,
    phrase_predictions,
    phrase_recall_hits,
    recall_table,
)
from .records import grounding_record

__all__ = ["FLICKR_PROTOCOLS", "FlickrEvaluator", "flickr_recall"]

FLICKR_PROTOCOLS = ("any", "merged")


def _split_from_name(name: str) -> str | None:
    """The split named by the last "_" part of a dataset name ("flickr30k_val" -> "val")."""
    last = name.rsplit("_", 1)[-1]
    return last if last in ("train", "val", "test") else None


def _caption_key(record: Mapping[str, Any]) -> Tuple[str, int]:
    """A Flickr caption: (original image id, sentence index)."""
    return str(record["original_img_id"]), int(record["sentence_id"])


class _SplitCaptions:
    """``key in captions``: the caption's image is an image of the split."""

    def __init__(self, image_ids: Sequence[str]):
        self._ids = {str(i) for i in image_ids}

    def __contains__(self, key: Tuple[str, int]) -> bool:
        return key[0] in self._ids


def flickr_recall(
    records: Sequence[Mapping[str, Any]],
    gt: FlickrEntitiesGT,
    *,
    topk: Sequence[int],
    iou_threshold: float,
    logger,
) -> "OrderedDict[str, float]":
    """Recall@k of caption records against the Flickr30k Entities GT.

    Args:
        records (list[dict]): grounding records with ``original_img_id``, ``sentence_id``,
            ``num_phrases`` and instances labelled by phrase index.
        gt (FlickrEntitiesGT): GT of the split (any-box or merged boxes).

    Returns: ``R@k`` / ``UB`` over all phrases, then ``R@k-<type>`` (percent). Captions of the
    split without a record count as misses (with a warning).
    """
    tally = RecallTally(topk)
    seen = set()
    unexpected = duplicates = 0
    for r in records:
        key = _caption_key(r)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        phrases = gt.phrases.get(key)
        if phrases is None:
            unexpected += int(bool(r["instances"]))
            continue
        if r.get("num_phrases", len(phrases)) != len(phrases):
            raise ValueError(
                f"Flickr image {key[0]} caption {key[1]}: the input had {r['num_phrases']} "
                f"phrases, the Flickr30k Entities GT has {len(phrases)} phrases with boxes: the "
                "MDETR json and the Entities annotations (flickr_entities_root) do not match"
            )
        for (phrase, boxes), preds in zip(phrases, phrase_predictions(r, len(phrases))):
            hits = phrase_recall_hits(preds, boxes, topk, iou_threshold)
            tally.add(hits, ("all",) + phrase.types)
    if duplicates:
        logger.warning("%d duplicate caption records ignored (first one kept)", duplicates)
    if unexpected:
        logger.warning("%d records with boxes for captions without GT phrases ignored", unexpected)
    missing = [key for key in gt.phrases if key not in seen]
    if missing:
        logger.warning(
            "%d of %d captions of the split have no prediction record: their phrases count as "
            "misses",
            len(missing),
            len(gt.phrases),
        )
    for key in missing:
        for phrase, _ in gt.phrases[key]:
            tally.add({k: False for k in topk}, ("all",) + phrase.types)
    return tally.metrics()


class FlickrEvaluator(FIBEREvaluator):
    """Flickr30k Entities Recall@k (``evaluator_type`` ``flickr30k``).

    Args:
        dataset_name (str): registered MDETR-format Flickr dataset.
        entities_root (str or None): Flickr30k Entities folder; default metadata
            ``flickr_entities_root``.
        split (str or None): "val" / "test" / "train"; default metadata ``flickr_split``, else
            the split named in ``dataset_name``.
        protocol (str): "any" (hit with any GT box of the phrase; FIBER and MDETR) or "merged"
            (hit with the box enclosing the phrase's GT boxes).
        topk (sequence[int]): recall levels; -1 is the upper bound.
        iou_threshold (float): IoU of a hit (0.5).
        Other args: :class:`FIBEREvaluator`.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: str | None = None,
        entities_root: str | None = None,
        split: str | None = None,
        protocol: str = "any",
        topk: Sequence[int] = (1, 5, 10, -1),
        iou_threshold: float = 0.5,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        meta = MetadataCatalog.get(dataset_name)
        self._root = entities_root or meta.get("flickr_entities_root", None)
        if not self._root or not os.path.isdir(self._root):
            raise ValueError(
                f"{dataset_name}: Flickr30k Entities folder {self._root!r} not found; set the "
                "metadata 'flickr_entities_root' (the folder with Annotations/, Sentences/ and "
                "{train,val,test}.txt, see datasets/README.md)"
            )
        self._split = split or meta.get("flickr_split", None) or _split_from_name(dataset_name)
        if self._split not in ("train", "val", "test"):
            raise ValueError(
                f"{dataset_name}: cannot tell the Flickr30k split (got {self._split!r}); set the "
                "metadata 'flickr_split' to 'val' or 'test'"
            )
        if protocol not in FLICKR_PROTOCOLS:
            raise ValueError(
                f"Flickr protocol {protocol!r} unknown: use one of {FLICKR_PROTOCOLS} "
                "(TEST.FIBER.FLICKR_PROTOCOL)"
            )
        self._protocol = protocol
        self._topk = check_topk(topk)
        self._iou_threshold = float(iou_threshold)
        self._gt: FlickrEntitiesGT | None = None

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        for key in ("original_img_id", "sentence_id"):
            if key not in inp:
                raise KeyError(
                    f"Flickr input {inp.get('image_id')} has no '{key}': keep the MDETR image "
                    "fields in the evaluation mapper (data contract section 2)"
                )
        return grounding_record(inp, output)

    def format_results(self, results: Mapping[str, Mapping[str, float]]) -> str:
        return "\n".join(f"{task}:\n{recall_table(m, self._topk)}" for task, m in results.items())

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Returns: ``{"flickr30k": {"R@1", "R@5", "R@10", "UB", "R@1-people", ...}}`` (percent)."""
        if self._gt is None:
            self._gt = load_flickr_entities(
                self._root, self._split, merged=self._protocol == "merged"
            )
        gt = self._gt
        records = self.check_records(
            records,
            image_key=_caption_key,
            known_images=_SplitCaptions(gt.image_ids),
            phrase_labels=True,
        )
        self._log_counts(
            records,
            extra=(
                f"; Flickr30k Entities {self._split}: {len(gt.image_ids)} images, "
                f"{len(gt.phrases)} captions, {gt.num_phrases} phrases; {self._protocol}-box "
                "protocol"
            ),
        )
        metrics = flickr_recall(
            records, gt, topk=self._topk, iou_threshold=self._iou_threshold, logger=self._logger
        )
        return OrderedDict(flickr30k=metrics)
