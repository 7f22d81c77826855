"""D3 (Described Object Detection; Xie et al., NeurIPS 2023, ``shikras/d-cube``).

The GT files ``d3_json/d3_{full,pres,abs}_annotations.json`` are COCO-format with one category per
description (``category_id`` = ``sent_id``, name = the description). The headline protocol is
*intra-scenario*: each image is queried only with the descriptions of its own group. The groups
are read with the toolkit (``pip install ddd-dataset``, module ``d_cube``, class ``D3`` over the
``d3_pkl`` folder): each dataset dict gets ``sent_ids``, the dataset ids (``sent_id``) of its
group's descriptions (``D3.get_group_ids`` then ``D3.get_sent_ids``). Descriptions that are not
categories of the loaded json (e.g. absence descriptions in ``d3_pres``) are left to the mapper,
which queries only the json's categories.

Metadata: ``thing_classes`` are the descriptions; ``eval_prompt_chunk_size`` 1 asks the mapper for
one description per prompt (one forward per description, the protocol recommended in
``shared/reference/benchmark-protocols.md``).
"""

import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils import require_file
from .detection import load_detection_json
from .validation import AnnotationError, check_registration

__all__ = ["load_d3_json", "register_d3_dataset", "d3_group_sent_ids"]

logger = logging.getLogger(__name__)


#: Environment variable that allows the D3 toolkit to unpickle its ``d3_pkl`` files.
D3_PICKLE_OPT_IN = "FIBER_D3_ALLOW_PICKLE"


def d3_group_sent_ids(image_root: str, pkl_root: str, image_ids: List[int]) -> Dict[int, List[int]]:
    """Per image id, the ``sent_id`` of its group's descriptions, through the ``d_cube`` toolkit.

    The toolkit reads ``d3_pkl/*.pkl`` with ``pickle``, which can run code: it is only called
    with the explicit opt-in ``FIBER_D3_ALLOW_PICKLE=1`` in the environment (files from the
    official D3 release you trust)."""
    if os.environ.get(D3_PICKLE_OPT_IN) != "1":
        raise PermissionError(
            f"intra-scenario D3 reads the toolkit's pickle files in {pkl_root} (unpickling can run "
            f"code); if they are the official D3 release you trust, set {D3_PICKLE_OPT_IN}=1 in "
            "the environment, or register the split with intra_scenario=False (inter-scenario)"
        )
    try:
        from d_cube import D3
    except ImportError as e:
        raise ImportError(
            "D3 datasets need the D3 toolkit: pip install ddd-dataset (module d_cube)"
        ) from e
    require_file(pkl_root, "D3 pkl folder (d3_pkl, with images.pkl and groups.pkl)", is_dir=True)
    for name in ("sentences.pkl", "annotations.pkl", "images.pkl", "groups.pkl"):
        require_file(os.path.join(pkl_root, name), "D3 toolkit file")
    d3 = D3(image_root, pkl_root)
    out = {}
    for img_id in image_ids:
        try:
            group_ids = d3.get_group_ids(img_ids=[img_id])
        except KeyError as e:
            raise AnnotationError(
                f"D3 image {img_id!r} of the json is not in the toolkit's images.pkl ({pkl_root}): "
                "the json and the d3_pkl folder are of different releases; use matching files"
            ) from e
        out[img_id] = sorted(int(s) for s in d3.get_sent_ids(group_ids=group_ids))
    return out


def load_d3_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    pkl_root: Optional[str] = None,
    intra_scenario: bool = True,
) -> List[Dict]:
    """Load a D3 GT json; with ``intra_scenario`` add each image's group ``sent_ids``.

    Args:
        json_file: ``d3_{full,pres,abs}_annotations.json``.
        image_root: ``d3_images``.
        dataset_name: metadata to fill (``thing_classes`` = descriptions).
        pkl_root: ``d3_pkl`` (needed for ``intra_scenario``).
        intra_scenario: query each image with its group's descriptions only (headline protocol);
            False queries every description (inter-scenario).
    """
    dicts = load_detection_json(json_file, image_root, dataset_name)
    if not intra_scenario:
        return dicts
    if pkl_root is None:
        raise ValueError("intra-scenario D3 needs pkl_root (the d3_pkl folder of the toolkit)")
    groups = d3_group_sent_ids(image_root, pkl_root, [d["image_id"] for d in dicts])
    for d in dicts:
        d["sent_ids"] = groups[d["image_id"]]
    return dicts


def register_d3_dataset(
    name: str,
    json_file: str,
    image_root: str,
    pkl_root: str,
    *,
    intra_scenario: bool = True,
) -> None:
    """Register a D3 split for evaluation (registration reads no file; registering a name again
    is a no-op with the same arguments and an error with others)."""
    metadata = dict(
        json_file=json_file,
        image_root=image_root,
        d3_pkl_root=pkl_root,
        evaluator_type="d3",
        data_format="detection",
        train_prompt="full",
        eval_prompt_chunk_size=1,
        d3_intra_scenario=intra_scenario,
    )
    if check_registration(name, metadata):
        return
    DatasetCatalog.register(
        name,
        lambda: load_d3_json(
            json_file, image_root, name, pkl_root=pkl_root, intra_scenario=intra_scenario
        ),
    )
    MetadataCatalog.get(name).set(**metadata)
