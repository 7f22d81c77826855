"""A tiny image-text pair dataset for the coarse-grained training tests: solid-colour images with
captions naming the colour (JSON lines, registered under a given name)."""

from pathlib import Path
from typing import List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.data import register_pair_dataset
from tests.data.tiny_pairs import write_jsonl

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}
SHAPES = ("circle", "square")


def write_colour_pairs(root: Path, name: str, copies: int = 2) -> List[dict]:
    """``len(COLOURS) x copies`` images (noise around the colour), two captions each; registers
    ``name`` (replacing an earlier registration)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        for k in range(copies):
            pixels = np.clip(rng.normal(rgb, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
            path = root / f"{colour}_{k}.png"
            Image.fromarray(pixels).save(path)
            captions = [f"a {colour} {shape}" for shape in SHAPES]
            records.append({"image": str(path), "captions": captions, "image_id": c * copies + k})
    jsonl = write_jsonl(root / "pairs.jsonl", records)
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pair_dataset(name, jsonl)
    return records
