"""Synthetic grounding data: coloured shapes on textured backgrounds, with referring captions.

The embedded default of fiber-det (``make demo``): with no dataset and no weights, a tiny FIBER
learns to detect and ground phrases on CPU in minutes. Each image (160-320 px a side) holds a few
circles, squares, triangles and stars of four colours and two sizes on a textured background
(smooth noise, stripes, checkers or a gradient). One or more captions per image refer to some of
the shapes by size, colour, shape and relative position, e.g. ``"the small red circle left of a
blue square"``; every referred shape is named unambiguously by the words of its phrase (its colour
and shape, plus its size when that is needed), and the position words are true.

Two views of the same images are written, as the real datasets are:

* **detection** (COCO json): every shape, category = colour + shape (``"red circle"``),
  evaluated with COCO box AP (``evaluator_type`` ``"coco"``, category prompts);
* **grounding** (MDETR json): one entry per caption with ``caption``, ``tokens_positive_eval``
  (one phrase per referred shape, in caption order), ``sentence_id``, ``original_img_id``; its
  annotations carry ``bbox``, ``tokens_positive`` (the phrase's character span, without the
  article: ``"small red circle"``) and ``phrase_ids``; evaluated with Recall@k
  (``evaluator_type`` ``"grounding"``).

Layout under ``root`` (default ``$DETECTRON2_DATASETS/synthetic``)::

    images/{train,val}/000000.png
    annotations/{detection,grounding}_{train,val}.json
    tokenizer/          # byte-level BPE built offline from the captions (RoBERTa special tokens)
    manifest.json       # the spec; generation is skipped when it matches

Everything is drawn from ``numpy.random.default_rng([seed, split, image index])``: the same spec
gives byte-identical json files and images, and a larger split starts with the same images.
"""

import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageDraw

from ..data.datasets.detection import register_detection_dataset
from ..data.datasets.grounding import register_grounding_dataset
from ..data.utils import read_json
from ..text import build_offline_tokenizer
from ..utils.io import atomic_write_json

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZE_WORDS",
    "SyntheticSpec",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "register_synthetic_datasets",
    "synthetic_category_names",
    "synthetic_dataset_names",
    "synthetic_vocabulary",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")

# Saturated colours (RGB) on neutral backgrounds: colour is always visible.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "green": (35, 150, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 195, 25),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star")
# Size word -> side of the shape as a fraction of the image's shorter side.
SIZE_WORDS: Dict[str, Tuple[float, float]] = {"small": (0.10, 0.16), "big": (0.22, 0.32)}
RELATIONS = ("left of", "right of", "above", "below")
ARTICLES = ("a", "the")
JOINERS = (" and ", ", ", ". ")
SUPERSAMPLE = 2  # shapes are drawn at 2x and reduced: anti-aliased edges


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate (the manifest; changing any field regenerates the data).

    Attributes:
        seed: base seed of every random draw.
        num_train, num_val: images per split.
        captions_train, captions_val: captions per image (each a grounding entry).
        min_side, max_side: image height and width are drawn in this range (pixels).
        min_objects, max_objects: shapes per image.
        colors, shapes: the vocabulary (names of :data:`COLORS` and :data:`SHAPES`).
        twin_prob: probability that a shape gets a twin of the same colour and shape and the
            other size, so that the size word is needed to tell them apart.
        tokenizer_vocab_size: size of the offline BPE vocabulary (<= ``MODEL.LANGUAGE.VOCAB_SIZE``).
    """

    seed: int = 0
    num_train: int = 600
    num_val: int = 100
    captions_train: int = 1
    captions_val: int = 1
    min_side: int = 160
    max_side: int = 320
    min_objects: int = 2
    max_objects: int = 5
    colors: Tuple[str, ...] = tuple(COLORS)
    shapes: Tuple[str, ...] = SHAPES
    twin_prob: float = 0.15
    tokenizer_vocab_size: int = 1000
    version: int = field(default=FORMAT_VERSION)

    def __post_init__(self):
        unknown = [c for c in self.colors if c not in COLORS]
        unknown += [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(
                f"unknown colours/shapes {unknown}: choose from {list(COLORS)} and {list(SHAPES)}"
            )
        if not (16 <= self.min_side <= self.max_side):
            raise ValueError(f"need 16 <= min_side <= max_side, got {self.min_side, self.max_side}")
        if not (1 <= self.min_objects <= self.max_objects):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects, self.max_objects}"
            )
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("num_train and num_val must be >= 1")

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def synthetic_category_names(spec: SyntheticSpec) -> List[str]:
    """Detection categories, colour-major: ``"red circle", "red square", ...`` (ids 1..C)."""
    return [f"{c} {s}" for c in spec.colors for s in spec.shapes]


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic")


# -- drawing -----------------------------------------------------------------------------------
def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float texture in [-1, 1]: smooth noise, stripes, checkers or a gradient."""
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:
        cell = int(rng.integers(12, 32))
        coarse = rng.uniform(-1, 1, size=(h // cell + 2, w // cell + 2)).astype(np.float32)
        img = Image.fromarray(coarse, mode="F").resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC)
        return np.clip(np.asarray(img)[cell : cell + h, cell : cell + w], -1, 1).astype(np.float64)
    if kind == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(8, 24)
        return np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    if kind == 2:
        cell = int(rng.integers(8, 20))
        return ((xx // cell + yy // cell) % 2) * 2.0 - 1.0
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    return (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6) * 2 - 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 neutral, low-contrast textured background."""
    base = rng.uniform(120, 225) + rng.uniform(-12, 12, size=3)
    amplitude = rng.uniform(8, 25)
    tex = _texture(rng, h, w)[..., None] * amplitude
    noise = rng.normal(0, rng.uniform(1, 5), size=(h, w, 3))
    return np.clip(base + tex + noise, 0, 255).astype(np.uint8)


def _star(cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.47 * r
        a = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def _outline(shape: str, x: float, y: float, side: float) -> List[Tuple[float, float]]:
    """Polygon (or the ellipse box for a circle) of a shape in the square (x, y, side)."""
    if shape == "circle":
        return [(x, y), (x + side, y + side)]
    if shape == "square":
        return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    if shape == "triangle":
        return [(x, y + side), (x + side / 2, y), (x + side, y + side)]
    pts = _star(0.0, 0.0, 1.0)  # star: scaled so that its tight box fits the square
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    scale = side / max(max(xs) - min(xs), max(ys) - min(ys))
    ox = x + (side - (max(xs) - min(xs)) * scale) / 2 - min(xs) * scale
    oy = y + (side - (max(ys) - min(ys)) * scale) / 2 - min(ys) * scale
    return [(ox + px * scale, oy + py * scale) for px, py in pts]


def _tight_box(points: Sequence[Tuple[float, float]]) -> List[float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _overlaps(box: Sequence[float], others: Sequence[Sequence[float]], gap: float) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        if x < ox + ow + gap and ox < x + w + gap and y < oy + oh + gap and oy < y + h + gap:
            return True
    return False


def _sample_objects(rng: np.random.Generator, spec: SyntheticSpec, h: int, w: int) -> List[Dict]:
    """Non-overlapping shapes: colour, shape, size word, side and square position."""
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    wanted = []
    while len(wanted) < n:
        color = spec.colors[int(rng.integers(len(spec.colors)))]
        shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
        size = list(SIZE_WORDS)[int(rng.integers(len(SIZE_WORDS)))]
        wanted.append((color, shape, size))
        if len(wanted) < n and rng.random() < spec.twin_prob:
            wanted.append((color, shape, "big" if size == "small" else "small"))
    objects, placed = [], []
    for color, shape, size in wanted:
        lo, hi = SIZE_WORDS[size]
        side = float(rng.uniform(lo, hi)) * min(h, w)
        for _ in range(50):
            x = float(rng.uniform(2, w - side - 2))
            y = float(rng.uniform(2, h - side - 2))
            if not _overlaps([x, y, side, side], placed, gap=4):
                break
        else:
            continue  # no room left: fewer shapes
        placed.append([x, y, side, side])
        outline = _outline(shape, x, y, side)
        box = _tight_box(outline) if shape != "circle" else [x, y, side, side]
        objects.append(
            {"color": color, "shape": shape, "size": size, "outline": outline, "bbox": box}
        )
    return objects


def _render(rng: np.random.Generator, h: int, w: int, objects: Sequence[Dict]) -> Image.Image:
    s = SUPERSAMPLE
    canvas = Image.fromarray(_background(rng, h, w)).resize((w * s, h * s), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        rgb = np.clip(np.asarray(COLORS[obj["color"]]) + rng.integers(-18, 19, size=3), 0, 255)
        fill = tuple(int(v) for v in rgb)
        pts = [(px * s, py * s) for px, py in obj["outline"]]
        if obj["shape"] == "circle":
            draw.ellipse([pts[0], (pts[1][0] - 1, pts[1][1] - 1)], fill=fill)
        else:
            draw.polygon(pts, fill=fill)
    return canvas.resize((w, h), Image.BOX)


# -- captions ----------------------------------------------------------------------------------
def _noun_phrase(objects: Sequence[Dict], i: int, rng: np.random.Generator) -> Optional[str]:
    """Words that name shape ``i`` and no other shape of the image, or None."""
    o = objects[i]
    same = [p for p in objects if (p["color"], p["shape"]) == (o["color"], o["shape"])]
    if len(same) == 1:
        with_size = rng.random() < 0.5
    elif sum(p["size"] == o["size"] for p in same) == 1:
        with_size = True
    else:
        return None
    words = ([o["size"]] if with_size else []) + [o["color"], o["shape"]]
    return " ".join(words)


def _relation(target: Dict, anchor: Dict) -> str:
    """Where ``target`` is relative to ``anchor`` (the larger of the two centre offsets)."""
    tx, ty, tw, th = target["bbox"]
    ax, ay, aw, ah = anchor["bbox"]
    dx, dy = (tx + tw / 2) - (ax + aw / 2), (ty + th / 2) - (ay + ah / 2)
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _caption(rng: np.random.Generator, objects: Sequence[Dict]) -> Tuple[str, List[Tuple]]:
    """A caption referring to some shapes; returns it and ``[(start, end, object indices)]``.

    A phrase names one shape, except when every shape has an identical twin (rare): then the
    caption names the first one's colour and shape, and the phrase's boxes are all such shapes.
    """
    phrases = {i: _noun_phrase(objects, i, rng) for i in range(len(objects))}
    order = [i for i in rng.permutation(len(objects)).tolist() if phrases[i] is not None]
    boxes_of = {i: [i] for i in order}
    if not order:
        key = (objects[0]["color"], objects[0]["shape"])
        order, phrases = [0], {0: " ".join(key)}
        boxes_of = {0: [j for j, o in enumerate(objects) if (o["color"], o["shape"]) == key]}
    num_clauses = int(rng.integers(1, min(3, len(order)) + 1))
    caption, spans, used = "", [], set()

    def add_phrase(i: int) -> None:
        nonlocal caption
        caption += ARTICLES[int(rng.integers(2))] + " "
        spans.append((len(caption), len(caption) + len(phrases[i]), boxes_of[i]))
        caption += phrases[i]
        used.add(i)

    for target in order:
        if len(used) >= len(order) or num_clauses == 0:
            break
        if target in used:
            continue
        if caption:
            caption += JOINERS[int(rng.integers(len(JOINERS)))]
        add_phrase(target)
        anchors = [i for i in order if i not in used]
        if anchors and rng.random() < 0.6:
            anchor = anchors[int(rng.integers(len(anchors)))]
            caption += " " + _relation(objects[target], objects[anchor]) + " "
            add_phrase(anchor)
        num_clauses -= 1
    return caption, spans


# -- writing -----------------------------------------------------------------------------------
def _annotation(data: Dict, image_id: int, category_id: int, bbox: Sequence[float]) -> Dict:
    box = [round(float(v), 2) for v in bbox]
    return {
        "id": len(data["annotations"]) + 1,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "area": round(box[2] * box[3], 2),
        "iscrowd": 0,
    }


def _generate_split(root: Path, spec: SyntheticSpec, split: str) -> Tuple[Dict, Dict, List[str]]:
    """Draw and save the images of a split; returns the two jsons and the captions."""
    names = synthetic_category_names(spec)
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    det = {"images": [], "annotations": [], "categories": []}
    det["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    grd = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    num = spec.num_train if split == "train" else spec.num_val
    per_image = spec.captions_train if split == "train" else spec.captions_val
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    captions = []
    for i in range(num):
        rng = np.random.default_rng([spec.seed, SPLITS.index(split), i])
        h, w = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
        objects = _sample_objects(rng, spec, h, w)
        file_name = f"{split}/{i:06d}.png"
        _render(rng, h, w, objects).save(root / "images" / file_name, compress_level=1)
        image_id = i + 1
        det["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for o in objects:
            cat = cat_id[f"{o['color']} {o['shape']}"]
            det["annotations"].append(_annotation(det, image_id, cat, o["bbox"]))
        for k in range(per_image):
            caption, spans = _caption(rng, objects)
            captions.append(caption)
            _add_grounding_entry(grd, caption, spans, objects, file_name, (h, w), image_id, k)
    return det, grd, captions


def _add_grounding_entry(grd, caption, spans, objects, file_name, hw, image_id, k) -> None:
    entry_id = len(grd["images"]) + 1
    grd["images"].append(
        {
            "id": entry_id,
            "file_name": file_name,
            "height": hw[0],
            "width": hw[1],
            "caption": caption,
            "tokens_positive_eval": [[[s, e]] for s, e, _ in spans],
            "sentence_id": k,
            "original_img_id": image_id,
            "dataset_name": "synthetic",
        }
    )
    for phrase_id, (s, e, indices) in enumerate(spans):
        for obj in indices:
            ann = _annotation(grd, entry_id, 1, objects[obj]["bbox"])
            grd["annotations"].append(dict(ann, tokens_positive=[[s, e]], phrase_ids=phrase_id))


def synthetic_vocabulary(spec: SyntheticSpec) -> List[str]:
    """Every word the captions and category prompts use."""
    words = list(spec.colors) + list(spec.shapes) + list(SIZE_WORDS) + list(ARTICLES)
    words += [w for r in RELATIONS for w in r.split()] + ["and"]
    return words


def _tokenizer_texts(spec: SyntheticSpec, captions: Sequence[str]) -> List[str]:
    words = synthetic_vocabulary(spec)
    names = synthetic_category_names(spec)
    return [" ".join(words)] * 20 + words + [". ".join(names)] * 5 + list(captions)


def generate_synthetic_dataset(root: Union[str, Path], spec: SyntheticSpec) -> Dict[str, str]:
    """Write the synthetic dataset of ``spec`` under ``root`` (replacing what is there).

    Returns:
        dict of paths: ``root``, ``image_root``, ``tokenizer`` and
        ``{detection,grounding}_{train,val}`` (json files).
    """
    root = Path(root)
    for sub in ("images", "annotations", "tokenizer"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / "manifest.json").unlink(missing_ok=True)
    paths = _paths(root)
    captions = []
    for split in SPLITS:
        det, grd, caps = _generate_split(root, spec, split)
        captions += caps
        atomic_write_json(det, paths[f"detection_{split}"], indent=None, separators=(",", ":"))
        atomic_write_json(grd, paths[f"grounding_{split}"], indent=None, separators=(",", ":"))
        logger.info(
            "synthetic %s: %d images, %d shapes, %d captions",
            split,
            len(det["images"]),
            len(det["annotations"]),
            len(grd["images"]),
        )
    build_offline_tokenizer(
        _tokenizer_texts(spec, captions), paths["tokenizer"], vocab_size=spec.tokenizer_vocab_size
    )
    atomic_write_json(spec.to_dict(), root / "manifest.json", sort_keys=True)
    return paths


def _paths(root: Path) -> Dict[str, str]:
    paths = {
        "root": str(root),
        "image_root": str(root / "images"),
        "tokenizer": str(root / "tokenizer"),
    }
    for split in SPLITS:
        for view in ("detection", "grounding"):
            paths[f"{view}_{split}"] = str(root / "annotations" / f"{view}_{split}.json")
    return paths


def ensure_synthetic_dataset(root: Union[str, Path], spec: SyntheticSpec) -> Dict[str, str]:
    """Generate the dataset unless ``root`` already holds this spec (manifest and files)."""
    root = Path(root)
    paths = _paths(root)
    manifest = root / "manifest.json"
    complete = manifest.is_file() and all(
        os.path.exists(p) for k, p in paths.items() if k != "root"
    )
    if complete and read_json(str(manifest), "synthetic manifest") == spec.to_dict():
        logger.info("synthetic dataset in %s is up to date", root)
        return paths
    logger.info("generating the synthetic dataset in %s", root)
    return generate_synthetic_dataset(root, spec)


# -- registration ------------------------------------------------------------------------------
def synthetic_dataset_names(prefix: str = "fiber_synthetic") -> Dict[str, str]:
    """``{detection,grounding}_{train,val}`` -> registered dataset name."""
    return {
        f"{view}_{split}": f"{prefix}_{'shapes' if view == 'detection' else 'grounding'}_{split}"
        for view in ("detection", "grounding")
        for split in SPLITS
    }


def register_synthetic_datasets(
    root: Union[str, Path, None] = None, prefix: str = "fiber_synthetic"
) -> Dict[str, str]:
    """Register the four views of the synthetic dataset under ``root`` (reads no file).

    Names (default prefix): ``fiber_synthetic_shapes_{train,val}`` (detection, COCO AP) and
    ``fiber_synthetic_grounding_{train,val}`` (grounding, Recall@k). A name registered before with
    another file is re-registered. Returns the mapping of :func:`synthetic_dataset_names`.
    """
    root = Path(root if root is not None else default_synthetic_root())
    paths = _paths(root)
    names = synthetic_dataset_names(prefix)
    for key, name in names.items():
        if name in DatasetCatalog:
            if MetadataCatalog.get(name).get("json_file", None) == paths[key]:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if key.startswith("detection"):
            register_detection_dataset(name, paths[key], paths["image_root"], "coco")
        else:
            register_grounding_dataset(name, paths[key], paths["image_root"], "grounding")
        MetadataCatalog.get(name).set(synthetic_root=str(root))
    return names
