"""The embedded default of fiber-det: the synthetic grounding demo (``make demo``), its pictures,
and the inference CLI behind ``tools/demo.py``."""

from .inference import check_demo_outputs, collect_images, output_names, predict_images
from .pictures import best_box_per_label, write_demo_pictures
from .pipeline import DEMO_CONFIG, DEMO_SPEC, DemoProgress, demo_config, run_synthetic_demo
from .visualize import draw_boxes, draw_prediction, save_image, side_by_side, stack_rows

__all__ = [
    "DEMO_CONFIG",
    "DEMO_SPEC",
    "DemoProgress",
    "best_box_per_label",
    "check_demo_outputs",
    "collect_images",
    "demo_config",
    "draw_boxes",
    "draw_prediction",
    "output_names",
    "predict_images",
    "run_synthetic_demo",
    "save_image",
    "side_by_side",
    "stack_rows",
    "write_demo_pictures",
]
