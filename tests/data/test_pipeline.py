"""The whole pipeline on CPU: tiny COCO + tiny grounding json -> loader -> tiny FIBER losses."""

import torch
from detectron2.modeling import build_model

from fiber_det.data import (
    build_fiber_test_loader,
    build_fiber_train_loader,
    register_detection_dataset,
    register_grounding_dataset,
)

from .tiny_data import write_coco, write_flickr


def test_mixed_detection_and_grounding_training_step(tmp_path, unique_name, tiny_cfg):
    det, grd = unique_name("coco"), unique_name("flickr")
    register_detection_dataset(det, *write_coco(tmp_path))
    register_grounding_dataset(grd, *write_flickr(tmp_path), "flickr30k")
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(
        ["DATASETS.TRAIN", (det, grd), "SOLVER.IMS_PER_BATCH", 3, "DATALOADER.NUM_WORKERS", 0]
    )
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    batch = next(iter(build_fiber_train_loader(cfg)))
    assert len(batch) == 3
    assert {x["source_dataset"] for x in batch} <= {det, grd}
    for x in batch:
        # exact length (MODEL.LANGUAGE.PAD_TO_MAX False): no padding token
        length = int(x["attention_mask"].sum())
        assert x["instances"].positive_map.shape[1] == x["input_ids"].shape[0] == length
        assert x["instances"].positive_map.sum(dim=1).gt(0).all()

    model = build_model(cfg)
    model.train()
    losses = model(batch)
    assert set(losses) and all(torch.isfinite(v) for v in losses.values())

    model.eval()
    with torch.no_grad():
        for name in (det, grd):
            (x,) = next(iter(build_fiber_test_loader(cfg, name)))
            (out,) = model([x])
            assert out["instances"].image_size == (48, 64)
