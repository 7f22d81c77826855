"""tools/evaluate_predictions.py prints and writes exactly what the online evaluation logged."""

import json

import pytest
from detectron2.config import get_cfg

from fiber_det import add_fiber_config
from fiber_det.evaluation import build_evaluator
from tests.paths import load_tool

from . import cases

pytestmark = pytest.mark.filterwarnings("ignore:The .warn. method is deprecated:DeprecationWarning")


def _tool():
    return load_tool("evaluate_predictions")


@pytest.mark.parametrize("case", ["coco", "lvis", "flickr", "refexp", "d3"])
def test_offline_equals_online(tmp_path, run_online, capsys, caplog, case):
    name, inputs, outputs = getattr(cases, f"{case}_case")(tmp_path)
    cfg = get_cfg()
    add_fiber_config(cfg)
    out = tmp_path / "online"
    evaluator = build_evaluator(cfg, name, output_folder=str(out))
    with caplog.at_level("INFO", logger="fiber_det"):
        online = run_online(evaluator, inputs, outputs)
    messages = [r.getMessage() for r in caplog.records]
    logged = [m for m in messages if m.startswith(f"Evaluation results for {name}:")]
    assert len(logged) == 1
    capsys.readouterr()

    offline_json = tmp_path / "offline.json"
    pred = out / "instances_predictions.pth"
    assert (
        _tool().main(["--dataset", name, "--predictions", str(pred), "--output", str(offline_json)])
        == 0
    )
    printed = capsys.readouterr().out
    assert logged[0] in printed  # the same table, character for character
    online_json = json.loads((out / "results.json").read_text())
    assert json.loads(offline_json.read_text())[name] == online_json
    checks = online_json.pop("prediction_checks")  # saved beside the metrics, not returned
    assert checks["records_kept"] == checks["records"] > 0 and checks["non_finite_boxes"] == 0
    assert online_json == json.loads(json.dumps(online, allow_nan=True).replace("NaN", "null"))


def test_tool_summarises_several_datasets(tmp_path, capsys):
    # the COCO case evaluated twice, once as a COCO-O domain: ER from --coco-ap
    name, inputs, outputs = cases.coco_case(tmp_path)
    cfg = get_cfg()
    add_fiber_config(cfg)
    ev = build_evaluator(cfg, name, output_folder=str(tmp_path / "o"))
    ev.reset()
    ev.process(inputs, outputs)
    ev.evaluate()
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name).as_dict()
    meta.pop("name")
    domain = cases.register(
        cases.unique_name("cocoo"),
        **{**meta, "evaluator_type": "coco_o", "coco_o_domain": "sketch"},
    )
    pred = str(tmp_path / "o" / "instances_predictions.pth")
    out = tmp_path / "all.json"
    argv = [
        "--dataset",
        name,
        domain,
        "--predictions",
        pred,
        pred,
        "--output",
        str(out),
        "--coco-ap",
        "49.5",
    ]
    assert _tool().main(argv) == 0
    res = json.loads(out.read_text())
    ap = res[name]["bbox"]["AP"]
    assert res[domain]["bbox"]["AP"] == ap
    # one domain: mean = its AP; ER = AP - (0.4497 * 49.5 + 0.025)
    assert res["summary"]["coco_o"]["ER"] == pytest.approx(ap - 22.28515)
    assert "Benchmark summary" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _tool().main(["--dataset", name, domain, "--predictions", pred])


def test_tool_config_overrides(tmp_path, run_online):
    # the Flickr case re-scored offline with the merged-box protocol (R@1 25 -> 0, R@5 75 -> 50)
    name, inputs, outputs = cases.flickr_case(tmp_path)
    cfg = get_cfg()
    add_fiber_config(cfg)
    run_online(build_evaluator(cfg, name, output_folder=str(tmp_path / "o")), inputs, outputs)
    pred = str(tmp_path / "o" / "instances_predictions.pth")
    out = tmp_path / "merged.json"
    argv = [
        "--dataset",
        name,
        "--predictions",
        pred,
        "--output",
        str(out),
        "--",
        "TEST.FIBER.FLICKR_PROTOCOL",
        "merged",
    ]
    assert _tool().main(argv) == 0
    res = json.loads(out.read_text())[name]["flickr30k"]
    assert (res["R@1"], res["R@5"]) == (0.0, 50.0)


def test_tool_refuses_an_output_that_is_one_of_its_inputs(tmp_path, run_online):
    name, inputs, outputs = cases.coco_case(tmp_path)
    cfg = get_cfg()
    add_fiber_config(cfg)
    run_online(build_evaluator(cfg, name, output_folder=str(tmp_path / "o")), inputs, outputs)
    pred = tmp_path / "o" / "instances_predictions.pth"
    before = pred.read_bytes()
    from detectron2.data import MetadataCatalog

    gt = MetadataCatalog.get(name).json_file
    gt_before = open(gt, "rb").read()
    for output in (str(pred), gt):
        argv = ["--dataset", name, "--predictions", str(pred), "--output", output]
        with pytest.raises(SystemExit, match=r"refusing to write: the output .* is the input"):
            _tool().main(argv)
    assert pred.read_bytes() == before and open(gt, "rb").read() == gt_before


def test_tool_names_the_dataset_and_file_of_foreign_predictions(tmp_path):
    import torch

    name, _, _ = cases.coco_case(tmp_path)
    pred = tmp_path / "other.pth"
    torch.save([{"image_id": 999, "instances": [], "num_prompts": 1}], pred)
    with pytest.raises(SystemExit, match=rf"error: {name} with .*other.pth: none of the 1 pred"):
        _tool().main(["--dataset", name, "--predictions", str(pred)])
