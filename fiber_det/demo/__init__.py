"""The embedded default of fiber-det: the synthetic grounding data and demo (``make demo``), its
pictures, and the inference CLI behind ``tools/demo.py``. Nothing here is registered on
``import fiber_det``: the demo registers its datasets when it runs
(:func:`register_synthetic_datasets`)."""

from .inference import check_demo_outputs, collect_images, output_names, predict_images
from .pictures import best_box_per_label, write_demo_pictures
from .pipeline import DEMO_CONFIG, DEMO_SPEC, DemoProgress, demo_config, run_synthetic_demo
from .synthetic import (
    SyntheticSpec,
    default_synthetic_root,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    register_synthetic_datasets,
    synthetic_dataset_names,
)
from .visualize import draw_boxes, draw_prediction, save_image, side_by_side, stack_rows

__all__ = [
    "DEMO_CONFIG",
    "DEMO_SPEC",
    "DemoProgress",
    "SyntheticSpec",
    "best_box_per_label",
    "check_demo_outputs",
    "collect_images",
    "default_synthetic_root",
    "demo_config",
    "draw_boxes",
    "draw_prediction",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "output_names",
    "predict_images",
    "register_synthetic_datasets",
    "run_synthetic_demo",
    "save_image",
    "side_by_side",
    "stack_rows",
    "synthetic_dataset_names",
    "write_demo_pictures",
]
