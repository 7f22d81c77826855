"""Summaries over several datasets: ODinW-13 average, COCO-O mean and effective robustness.

* ODinW (Li et al., GLIP, CVPR 2022; FIBER reports the 13-dataset average): box AP of each
  dataset and their unweighted mean.
* COCO-O (Mao et al., ICCV 2023, alibaba/easyrobust ``benchmarks/coco_o``): box AP on each of the
  six domains, their unweighted mean, and effective robustness
  ``ER = mean - (0.4497 * COCO AP + 0.025)`` (the baseline line of the COCO-O paper's plot, in AP
  points; reference/benchmark-protocols.md), where COCO AP is the clean COCO val2017 AP of the
  same model with the same prompt.
"""

import logging
import math
from collections import OrderedDict
from typing import Mapping

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from ..data.datasets.builtin import ODINW_13
from .base import format_metric_tables

__all__ = [
    "COCO_O_DOMAINS",
    "ER_INTERCEPT",
    "ER_SLOPE",
    "coco_o_summary",
    "effective_robustness",
    "log_benchmark_summary",
    "odinw_summary",
    "summarize_benchmarks",
]

logger = logging.getLogger(__name__)

COCO_O_DOMAINS = ("sketch", "cartoon", "painting", "weather", "handmake", "tattoo")
# COCO-O baseline: COCO-O mAP = ER_SLOPE * COCO mAP + ER_INTERCEPT (both in AP points).
ER_SLOPE = 0.4497
ER_INTERCEPT = 0.025


def effective_robustness(coco_o_map: float, coco_ap: float) -> float:
    """ER of a model with COCO-O mean mAP ``coco_o_map`` and clean COCO AP ``coco_ap`` (points)."""
    return coco_o_map - (ER_SLOPE * coco_ap + ER_INTERCEPT)


def coco_o_summary(
    domain_ap: Mapping[str, float], *, coco_ap: float | None = None
) -> "OrderedDict[str, float]":
    """Args:
        domain_ap (dict): domain name -> box AP (points).
        coco_ap (float or None): clean COCO AP of the same model and prompt; None: no ER.

    Returns: ``AP_<domain>`` for each domain, ``mAP`` (unweighted mean), and with ``coco_ap``
    ``COCO_AP`` and ``ER``.
    """
    if not domain_ap:
        raise ValueError("COCO-O summary needs the AP of at least one domain")
    unknown = sorted(set(domain_ap) - set(COCO_O_DOMAINS))
    if unknown:
        raise ValueError(f"unknown COCO-O domains {unknown}; the domains are {COCO_O_DOMAINS}")
    missing = [d for d in COCO_O_DOMAINS if d not in domain_ap]
    if missing:
        logger.warning(
            "COCO-O mean over %d domains, not the six of the benchmark (missing %s): not "
            "comparable to published numbers",
            len(domain_ap),
            missing,
        )
    out = OrderedDict((f"AP_{d}", float(domain_ap[d])) for d in COCO_O_DOMAINS if d in domain_ap)
    out["mAP"] = sum(domain_ap.values()) / len(domain_ap)
    if coco_ap is not None:
        out["COCO_AP"] = float(coco_ap)
        out["ER"] = effective_robustness(out["mAP"], float(coco_ap))
    return out


def odinw_summary(dataset_ap: Mapping[str, float]) -> "OrderedDict[str, float]":
    """Args: dataset_ap (dict): dataset name -> box AP (points).

    Returns: ``AP_<name>`` per dataset and ``mAP``, their unweighted mean (NaN APs excluded, with
    a warning)."""
    if not dataset_ap:
        raise ValueError("ODinW summary needs the AP of at least one dataset")
    out = OrderedDict((f"AP_{name}", float(ap)) for name, ap in dataset_ap.items())
    finite = [float(v) for v in dataset_ap.values() if math.isfinite(v)]
    if len(finite) != len(dataset_ap):
        logger.warning(
            "ODinW average leaves out %d datasets with NaN AP", len(dataset_ap) - len(finite)
        )
    out["mAP"] = sum(finite) / len(finite) if finite else float("nan")
    if len(dataset_ap) != len(ODINW_13):
        logger.info(
            "ODinW average over %d datasets (ODinW-13 has %d)", len(dataset_ap), len(ODINW_13)
        )
    return out


def _coco_o_domain(name: str) -> str:
    domain = MetadataCatalog.get(name).get("coco_o_domain", None)
    if domain:
        return domain
    for d in COCO_O_DOMAINS:
        if name.endswith(d) or f"_{d}_" in name:
            return d
    raise ValueError(
        f"cannot tell the COCO-O domain of dataset {name}: set its metadata 'coco_o_domain' "
        f"(one of {COCO_O_DOMAINS})"
    )


def _box_ap(name: str, res: Mapping) -> float:
    if "bbox" not in res or "AP" not in res["bbox"]:
        raise KeyError(f"the results of {name} have no bbox AP (keys: {sorted(res)})")
    return float(res["bbox"]["AP"])


def summarize_benchmarks(
    results: Mapping[str, Mapping], *, coco_clean_ap: float | None = None
) -> "OrderedDict[str, OrderedDict]":
    """Benchmark summaries of one run's per-dataset results (``DefaultTrainer.test`` output).

    Datasets are grouped by their ``evaluator_type``: ``odinw`` -> ``{"odinw": odinw_summary}``;
    ``coco_o`` -> ``{"coco_o": coco_o_summary}``, with the clean COCO AP from ``coco_clean_ap``
    (``TEST.FIBER.COCO_O_CLEAN_AP`` / ``--coco-ap``; None or < 0: not given), else from a dataset
    of type ``coco`` evaluated in the same run, else no ER (with a warning saying how to supply
    it).
    """
    by_type = {}
    for name in results:
        by_type.setdefault(MetadataCatalog.get(name).get("evaluator_type", None), []).append(name)
    out = OrderedDict()
    if by_type.get("odinw"):
        out["odinw"] = odinw_summary({n: _box_ap(n, results[n]) for n in by_type["odinw"]})
    if by_type.get("coco_o"):
        clean = coco_clean_ap if coco_clean_ap is not None and coco_clean_ap >= 0 else None
        if clean is None and by_type.get("coco"):
            source = by_type["coco"][0]
            clean = _box_ap(source, results[source])
            logger.info("COCO-O: clean COCO AP %.2f from %s of this run", clean, source)
        if clean is None:
            logger.warning(
                "COCO-O: no clean COCO AP, effective robustness not computed; add the COCO val "
                "dataset to DATASETS.TEST, or set TEST.FIBER.COCO_O_CLEAN_AP (offline: --coco-ap)"
            )
        domains = {_coco_o_domain(n): _box_ap(n, results[n]) for n in by_type["coco_o"]}
        out["coco_o"] = coco_o_summary(domains, coco_ap=clean)
    return out


def log_benchmark_summary(cfg: CfgNode, results: Mapping) -> "OrderedDict[str, OrderedDict]":
    """The summaries of an evaluation run, logged as tables (for ``tools/train_net.py``, after
    ``DefaultTrainer.test``): :func:`summarize_benchmarks` with the clean COCO AP of
    ``TEST.FIBER.COCO_O_CLEAN_AP``. The results of a single dataset, which ``DefaultTrainer.test``
    returns unwrapped, are keyed by ``DATASETS.TEST[0]``.
    """
    names = list(cfg.DATASETS.TEST)
    if len(names) == 1 and names[0] not in results:
        results = {names[0]: results}
    summary = summarize_benchmarks(results, coco_clean_ap=cfg.TEST.FIBER.COCO_O_CLEAN_AP)
    if summary:
        logger.info("Benchmark summary:\n%s", format_metric_tables(summary))
    return summary
