"""The ``DatasetEvaluator`` machinery shared by every fiber-det evaluator.

``process`` turns each (input, output) pair into a record (``records.py``); ``evaluate`` gathers the
records of all processes with ``detectron2.utils.comm``, and on the main process saves them
(``instances_predictions.pth``), computes the metrics with ``evaluate_predictions(records)``, logs
the table of ``format_results`` and saves the metrics (``results.json``). The offline tool calls the
same ``evaluate_predictions`` and ``format_results`` on the saved records. ``evaluate_predictions``
starts with :meth:`RecordEvaluatorMixin.check_records` (``checks.py``), whose counts are kept in
``prediction_checks`` and saved in ``results.json`` beside the metrics.
"""

import itertools
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from .checks import PREDICTION_CHECKS_KEY, check_prediction_records
from .records import PREDICTIONS_FILE, RESULTS_FILE, atomic_save_json, atomic_torch_save

__all__ = ["FIBEREvaluator", "RecordEvaluatorMixin", "format_metric_tables", "ungroup"]

# Key of an input that holds several dataset dicts of one image (fiber_det.data.grouping).
GROUP_KEY = "group"


def ungroup(
    inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]
) -> Iterator[Tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(input, output) pairs with every grouped input split into its members.

    A grouped input (``fiber_det.data.grouping.ImageGroupMapper``) lists its member inputs in
    ``group`` and their prompts in ``prompts``; the model labels the detections of prompt p with
    its rows offset by the rows of prompts 0..p-1 (data contract section 3). Member p gets the
    detections of its prompt with its own row indices, in the output's (score) order: what one
    forward of that member alone returns.
    """
    for inp, out in zip(inputs, outputs):
        members = inp.get(GROUP_KEY)
        if not members:
            yield inp, out
            continue
        inst, offset = out["instances"], 0
        for member, prompt in zip(members, inp["prompts"]):
            n = int(prompt["positive_map"].shape[0])
            part = inst[(inst.pred_classes >= offset) & (inst.pred_classes < offset + n)]
            part.pred_classes = part.pred_classes - offset
            offset += n
            yield member, {"instances": part}


def format_metric_tables(results: Mapping[str, Mapping[str, float]]) -> str:
    """One small table per task of the main metrics (keys without "-", as detectron2's
    ``print_csv_format`` selects them)."""
    parts = []
    for task, metrics in results.items():
        main = {k: v for k, v in metrics.items() if "-" not in k}
        if main:
            parts.append(f"{task}:\n{create_small_table(main)}")
    return "\n".join(parts) if parts else "(no results)"


class RecordEvaluatorMixin:
    """``reset`` / ``process`` / ``evaluate`` on records (data contract section 4).

    The class using it sets ``_dataset_name``, ``_distributed``, ``_output_dir`` and ``_logger``
    and implements ``to_record`` and ``evaluate_predictions``.
    """

    _dataset_name: str
    _distributed: bool
    _output_dir: str | None
    _logger: logging.Logger

    def reset(self) -> None:
        self._records: List[Dict[str, Any]] = []
        self.prediction_checks: Dict[str, int] = {}

    def check_records(
        self, records: Sequence[Mapping[str, Any]], **expected
    ) -> List[Dict[str, Any]]:
        """The records that can be scored (:func:`.checks.check_prediction_records` with the
        dataset's ``expected`` images / categories); the counts go to ``prediction_checks``."""
        kept, self.prediction_checks = check_prediction_records(
            records, dataset_name=self._dataset_name, logger=self._logger, **expected
        )
        return kept

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]):
        """Args: inputs, outputs: a batch of model inputs and outputs (data contract 2 and 3);
        a grouped input gives one record per member (:func:`ungroup`)."""
        for inp, out in ungroup(inputs, outputs):
            self._records.append(self.to_record(inp, out))

    def to_record(self, inp: Mapping[str, Any], output: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def evaluate_predictions(self, records: Sequence[Mapping[str, Any]]) -> "OrderedDict":
        """Metrics from records: ``{task: {metric: value}}``, values in percent."""
        raise NotImplementedError

    def format_results(self, results: Mapping[str, Mapping[str, float]]) -> str:
        """The table logged online and printed by ``tools/evaluate_predictions.py``."""
        return format_metric_tables(results)

    def _gather_records(self) -> List[Dict[str, Any]] | None:
        if not self._distributed:
            return list(self._records)
        comm.synchronize()
        gathered = comm.gather(self._records, dst=0)
        if not comm.is_main_process():
            return None
        return list(itertools.chain(*gathered))

    def evaluate(self) -> "OrderedDict":
        """Gather, save the records, compute, log and save the metrics (main process only;
        other processes return ``{}``, as detectron2's evaluators do)."""
        records = self._gather_records()
        if records is None:
            return OrderedDict()
        if self._output_dir:
            path = os.path.join(self._output_dir, PREDICTIONS_FILE)
            atomic_torch_save(records, path)
            self._logger.info("Saved the predictions of %d images to %s", len(records), path)
        results = self.evaluate_predictions(records)
        self._logger.info(
            "Evaluation results for %s:\n%s", self._dataset_name, self.format_results(results)
        )
        if self._output_dir:
            saved = {**results, PREDICTION_CHECKS_KEY: self.prediction_checks}
            atomic_save_json(saved, os.path.join(self._output_dir, RESULTS_FILE))
        return results

    def _log_counts(self, records: Sequence[Mapping[str, Any]], extra: str = "") -> None:
        images = {_hashable(r["image_id"]) for r in records}
        prompts = sum(int(r.get("num_prompts", 1)) for r in records)
        boxes = sum(len(r["instances"]) for r in records)
        empty = sum(1 for r in records if not r["instances"])
        self._logger.info(
            "%s: evaluating %d images, %d prompts, %d predicted boxes (%d images without "
            "predictions)%s",
            self._dataset_name,
            len(images),
            prompts,
            boxes,
            empty,
            extra,
        )


def _hashable(x: Any) -> Any:
    return x if isinstance(x, (int, str)) else repr(x)


class FIBEREvaluator(RecordEvaluatorMixin, DatasetEvaluator):
    """Base of the fiber-det evaluators that do not build on detectron2's ``COCOEvaluator``.

    Args:
        dataset_name (str): a registered dataset (``DatasetCatalog`` / ``MetadataCatalog``).
        distributed (bool): gather the records of all processes and evaluate on the main one.
        output_dir (str or None): where to write ``instances_predictions.pth`` and
            ``results.json``; None writes nothing.
    """

    def __init__(
        self, dataset_name: str, *, distributed: bool = True, output_dir: str | None = None
    ):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._logger = logging.getLogger(type(self).__module__)
        self.reset()
