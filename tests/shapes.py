"""Tiny synthetic training data for the engine tests: shapes on a plain background, written as a
COCO-format detection json and an MDETR-format grounding json."""

import json
import os
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ["circle", "square"]
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def _draw(rng: np.random.Generator, size: int):
    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    objects = []
    for cat_id, name in enumerate(CATEGORIES, start=1):
        w = int(rng.integers(size // 5, size // 2))
        x = int(rng.integers(0, size - w))
        y = int(rng.integers(0, size - w))
        color = "red" if name == "circle" else "blue"
        box = (x, y, x + w, y + w)
        (draw.ellipse if name == "circle" else draw.rectangle)(box, fill=COLORS[color])
        objects.append((cat_id, color, name, [x, y, w, w]))
    return img, objects


def write_shapes_dataset(root: Path, num_images: int = 8, size: int = 128, seed: int = 0) -> Dict:
    """Write images and both jsons under ``root``; returns their paths."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    det = {"images": [], "annotations": [], "categories": []}
    det["categories"] = [{"id": i, "name": n} for i, n in enumerate(CATEGORIES, start=1)]
    grd = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    ann_id = 0
    for i in range(num_images):
        img, objects = _draw(rng, size)
        name = f"{i:04d}.png"
        img.save(root / "images" / name)
        det["images"].append({"id": i + 1, "file_name": name, "height": size, "width": size})
        caption, spans = "", []
        for cat_id, color, shape, box in objects:
            ann_id += 1
            det["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": cat_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
            phrase = f"a {color} {shape}"
            caption = f"{caption} and {phrase}" if caption else phrase
            spans.append(([len(caption) - len(phrase), len(caption)], box))
        grd["images"].append(
            {
                "id": i + 1,
                "file_name": name,
                "height": size,
                "width": size,
                "caption": caption,
                "tokens_positive_eval": [[s] for s, _ in spans],
            }
        )
        for s, box in spans:
            ann_id += 1
            grd["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "tokens_positive": [s],
                }
            )
    paths = {
        "images": str(root / "images"),
        "det_json": str(root / "det.json"),
        "grounding_json": str(root / "grounding.json"),
    }
    with open(paths["det_json"], "w") as f:
        json.dump(det, f)
    with open(paths["grounding_json"], "w") as f:
        json.dump(grd, f)
    return paths


def main() -> None:  # pragma: no cover  (manual use)
    out = Path(os.environ.get("OUT", "output/shapes"))
    print(write_shapes_dataset(out))


if __name__ == "__main__":  # pragma: no cover
    main()
