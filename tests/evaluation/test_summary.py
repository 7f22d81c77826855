"""Benchmark summaries: COCO-O effective robustness (FIBER-B 11.43), ODinW average."""

import math

import pytest
from detectron2.config import get_cfg

from fiber_det import add_fiber_config
from fiber_det.evaluation import (
    coco_o_summary,
    effective_robustness,
    log_benchmark_summary,
    odinw_summary,
    summarize_benchmarks,
)

from . import cases


def test_fiber_b_effective_robustness():
    # COCO-O benchmark plot: FIBER-B at COCO 49.5, COCO-O 33.7, ER 11.43.
    # 33.7 - (0.4497 * 49.5 + 0.025) = 33.7 - 22.28515 = 11.41485
    er = effective_robustness(33.7, 49.5)
    assert er == pytest.approx(11.41485, abs=1e-9)
    assert abs(er - 11.43) <= 0.02


def test_coco_o_summary_mean_of_six_domains():
    # six domain APs with an unweighted mean of 202.2 / 6 = 33.7
    domains = dict(
        zip(
            ("sketch", "cartoon", "painting", "weather", "handmake", "tattoo"),
            (20.0, 30.0, 35.0, 40.0, 37.2, 40.0),
        )
    )
    s = coco_o_summary(domains, coco_ap=49.5)
    assert s["mAP"] == pytest.approx(33.7)
    assert abs(s["ER"] - 11.43) <= 0.02
    assert s["AP_sketch"] == 20.0 and s["COCO_AP"] == 49.5
    assert "ER" not in coco_o_summary(domains)  # no clean AP, no ER
    with pytest.raises(ValueError, match="unknown COCO-O domains"):
        coco_o_summary({"photo": 1.0})


def test_odinw_average():
    s = odinw_summary({"aquarium": 50.0, "pothole": 40.0, "raccoon": 30.5})
    assert s["mAP"] == pytest.approx((50 + 40 + 30.5) / 3)  # 40.1667
    assert s["AP_pothole"] == 40.0
    s = odinw_summary({"aquarium": 50.0, "pothole": float("nan")})
    assert s["mAP"] == 50.0 and math.isnan(s["AP_pothole"])


def _bbox(ap):
    return {"bbox": {"AP": ap, "AP50": 0.0}}


def test_summarize_benchmarks_groups_by_evaluator_type():
    coco = cases.register(cases.unique_name("coco"), evaluator_type="coco")
    domains = {}
    for d, ap in zip(
        ("sketch", "cartoon", "painting", "weather", "handmake", "tattoo"),
        (20.0, 30.0, 35.0, 40.0, 37.2, 40.0),
    ):
        domains[
            cases.register(cases.unique_name("cocoo"), evaluator_type="coco_o", coco_o_domain=d)
        ] = ap
    odinw = [cases.register(cases.unique_name("odinw"), evaluator_type="odinw") for _ in "ab"]
    results = {
        coco: _bbox(49.5),
        **{n: _bbox(ap) for n, ap in domains.items()},
        odinw[0]: _bbox(60.0),
        odinw[1]: _bbox(70.0),
    }
    s = summarize_benchmarks(results)
    assert s["odinw"]["mAP"] == 65.0
    assert s["coco_o"]["COCO_AP"] == 49.5  # clean AP from the COCO dataset of the same run
    assert abs(s["coco_o"]["ER"] - 11.43) <= 0.02
    # an explicit clean AP (TEST.FIBER.COCO_O_CLEAN_AP / --coco-ap) wins; < 0 means "not given"
    assert summarize_benchmarks(results, coco_clean_ap=49.3)["coco_o"]["COCO_AP"] == 49.3
    assert summarize_benchmarks(results, coco_clean_ap=-1.0)["coco_o"]["COCO_AP"] == 49.5
    only_o = {n: _bbox(ap) for n, ap in domains.items()}
    assert "ER" not in summarize_benchmarks(only_o)["coco_o"]


def test_log_benchmark_summary_reads_the_config(caplog):
    cfg = get_cfg()
    add_fiber_config(cfg)
    sketch = cases.register(
        cases.unique_name("cocoo"), evaluator_type="coco_o", coco_o_domain="sketch"
    )
    cfg.DATASETS.TEST = (sketch,)
    cfg.TEST.FIBER.COCO_O_CLEAN_AP = 49.5
    with caplog.at_level("INFO", logger="fiber_det"):
        # DefaultTrainer.test returns a single dataset's results unwrapped
        s = log_benchmark_summary(cfg, _bbox(33.7))
    assert s["coco_o"]["ER"] == pytest.approx(33.7 - 22.28515)
    assert "Benchmark summary" in caplog.text
