"""RetrievalEvaluator: image-text retrieval (IR / TR Recall@1/5/10) of a coarse-grained FIBER
model over a test split (Flickr30k 1k test, COCO 5k test), as the official stage 1 evaluates it.

Retrieval scores every image against every caption, so this evaluator runs its own inference loop
instead of detectron2's per-batch ``process``: ``Trainer.test`` (so ``tools/train_net.py
--eval-only`` and the periodic evaluation of a training run) calls
:meth:`RetrievalEvaluator.evaluate_model` for datasets whose ``evaluator_type`` is
``"retrieval"``. Two passes over the test images (read and transformed by the evaluation
:class:`~fiber_det.data.PairDatasetMapper`, which also tokenizes every caption):

1. **ITC** (official ``compute_itc_recall``): the ITC embedding of every image and of every
   caption; the scores are their cosine similarities.
2. **ITM** (official ``compute_itm_recall``; when the model has an ITM head): the match logit of
   every image-caption pair, from pre-fusion states computed once per image and once per caption
   (``FIBERCoarse.itm_retrieval_scores``). With ``MODEL.COARSE.RERANK_TOPK`` k > 0 only the ITC
   top-k texts of each image and images of each text are scored (ALBEF re-ranking).

With several processes the images are split as detectron2's ``InferenceSampler`` splits them and
the captions' ITC embeddings likewise; every process gets the whole ITC matrix (re-ranking needs
its columns) and the main process gathers the ITM rows, reports and saves.

Files written to ``output_dir`` (score files: :func:`~.retrieval.save_retrieval_scores`, so that
``tools/evaluate_retrieval.py --scores F`` recomputes the table offline):

* ``scores_itc.safetensors``, ``scores_itm.safetensors``;
* with re-ranking, ``scores_itm.safetensors`` ranks the texts of each image (TR) and
  ``scores_itm_ir.safetensors`` the images of each text (IR): pass it as ``--ir-scores``;
* ``results.json``: the metrics.

Results: ``{"itc": {"ir_r1", ..., "r_mean"}, "itm": {...}}`` (percentages).
"""

import logging
import os
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor, nn

from ..data.datasets.pairs import retrieval_texts
from .records import RESULTS_FILE, atomic_save_json
from .retrieval import retrieval_recall, save_retrieval_scores

__all__ = ["RetrievalEvaluator", "SCORE_FILES"]

logger = logging.getLogger(__name__)

# Score files of an evaluation: kind -> file name in output_dir.
SCORE_FILES = {
    "itc": "scores_itc.safetensors",
    "itm": "scores_itm.safetensors",
    "itm_ir": "scores_itm_ir.safetensors",
}
_ROW = "retrieval_row"  # key added to the dataset dicts: the image's row of the score matrix


class _RowMapper:
    """The evaluation mapper's output plus the row of the image in the score matrix."""

    def __init__(self, mapper: Callable):
        self.mapper = mapper

    def __call__(self, d: Dict) -> Dict:
        out = self.mapper(d)
        out[_ROW] = d[_ROW]
        return out


def _stack_images(batch: Sequence[Dict]) -> Tensor:
    return torch.stack([x["image"] for x in batch])


def _unwrap(model: nn.Module) -> nn.Module:
    inner = model.module if hasattr(model, "module") else model
    if not all(hasattr(inner, m) for m in ("encode_image_itc", "encode_text_itc")):
        raise TypeError(
            f"retrieval evaluation needs a coarse-grained model (MODEL.META_ARCHITECTURE "
            f"'FIBERCoarse', e.g. configs/fiber_b/coarse/*.yaml), got {type(inner).__name__}"
        )
    return inner


class RetrievalEvaluator(DatasetEvaluator):
    """Image-text retrieval of a coarse-grained model on one pair dataset (module docstring).

    Args:
        dataset_name: a registered pair dataset (``data_format`` "pairs"), every caption of
            every image is a query.
        mapper: the evaluation mapper (``PairDatasetMapper(cfg, is_train=False)``): image tensor,
            ``caption_ids`` and ``captions_input_ids`` / ``captions_attention_mask``.
        output_dir: where the score files and ``results.json`` go (None: nothing written).
        batch_size: images per batch (``TEST.COARSE.IMS_PER_BATCH``).
        num_workers: data loader workers (``DATALOADER.NUM_WORKERS``).
        text_batch_size: captions encoded together for ITC.
        rerank_topk: ITM scores only the ITC top-k (``MODEL.COARSE.RERANK_TOPK``); 0 scores every
            pair (official); None: the model's default.
        ks: the k of Recall@k.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        mapper: Callable,
        output_dir: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 0,
        text_batch_size: int = 256,
        rerank_topk: Optional[int] = None,
        ks: Sequence[int] = (1, 5, 10),
    ):
        if batch_size < 1 or text_batch_size < 1:
            raise ValueError(
                f"batch sizes must be >= 1, got images {batch_size}, texts {text_batch_size} "
                "(TEST.COARSE.IMS_PER_BATCH)"
            )
        if rerank_topk is not None and rerank_topk < 0:
            raise ValueError(f"rerank_topk must be >= 0, got {rerank_topk}")
        self.dataset_name = dataset_name
        self.mapper = mapper
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.text_batch_size = text_batch_size
        self.rerank_topk = rerank_topk
        self.ks = tuple(ks)

    # -- detectron2's per-batch protocol does not fit retrieval ---------------------------------
    def reset(self) -> None:
        pass

    def process(self, inputs, outputs) -> None:
        raise RuntimeError(
            "RetrievalEvaluator runs its own inference (every image against every caption): call "
            "evaluator.evaluate_model(model) (fiber_det's Trainer.test does), not "
            "inference_on_dataset"
        )

    def evaluate(self):
        self.process(None, None)

    # -- the evaluation --------------------------------------------------------------------------
    def evaluate_model(self, model: nn.Module) -> "OrderedDict[str, Dict[str, float]]":
        """Score the whole test split with ``model`` (a ``FIBERCoarse``, possibly DDP-wrapped)
        and return ``{"itc": metrics, "itm": metrics}`` on the main process, ``{}`` elsewhere."""
        inner = _unwrap(model)
        dicts = DatasetCatalog.get(self.dataset_name)
        if not dicts:
            raise ValueError(f"retrieval dataset {self.dataset_name!r} is empty")
        _, txt2img = retrieval_texts(dicts)  # validates the caption ids
        dicts = [dict(d, **{_ROW: i}) for i, d in enumerate(dicts)]
        loader = build_detection_test_loader(
            dataset=dicts,
            mapper=_RowMapper(self.mapper),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        topk = inner.rerank_topk if self.rerank_topk is None else self.rerank_topk
        start = time.perf_counter()
        logger.info(
            "Retrieval evaluation of %s: %d images, %d captions, ITM %s",
            self.dataset_name,
            len(dicts),
            len(txt2img),
            "off (no ITM head)"
            if not inner.has_itm_head
            else (f"re-ranking the ITC top-{topk}" if topk else "on every pair"),
        )
        with inference_context(inner), torch.no_grad():
            rows, ids, mask, itc = self._itc(inner, loader, len(dicts), len(txt2img))
            itm = None
            if inner.has_itm_head:
                itm = self._itm(inner, loader, rows, ids, mask, itc, topk)
        logger.info(
            "Retrieval scores of %s in %.1f s", self.dataset_name, time.perf_counter() - start
        )
        if not comm.is_main_process():
            return OrderedDict()
        return self._report(dicts, txt2img, itc, itm, topk)

    def _itc(
        self, model: nn.Module, loader, num_images: int, num_texts: int
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """First pass: this process's image rows (I',), every caption's ids and mask (T, L)
        and the whole ITC matrix (I, T)."""
        dev = model.device
        rows: List[int] = []
        image_emb: List[Tensor] = []
        captions: List[Tuple[List[int], Tensor, Tensor]] = []
        for batch in loader:
            image_emb.append(model.encode_image_itc(_stack_images(batch).to(dev)).cpu())
            for x in batch:
                rows.append(int(x[_ROW]))
                captions.append(
                    (x["caption_ids"], x["captions_input_ids"], x["captions_attention_mask"])
                )
            log_every_n_seconds(logging.INFO, f"ITC retrieval: {len(rows)} images", n=30)
        local_rows = torch.tensor(rows, dtype=torch.long)
        local_emb = torch.cat(image_emb) if image_emb else torch.empty(0, model.hidden_size)
        images = torch.empty(num_images, model.hidden_size)
        for r, e in comm.all_gather((local_rows, local_emb)):
            images[r] = e
        ids, mask = _gather_captions(captions, num_texts)
        share = torch.arange(num_texts).tensor_split(comm.get_world_size())[comm.get_rank()]
        text_emb = [
            model.encode_text_itc(ids[chunk].to(dev), mask[chunk].to(dev)).cpu()
            for chunk in share.split(self.text_batch_size)
        ]
        local_text = torch.cat(text_emb) if text_emb else torch.empty(0, model.hidden_size)
        texts = torch.cat(comm.all_gather(local_text))
        return local_rows, ids, mask, images @ texts.t()

    def _itm(self, model, loader, rows, ids, mask, itc, topk) -> Optional[Tuple[Tensor, Tensor]]:
        """Second pass: the ITM (i2t, t2i) matrices (I, T) on the main process."""
        images = (_stack_images(batch) for batch in loader)
        if topk:  # the candidates come from the whole ITC matrix, rows say which are ours
            kwargs = {"itc": itc.to(model.device), "image_rows": rows}
        else:
            kwargs = {}
        scores = model.itm_retrieval_scores(images, ids, mask, topk=topk, **kwargs)
        i2t = scores.i2t.cpu()
        t2i = None if scores.t2i is scores.i2t else scores.t2i.cpu()
        gathered = comm.gather((rows, i2t, t2i), dst=0)
        if not comm.is_main_process():
            return None
        full_i2t = torch.full(itc.shape, float("-inf"))
        full_t2i = full_i2t.clone() if t2i is not None else full_i2t
        for r, a, b in gathered:
            full_i2t[r] = a
            if b is not None:
                full_t2i[r] = b
        return full_i2t, full_t2i

    def _report(self, dicts, txt2img, itc: Tensor, itm, topk: int):
        results: OrderedDict[str, Dict[str, float]] = OrderedDict()
        meta = {
            "dataset": self.dataset_name,
            "image_ids": [d.get("image_id") for d in dicts],
        }
        results["itc"] = retrieval_recall(itc, txt2img, self.ks)
        files = {"itc": (itc, dict(meta, kind="itc", ranks="both"))}
        if itm is not None:
            i2t, t2i = itm
            reranked = t2i is not i2t
            results["itm"] = retrieval_recall(
                i2t, txt2img, self.ks, ir_scores=t2i if reranked else None
            )
            itm_meta = dict(meta, kind="itm", rerank_topk=topk)
            if reranked:
                files["itm"] = (i2t, dict(itm_meta, ranks="tr", ir_scores=SCORE_FILES["itm_ir"]))
                files["itm_ir"] = (t2i, dict(itm_meta, ranks="ir"))
            else:
                files["itm"] = (i2t, dict(itm_meta, ranks="both"))
        for task, metrics in results.items():
            logger.info(
                "%s retrieval on %s: %s",
                task.upper(),
                self.dataset_name,
                ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()),
            )
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            for kind, (scores, file_meta) in files.items():
                save_retrieval_scores(
                    os.path.join(self.output_dir, SCORE_FILES[kind]), scores, txt2img, file_meta
                )
            atomic_save_json(results, os.path.join(self.output_dir, RESULTS_FILE))
            logger.info("Retrieval scores and results written to %s", self.output_dir)
        return results


def _gather_captions(
    captions: List[Tuple[List[int], Tensor, Tensor]], num_texts: int
) -> Tuple[Tensor, Tensor]:
    """(T, L) ids and mask of every caption, from each process's images, by caption id."""
    ids: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    seen = torch.zeros(num_texts, dtype=torch.bool)
    for part in comm.all_gather(captions):
        for caption_ids, part_ids, part_mask in part:
            index = torch.as_tensor(caption_ids, dtype=torch.long)
            if ids is None:
                ids = torch.empty(num_texts, part_ids.shape[1], dtype=part_ids.dtype)
                mask = torch.empty(num_texts, part_mask.shape[1], dtype=part_mask.dtype)
            ids[index], mask[index] = part_ids, part_mask
            seen[index] = True
    if ids is None or not bool(seen.all()):
        raise RuntimeError(
            f"{int((~seen).sum())} of {num_texts} captions were not mapped: the evaluation "
            "mapper must return 'caption_ids' and 'captions_input_ids' for every image"
        )
    return ids, mask
