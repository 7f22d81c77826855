"""Reader of the Flickr30k Entities annotations (Plummer et al., ICCV 2015).

The release (github.com/BryanPlummer/flickr30k_entities, ``annotations.zip``) has, per image:

* ``Sentences/<image id>.txt``: five captions, one per line, phrases marked as
  ``[/EN#<phrase id>/<type>[/<type>...] words of the phrase]``, e.g.
  ``[/EN#18/people A child] in [/EN#19/clothing a pink dress] is climbing up stairs .``;
* ``Annotations/<image id>.xml``: PASCAL-VOC-like ``<size>`` and ``<object>`` elements; an object
  has one or more ``<name>`` (phrase ids) and either a ``<bndbox>`` (xmin, ymin, xmax, ymax) or
  ``<nobndbox>`` / ``<scene>`` flags;
* ``{train,val,test}.txt`` at the root: the image ids of each split.

The evaluation protocol (MDETR ``flickr_eval.py``, kept in microsoft/FIBER) scores, for each
caption, the phrases that have at least one box, in caption order; the caption index is the line
index among non-empty lines. This module is an independent reader of that format.
"""

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

__all__ = [
    "EntityAnnotation",
    "EntityPhrase",
    "EntitySentence",
    "FlickrEntitiesGT",
    "load_flickr_entities",
    "merge_boxes",
    "parse_annotation_xml",
    "parse_sentence",
    "parse_sentences_file",
]

_PHRASE = re.compile(r"\[/EN#(?P<id>\d+)(?P<types>(?:/[^\s/\]]+)*)\s+(?P<text>[^\]]*)\]")


@dataclass(frozen=True)
class EntityPhrase:
    """A marked phrase: ``phrase_id`` (str), ``text``, ``types`` (e.g. ("people",)) and the index
    of its first word in the plain sentence."""

    phrase_id: str
    text: str
    types: Tuple[str, ...]
    first_word_index: int


@dataclass(frozen=True)
class EntitySentence:
    """A caption: plain ``text`` (markup removed) and its phrases in order."""

    text: str
    phrases: Tuple[EntityPhrase, ...]


@dataclass
class EntityAnnotation:
    """One ``Annotations/*.xml``: ``boxes`` maps a phrase id to its (xmin, ymin, xmax, ymax) boxes;
    ``nobox`` / ``scene`` list the phrase ids flagged as not visible / the whole scene."""

    width: int = 0
    height: int = 0
    depth: int = 0
    boxes: Dict[str, List[List[float]]] = field(default_factory=dict)
    nobox: List[str] = field(default_factory=list)
    scene: List[str] = field(default_factory=list)


def parse_sentence(line: str) -> EntitySentence:
    """One marked-up caption line -> :class:`EntitySentence`."""
    words: List[str] = []
    phrases = []
    pos = 0
    for m in _PHRASE.finditer(line):
        words.extend(line[pos : m.start()].split())
        text_words = m.group("text").split()
        types = tuple(t for t in m.group("types").split("/") if t)
        phrases.append(EntityPhrase(m.group("id"), " ".join(text_words), types, len(words)))
        words.extend(text_words)
        pos = m.end()
    words.extend(line[pos:].split())
    return EntitySentence(" ".join(words), tuple(phrases))


def parse_sentences_file(path: str) -> List[EntitySentence]:
    """``Sentences/<id>.txt`` -> captions (empty lines skipped; caption i = i-th non-empty line)."""
    with open(path, encoding="utf-8") as f:
        return [parse_sentence(line) for line in f.read().split("\n") if line.strip()]


def _number(element: ET.Element, tag: str, path: str) -> float:
    child = element.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{path}: <{element.tag}> has no <{tag}> value")
    try:
        return float(child.text.strip())
    except ValueError as e:
        raise ValueError(f"{path}: <{tag}> is {child.text!r}, not a number") from e


def parse_annotation_xml(path: str) -> EntityAnnotation:
    """``Annotations/<id>.xml`` -> :class:`EntityAnnotation`."""
    root = ET.parse(path).getroot()
    ann = EntityAnnotation()
    size = root.find("size")
    if size is not None:
        for key in ("width", "height", "depth"):
            if size.find(key) is not None:
                setattr(ann, key, int(_number(size, key, path)))
    for obj in root.findall("object"):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        box = obj.find("bndbox")
        if box is not None:
            xyxy = [_number(box, k, path) for k in ("xmin", "ymin", "xmax", "ymax")]
            for name in names:
                ann.boxes.setdefault(name, []).append(list(xyxy))
            continue
        nobox = obj.find("nobndbox")
        scene = obj.find("scene")
        for name in names:
            if nobox is not None and nobox.text and int(nobox.text.strip()) > 0:
                ann.nobox.append(name)
            if scene is not None and scene.text and int(scene.text.strip()) > 0:
                ann.scene.append(name)
    return ann


def merge_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (1, 4): the smallest box enclosing all (the "merged" protocol)."""
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None]


@dataclass
class FlickrEntitiesGT:
    """GT of a split: ``phrases[(image id, caption index)]`` = list of (phrase, (G, 4) xyxy boxes)
    for the phrases with boxes, in caption order; captions without such phrases are absent."""

    image_ids: List[str]
    phrases: Dict[Tuple[str, int], List[Tuple[EntityPhrase, np.ndarray]]]

    @property
    def num_phrases(self) -> int:
        return sum(len(v) for v in self.phrases.values())


def load_flickr_entities(root: str, split: str, *, merged: bool = False) -> FlickrEntitiesGT:
    """Read the GT of one split (``root/{split}.txt``, ``Annotations/``, ``Sentences/``).

    Args:
        root (str): the Flickr30k Entities folder.
        split (str): "train", "val" or "test".
        merged (bool): replace the boxes of each phrase by their enclosing box.
    """
    split_file = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(
            f"{split_file} not found: set the dataset's metadata 'flickr_entities_root' to the "
            "Flickr30k Entities folder (with {train,val,test}.txt, Annotations/, Sentences/)"
        )
    with open(split_file, encoding="utf-8") as f:
        image_ids = [line.strip() for line in f if line.strip()]
    phrases: Dict[Tuple[str, int], List[Tuple[EntityPhrase, np.ndarray]]] = {}
    for img in image_ids:
        boxes = parse_annotation_xml(os.path.join(root, "Annotations", f"{img}.xml")).boxes
        sentences = parse_sentences_file(os.path.join(root, "Sentences", f"{img}.txt"))
        for idx, sentence in enumerate(sentences):
            kept = []
            for phrase in sentence.phrases:
                if phrase.phrase_id not in boxes:
                    continue  # scene / not visible / no box: not evaluated
                gt = np.asarray(boxes[phrase.phrase_id], dtype=np.float64).reshape(-1, 4)
                kept.append((phrase, merge_boxes(gt) if merged else gt))
            if kept:
                phrases[(img, idx)] = kept
    return FlickrEntitiesGT(image_ids, phrases)
