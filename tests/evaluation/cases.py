"""Hand-built evaluation cases: GT files in the real formats, model inputs and outputs.

Each ``*_case`` registers a dataset under a unique name and returns the inputs and outputs to feed
an evaluator. The expected numbers are worked out in the tests that use them.
"""

import json
import os
import uuid
from typing import Dict, List, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

REGISTERED: List[str] = []


def unique_name(kind: str) -> str:
    return f"evaltest_{kind}_{uuid.uuid4().hex[:8]}"


def register(name: str, dicts=None, **metadata) -> str:
    DatasetCatalog.register(name, lambda: list(dicts or []))
    MetadataCatalog.get(name).set(**metadata)
    REGISTERED.append(name)
    return name


def unregister_all() -> None:
    while REGISTERED:
        name = REGISTERED.pop()
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def output(boxes_xyxy: Sequence, scores: Sequence[float], labels: Sequence[int], size=(300, 300)):
    """A model output: ``{"instances": Instances}`` (boxes xyxy at the original size)."""
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32).reshape(-1)
    inst.pred_classes = torch.tensor(labels, dtype=torch.long).reshape(-1)
    return {"instances": inst}


def write_json(path, obj) -> str:
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def coco_gt(images, anns, cats) -> Dict:
    """COCO json from (id, w, h), (image, category, xywh, iscrowd), (id, name)."""
    return {
        "images": [
            {"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": img,
                "category_id": c,
                "bbox": list(b),
                "area": b[2] * b[3],
                "iscrowd": crowd,
            }
            for k, (img, c, b, crowd) in enumerate(anns)
        ],
        "categories": [{"id": i, "name": n} for i, n in cats],
    }


# -- COCO ----------
def coco_case(tmp_path):
    """Image 1: two GT boxes of category 3 and a crowd region; image 2: one GT box of category 5
    and no prediction. The prompt of image 1 lists category 5 then 3 (label 1 = category 3)."""
    gt = coco_gt(
        images=[(1, 200, 200), (2, 200, 200)],
        anns=[
            (1, 3, [10, 10, 40, 40], 0),  # A
            (1, 3, [100, 100, 40, 40], 0),  # B
            (1, 3, [0, 150, 50, 50], 1),  # crowd region
            (2, 5, [0, 0, 50, 50], 0),
        ],
        cats=[(3, "cat_a"), (5, "cat_b")],
    )
    name = register(
        unique_name("coco"),
        evaluator_type="coco",
        json_file=write_json(tmp_path / "coco.json", gt),
        thing_classes=["cat_a", "cat_b"],
        thing_dataset_id_to_contiguous_id={3: 0, 5: 1},
    )
    inputs = [
        {"image_id": 1, "height": 200, "width": 200, "label_to_category": [1, 0]},
        {"image_id": 2, "height": 200, "width": 200, "label_to_category": [1, 0]},
    ]
    outputs = [
        output(
            [[10, 10, 50, 50], [5, 155, 25, 175], [150, 10, 190, 50], [100, 100, 140, 140]],
            [0.9, 0.8, 0.7, 0.6],
            [1, 1, 1, 1],
        ),
        output([], [], []),
    ]
    return name, inputs, outputs


# -- LVIS ----------
def lvis_gt() -> Dict:
    """Two images; categories 1 (frequent, 3 GT), 2 (common, 1 GT), 3 (rare, 1 GT). Image 1 lists
    category 3 as verified absent (neg_category_ids)."""

    def img(i, neg):
        return {
            "id": i,
            "width": 300,
            "height": 300,
            "neg_category_ids": neg,
            "not_exhaustive_category_ids": [],
            "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
        }

    anns = [
        (1, 1, [0, 0, 50, 50]),
        (1, 1, [100, 0, 50, 50]),
        (2, 1, [0, 0, 50, 50]),
        (2, 2, [100, 100, 50, 50]),
        (2, 3, [0, 100, 50, 50]),
    ]
    return {
        "images": [img(1, [3]), img(2, [])],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3]]],
            }
            for k, (i, c, b) in enumerate(anns)
        ],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f", "image_count": 200, "instance_count": 300},
            {"id": 2, "name": "b", "frequency": "c", "image_count": 20, "instance_count": 30},
            {"id": 3, "name": "c", "frequency": "r", "image_count": 2, "instance_count": 3},
        ],
    }


def lvis_case(tmp_path, chunked: bool = True):
    """Detections (dataset ids): category 1: 0.9 TP (img 1), 0.8 FP (img 2), 0.7 TP (img 2), 0.6 TP
    (img 1); category 2: 0.99 on img 1 (neither GT nor verified absent: ignored), 0.5 TP (img 2);
    category 3: 0.95 on img 1 (verified absent: FP), 0.5 TP (img 2), listed after category 2's
    0.5. With ``chunked`` image 2 comes as two records (two prompt chunks of one image)."""
    name = register(
        unique_name("lvis"),
        evaluator_type="lvis",
        json_file=write_json(tmp_path / "lvis.json", lvis_gt()),
        thing_classes=["a", "b", "c"],
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
    )
    l2c = [0, 1, 2]
    inputs = [
        {"image_id": 1, "height": 300, "width": 300, "label_to_category": l2c, "prompts": [{}, {}]}
    ]
    outputs = [
        output(
            [[100, 100, 150, 150], [0, 100, 50, 150], [0, 0, 50, 50], [100, 0, 150, 50]],
            [0.99, 0.95, 0.9, 0.6],
            [1, 2, 0, 0],
        )
    ]
    img2 = (
        [[200, 200, 240, 240], [0, 0, 50, 50], [100, 100, 150, 150], [0, 100, 50, 150]],
        [0.8, 0.7, 0.5, 0.5],
        [0, 0, 1, 2],
    )
    if chunked:  # chunk 1 = category 1 (label 0), chunk 2 = categories 2, 3 (labels 0, 1)
        inputs += [
            {"image_id": 2, "height": 300, "width": 300, "label_to_category": [0]},
            {"image_id": 2, "height": 300, "width": 300, "label_to_category": [1, 2]},
        ]
        outputs += [
            output(img2[0][:2], img2[1][:2], [0, 0]),
            output(img2[0][2:], img2[1][2:], [0, 1]),
        ]
    else:
        inputs.append({"image_id": 2, "height": 300, "width": 300, "label_to_category": l2c})
        outputs.append(output(*img2))
    return name, inputs, outputs


# -- Flickr30k Entities ----------
FLICKR_XML_1000 = """<annotation>
  <filename>1000.jpg</filename>
  <size><width>200</width><height>100</height><depth>3</depth></size>
  <object><name>10</name>
    <bndbox><xmin>0</xmin><ymin>0</ymin><xmax>40</xmax><ymax>40</ymax></bndbox></object>
  <object><name>11</name><name>12</name>
    <bndbox><xmin>100</xmin><ymin>0</ymin><xmax>140</xmax><ymax>40</ymax></bndbox></object>
  <object><name>11</name>
    <bndbox><xmin>150</xmin><ymin>50</ymin><xmax>190</xmax><ymax>90</ymax></bndbox></object>
  <object><name>13</name><nobndbox>1</nobndbox><scene>0</scene></object>
  <object><name>14</name><nobndbox>0</nobndbox><scene>1</scene></object>
</annotation>
"""
FLICKR_SENTENCES_1000 = (
    "[/EN#10/people A man] holds [/EN#11/animals two dogs] near [/EN#14/scene a park] .\n"
    "[/EN#12/animals/other A dog] and [/EN#13/people someone] in [/EN#0/notvisual it] .\n"
    "\n"
    "[/EN#13/people A person] is hidden .\n"
)
FLICKR_XML_2000 = """<annotation>
  <filename>2000.jpg</filename>
  <size><width>50</width><height>50</height><depth>3</depth></size>
  <object><name>20</name>
    <bndbox><xmin>10</xmin><ymin>10</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>
</annotation>
"""
FLICKR_SENTENCES_2000 = "[/EN#20/clothing A red shirt] hangs .\n"


def write_flickr_entities(root) -> str:
    os.makedirs(root / "Annotations")
    os.makedirs(root / "Sentences")
    (root / "Annotations" / "1000.xml").write_text(FLICKR_XML_1000)
    (root / "Annotations" / "2000.xml").write_text(FLICKR_XML_2000)
    (root / "Sentences" / "1000.txt").write_text(FLICKR_SENTENCES_1000)
    (root / "Sentences" / "2000.txt").write_text(FLICKR_SENTENCES_2000)
    (root / "val.txt").write_text("1000\n2000\n")
    return str(root)


def flickr_case(tmp_path):
    """Three captions (MDETR separateGT style: one dataset image per caption) of Flickr images 1000
    and 2000. Phrase predictions (any-box): "A man" hit at rank 2; "two dogs" hit at rank 1 on its
    second GT box; "A dog" two boxes tied at 0.5, the miss first; "A red shirt" no box."""
    root = write_flickr_entities(tmp_path / "flickr30k_entities")
    name = register(
        unique_name("flickr"),
        evaluator_type="flickr30k",
        flickr_entities_root=root,
        flickr_split="val",
    )
    inputs = [
        {
            "image_id": 1,
            "original_img_id": 1000,
            "sentence_id": 0,
            "tokens_positive_eval": [[[0, 5]], [[12, 20]]],
        },
        {
            "image_id": 2,
            "original_img_id": 1000,
            "sentence_id": 1,
            "tokens_positive_eval": [[[0, 5]]],
        },
        {
            "image_id": 3,
            "original_img_id": 2000,
            "sentence_id": 0,
            "tokens_positive_eval": [[[0, 11]]],
        },
    ]
    outputs = [
        output([[50, 50, 90, 90], [0, 0, 40, 40], [150, 50, 190, 90]], [0.9, 0.8, 0.7], [0, 0, 1]),
        output([[0, 0, 10, 10], [100, 0, 140, 40]], [0.5, 0.5], [0, 0]),
        output([], [], []),
    ]
    return name, inputs, outputs


# -- RefCOCO ----------
def refexp_case(tmp_path):
    """Four refcoco expressions and one refcoco+ expression (worked out in test_refexp.py)."""
    gt_boxes = {
        1: [0, 0, 100, 100],
        2: [200, 200, 100, 100],
        3: [0, 0, 10, 10],
        4: [5, 5, 10, 10],
        5: [0, 0, 20, 20],
    }
    dicts = [
        {
            "image_id": i,
            "file_name": f"{i}.jpg",
            "height": 400,
            "width": 400,
            "caption": "the thing",
            "dataset_name": "refcoco+" if i == 5 else "refcoco",
            "tokens_positive_eval": [[[0, 9]]],
            "annotations": [
                {
                    "bbox": b,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 0,
                    "tokens_positive": [[0, 9]],
                }
            ],
        }
        for i, b in gt_boxes.items()
    ]
    name = register(unique_name("refexp"), dicts, evaluator_type="refexp")
    inputs = [
        {k: v for k, v in d.items() if k != "annotations"} for d in dicts if d["image_id"] != 4
    ]
    outputs = [
        output([[18, 18, 118, 118], [0, 0, 100, 100]], [0.9, 0.8], [0, 0]),
        output([[200, 200, 300, 300], [250, 250, 350, 350]], [0.5, 0.5], [0, 0]),
        output([], [], []),
        output([[0, 0, 20, 20]], [0.3], [0]),
    ]
    return name, inputs, outputs


# -- D3 ----------
def d3_case(tmp_path):
    """Descriptions 1, 2 (presence) and 3 (absence); image ids 0 and 1 (0-based, as D3)."""
    cats = [(1, "dog with leash"), (2, "cat on sofa"), (3, "dog without leash")]
    images = [(0, 200, 200), (1, 200, 200)]
    anns = [(0, 1, [0, 0, 50, 50], 0), (1, 3, [10, 10, 40, 40], 0), (1, 2, [100, 100, 50, 50], 0)]
    root = tmp_path / "d3_json"
    root.mkdir()
    full = write_json(root / "d3_full_annotations.json", coco_gt(images, anns, cats))
    write_json(
        root / "d3_pres_annotations.json", coco_gt(images, [a for a in anns if a[1] != 3], cats[:2])
    )
    write_json(
        root / "d3_abs_annotations.json", coco_gt(images, [a for a in anns if a[1] == 3], cats[2:])
    )
    name = register(
        unique_name("d3"),
        evaluator_type="d3",
        json_file=full,
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
        d3_intra_scenario=True,
    )
    inputs = [
        {"image_id": 0, "label_to_category": [0, 2], "prompts": [{}, {}]},
        {"image_id": 1, "label_to_category": [1, 2], "prompts": [{}, {}]},
    ]
    outputs = [
        output([[0, 0, 50, 50], [0, 0, 50, 50]], [0.9, 0.6], [0, 1]),
        output([[10, 10, 50, 50]], [0.7], [1]),
    ]
    return name, inputs, outputs
