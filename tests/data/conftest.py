"""Data-test fixtures: registrations that clean up after themselves, mappers from the tiny cfg."""

import itertools

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import fiber_det  # noqa: F401  registers the builtin datasets
from fiber_det.data import FIBERDatasetMapper
from fiber_det.data.datasets import builtin

_counter = itertools.count()


def _unregister(name: str) -> None:
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


@pytest.fixture
def unique_name():
    """Fresh dataset names, removed from the catalogs after the test."""
    names = []

    def make(prefix: str = "test") -> str:
        name = f"{prefix}_{next(_counter)}"
        names.append(name)
        return name

    yield make
    for name in names:
        _unregister(name)


@pytest.fixture
def builtin_root(tmp_path):
    """Re-register every builtin dataset under ``tmp_path`` (restored to the default after)."""
    for n in _builtin_names():
        _unregister(n)
    builtin.register_all_fiber_datasets(str(tmp_path))
    yield tmp_path
    for n in _builtin_names():
        _unregister(n)
    builtin.register_all_fiber_datasets(builtin._root)


def _builtin_names():
    names = list(builtin._PREDEFINED_SPLITS_DETECTION) + list(builtin._PREDEFINED_SPLITS_MDETR)
    names += [f"odinw_{n}_{s}" for n in builtin.ODINW_13 for s in ("train", "val", "test")]
    names += [f"coco_o_{d}" for d in builtin.COCO_O_DOMAINS]
    names += [f"d3_{s}" for s in ("full", "pres", "abs")]
    names += list(builtin._PREDEFINED_SPLITS_PAIRS)
    return names


@pytest.fixture
def make_mapper(tiny_cfg):
    """Mapper factory: make_mapper(is_train, dataset_names, **cfg overrides as a flat dict)."""

    def make(is_train: bool, names, opts=None, **kwargs):
        cfg = tiny_cfg.clone()
        cfg.merge_from_list(list(itertools.chain.from_iterable((opts or {}).items())))
        return FIBERDatasetMapper(cfg, is_train, dataset_names=list(names), **kwargs)

    return make
