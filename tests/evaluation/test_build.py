"""build_evaluator dispatch, config keys and the benchmark configs under configs/fiber_b/eval."""

import pytest
from detectron2.config import get_cfg

from fiber_det import add_fiber_config
from fiber_det.evaluation import (
    D3Evaluator,
    FIBERCOCOEvaluator,
    FlickrEvaluator,
    GroundingRecallEvaluator,
    LVISEvaluator,
    RefExpEvaluator,
    build_evaluator,
)
from tests.paths import REPO_ROOT

from . import cases

EVAL_CONFIGS = sorted((REPO_ROOT / "configs" / "fiber_b" / "eval").glob("*.yaml"))


@pytest.fixture
def cfg():
    c = get_cfg()
    add_fiber_config(c)
    return c


def test_defaults(cfg):
    t = cfg.TEST.FIBER
    assert (t.LVIS_USE_FIXED_AP, t.LVIS_FIXED_AP_TOPK, t.LVIS_MAX_DETS_PER_IMAGE) == (
        True,
        10000,
        300,
    )
    assert t.FLICKR_PROTOCOL == "any" and list(t.FLICKR_TOPK) == [1, 5, 10, -1]
    assert list(t.REFEXP_TOPK) == [1, 5, 10] and t.GROUNDING_IOU_THRESHOLD == 0.5
    assert t.COCO_O_CLEAN_AP < 0


def test_dispatch_on_evaluator_type(cfg, tmp_path):
    expected = {
        "coco": (cases.coco_case, FIBERCOCOEvaluator),
        "lvis": (cases.lvis_case, LVISEvaluator),
        "flickr": (cases.flickr_case, FlickrEvaluator),
        "refexp": (cases.refexp_case, RefExpEvaluator),
        "d3": (cases.d3_case, D3Evaluator),
    }
    for key, (case, cls) in expected.items():
        d = tmp_path / key
        d.mkdir()
        name = case(d)[0]
        ev = build_evaluator(cfg, name)
        assert type(ev) is cls
        assert ev._output_dir.endswith(f"inference/{name}")
    grounding = cases.register(cases.unique_name("g"), evaluator_type="grounding")
    assert type(build_evaluator(cfg, grounding)) is GroundingRecallEvaluator
    cfg.TEST.FIBER.FLICKR_PROTOCOL = "merged"
    (tmp_path / "flickr2").mkdir()
    flickr = cases.flickr_case(tmp_path / "flickr2")[0]
    assert build_evaluator(cfg, flickr)._protocol == "merged"


def test_unknown_type_is_not_implemented(cfg):
    name = cases.register(cases.unique_name("x"), evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="known types"):
        build_evaluator(cfg, name)
    with pytest.raises(NotImplementedError, match="None"):
        build_evaluator(cfg, cases.unique_name("unregistered"))


def test_eval_configs_load(cfg):
    assert len(EVAL_CONFIGS) >= 9
    for path in EVAL_CONFIGS:
        c = cfg.clone()
        c.merge_from_file(str(path))
        assert c.DATASETS.TEST, path.name
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any("tools/train_net.py" in h and "--eval-only" in h for h in header), path.name
        assert any("MODEL.WEIGHTS" in h for h in header), path.name
    lvis = cfg.clone()
    lvis.merge_from_file(str(REPO_ROOT / "configs/fiber_b/eval/lvis_minival.yaml"))
    assert lvis.TEST.FIBER.CHUNK_SIZE == 40 and lvis.MODEL.ATSS.DETECTIONS_PER_IMG == 300
    assert lvis.TEST.FIBER.LVIS_USE_FIXED_AP
    ref = cfg.clone()
    ref.merge_from_file(str(REPO_ROOT / "configs/fiber_b/eval/refcoco.yaml"))
    assert (
        ref.MODEL.ATSS.INFERENCE_TH,
        ref.MODEL.ATSS.PRE_NMS_TOP_N,
        ref.MODEL.ATSS.DETECTIONS_PER_IMG,
    ) == (0.0, 3000, 100)
