"""RetrievalEvaluator: online image-text retrieval of a tiny coarse model on a tiny pair dataset
written by the test, through ``Trainer.test``. The expected scores come from one forward per pair
(``itm_logits``) and the ITC embeddings of all inputs at once, not from the evaluator's path; the
score files it writes give the same table offline (tools/evaluate_retrieval.py)."""

import json
from argparse import Namespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from fiber_det.checkpoint import FIBERCheckpointer
from fiber_det.data import PairDatasetMapper, register_pair_dataset
from fiber_det.engine import Trainer
from fiber_det.evaluation import (
    RetrievalEvaluator,
    build_evaluator,
    load_retrieval_scores,
    retrieval_recall,
    save_retrieval_scores,
)
from fiber_det.model_zoo import get_config_file
from fiber_det.utils.testing import get_config
from tests.data.tiny_pairs import CAPTIONS, write_image, write_jsonl
from tests.modeling.coarse_inputs import spread_scores
from tests.paths import load_tool

from . import cases

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

# 4 images with 3, 2, 4 and 2 captions: 11 texts.
TEST_CAPTIONS = CAPTIONS + [["a green triangle above a yellow star", "a cat on a bench"]]
TOPK = 2


def _coarse_model(cfg, seed: int = 5):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    spread_scores(model)
    return model


@pytest.fixture
def case(tmp_path, tokenizer_dir):
    records = [
        {"image": write_image(tmp_path / "images" / f"{i}.jpg", seed=i), "captions": c}
        for i, c in enumerate(TEST_CAPTIONS)
    ]
    name = cases.unique_name("retrieval")
    register_pair_dataset(name, write_jsonl(tmp_path / "test.jsonl", records))
    cases.REGISTERED.append(name)
    opts = ["MODEL.LANGUAGE.TOKENIZER", str(tokenizer_dir), "DATASETS.TEST", (name,)]
    opts += ["OUTPUT_DIR", str(tmp_path / "out"), "TEST.COARSE.IMS_PER_BATCH", 3]
    cfg = get_config("tiny/coarse_tiny.yaml", opts)
    return cfg, name, _coarse_model(cfg)


def reference_scores(cfg, name, model):
    """(itc, itm per pair or None without ITM head, txt2img), without the evaluator's loops."""
    mapper = PairDatasetMapper(cfg, False)
    mapped = [mapper(d) for d in DatasetCatalog.get(name)]
    images = torch.stack([m["image"] for m in mapped])
    ids = torch.cat([m["captions_input_ids"] for m in mapped])
    mask = torch.cat([m["captions_attention_mask"] for m in mapped])
    txt2img = [i for i, m in enumerate(mapped) for _ in m["caption_ids"]]
    with torch.no_grad():
        image_cls, text_cls = model.encode_itc(images, ids, mask)
        if not model.has_itm_head:
            return image_cls @ text_cls.t(), None, txt2img
        itm = torch.stack(
            [
                model.itm_logits(images[i : i + 1], ids[j : j + 1], mask[j : j + 1])[0, 1]
                for i in range(len(images))
                for j in range(len(ids))
            ]
        ).view(len(images), len(ids))
    return image_cls @ text_cls.t(), itm, txt2img


def reranked(itc, itm, k):
    """ALBEF re-ranking written out: ITM on the ITC top-k of each row (TR) / column (IR)."""
    i2t = torch.full_like(itm, float("-inf"))
    t2i = torch.full_like(itm, float("-inf"))
    for i, cols in enumerate(itc.topk(k, dim=1).indices):
        i2t[i, cols] = itm[i, cols]
    for j, rows in enumerate(itc.topk(k, dim=0).indices.t()):
        t2i[rows, j] = itm[rows, j]
    return i2t, t2i


def assert_metrics_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


def test_trainer_test_scores_every_pair_and_saves_the_scores(case, capsys):
    cfg, name, model = case
    itc, itm, txt2img = reference_scores(cfg, name, model)
    assert itm.std() > 1e-2 and itc.std() > 1e-3  # scores that rank something
    results = Trainer.test(cfg, model)
    assert list(results) == ["itc", "itm"]
    assert_metrics_equal(results["itc"], retrieval_recall(itc, txt2img))
    assert_metrics_equal(results["itm"], retrieval_recall(itm, txt2img))
    out = f"{cfg.OUTPUT_DIR}/inference/{name}"
    for kind, expected in (("itc", itc), ("itm", itm)):
        scores, saved_txt2img, meta = load_retrieval_scores(f"{out}/scores_{kind}.safetensors")
        assert torch.allclose(scores, expected, atol=1e-5), (scores - expected).abs().max()
        assert saved_txt2img.tolist() == txt2img
        assert meta["dataset"] == name and meta["kind"] == kind and meta["ranks"] == "both"
        assert len(meta["image_ids"]) == len(TEST_CAPTIONS)
    assert json.load(open(f"{out}/results.json"))["itm"] == pytest.approx(results["itm"])
    tool = load_tool("evaluate_retrieval")
    assert (
        tool.main(["--scores", f"{out}/scores_itm.safetensors", "--output", f"{out}/o.json"]) == 0
    )
    assert json.load(open(f"{out}/o.json"))["metrics"] == pytest.approx(results["itm"])
    assert f"{results['itm']['r_mean']:.2f}" in capsys.readouterr().out


def test_itc_topk_reranking_gives_two_score_files(case):
    cfg, name, model = case
    cfg.MODEL.COARSE.RERANK_TOPK = TOPK
    itc, itm, txt2img = reference_scores(cfg, name, model)
    i2t, t2i = reranked(itc, itm, TOPK)
    results = Trainer.test(cfg, model)
    expected = retrieval_recall(i2t, txt2img, ir_scores=t2i)
    assert_metrics_equal(results["itm"], expected)
    assert expected != retrieval_recall(itm, txt2img)  # re-ranking changes this case's numbers
    out = f"{cfg.OUTPUT_DIR}/inference/{name}"
    tr_file, ir_file = f"{out}/scores_itm.safetensors", f"{out}/scores_itm_ir.safetensors"
    scores, _, meta = load_retrieval_scores(tr_file)
    assert torch.allclose(scores, i2t, atol=1e-5) and meta["ranks"] == "tr"
    assert meta["rerank_topk"] == TOPK
    tool = load_tool("evaluate_retrieval")
    with pytest.raises(SystemExit, match="--ir-scores .*scores_itm_ir.safetensors"):
        tool.main(["--scores", tr_file])
    tool.main(["--scores", tr_file, "--ir-scores", ir_file, "--output", f"{out}/o.json"])
    assert_metrics_equal(json.load(open(f"{out}/o.json"))["metrics"], expected)
    with pytest.raises(SystemExit, match="is --ir-scores itself"):
        tool.main(["--scores", tr_file, "--ir-scores", ir_file, "--output", ir_file])
    other = f"{out}/other.safetensors"  # same shape, other texts
    save_retrieval_scores(other, i2t.nan_to_num(neginf=0.0), sorted(txt2img, reverse=True), {})
    with pytest.raises(SystemExit, match="not from the evaluation"):
        tool.main(["--scores", tr_file, "--ir-scores", other])


def test_itc_only_model_and_refusals(case, tiny_cfg):
    cfg, name, _ = case
    cfg.MODEL.COARSE.ITM_LOSS_WEIGHT = 0.0
    model = _coarse_model(cfg)
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, RetrievalEvaluator)
    itc, _, txt2img = reference_scores(cfg, name, model)
    results = evaluator.evaluate_model(model)
    assert list(results) == ["itc"]
    assert_metrics_equal(results["itc"], retrieval_recall(itc, txt2img))
    with pytest.raises(RuntimeError, match="evaluate_model"):
        evaluator.process([], [])
    with pytest.raises(TypeError, match="FIBERCoarse"):
        evaluator.evaluate_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        RetrievalEvaluator(name, mapper=None, batch_size=0)


def _worker(rank, world_size, init_file, cfg, name, model, out_file):
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        cfg.OUTPUT_DIR = f"{cfg.OUTPUT_DIR}/rank{rank}"
        results = build_evaluator(cfg, name).evaluate_model(model)
        if rank == 0:
            torch.save(dict(results), out_file)
        elif results:
            raise RuntimeError(f"rank {rank} returned results {results}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("topk", [0, TOPK])
def test_two_processes_give_the_single_process_scores(case, tmp_path, topk):
    cfg, name, model = case
    cfg.MODEL.COARSE.RERANK_TOPK = topk  # re-ranking: a text's candidates span both processes
    out_file = tmp_path / "res.pth"
    args = (2, str(tmp_path / "init"), cfg, name, model, str(out_file))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="fork")
    gathered = torch.load(out_file, weights_only=False)
    single = build_evaluator(cfg, name).evaluate_model(model)
    for task in ("itc", "itm"):
        assert_metrics_equal(gathered[task], single[task])
    for kind in ("itc", "itm", "itm_ir") if topk else ("itc", "itm"):
        file = f"inference/{name}/scores_{kind}.safetensors"
        a = load_retrieval_scores(f"{cfg.OUTPUT_DIR}/rank0/{file}")[0]
        b = load_retrieval_scores(f"{cfg.OUTPUT_DIR}/{file}")[0]
        assert torch.allclose(a, b, atol=1e-5), kind


def test_train_net_eval_only_evaluates_a_coarse_checkpoint(case, tmp_path):
    cfg, name, model = case
    FIBERCheckpointer(model, str(tmp_path / "ckpt")).save("model_final")
    opts = ["MODEL.LANGUAGE.TOKENIZER", cfg.MODEL.LANGUAGE.TOKENIZER, "MODEL.DEVICE", "cpu"]
    opts += ["DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "eval")]
    opts += ["MODEL.WEIGHTS", str(tmp_path / "ckpt" / "model_final.pth")]
    args = Namespace(
        config_file=get_config_file("tiny/coarse_tiny.yaml"),
        opts=opts,
        eval_only=True,
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    results = load_tool("train_net").main(args)
    expected = Trainer.test(cfg, model)
    for task in ("itc", "itm"):
        assert_metrics_equal(results[task], expected[task])
    assert (tmp_path / "eval" / "inference" / name / "scores_itm.safetensors").is_file()


def test_an_unreadable_test_image_is_an_error_naming_it(case, tmp_path):
    cfg, name, model = case
    (tmp_path / "images" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"2\.jpg"):
        build_evaluator(cfg, name).evaluate_model(model)
