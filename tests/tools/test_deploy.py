"""``kdzoo export --format onnx`` (issue 15, first slice): the deployed student only, verified with
onnxruntime against PyTorch on the validation set, scored by ``kdzoo eval``; the missing extra."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

import kdzoo
from kdzoo import KdzooError
from kdzoo.cli import main
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs: a CNN student with FitNets (a regressor that must stay out of the export),
    a ViT student, and SimKD (which deploys a projector and the teacher's classifier)."""
    root = tmp_path_factory.mktemp("deploy")
    made = {"cache": str(root / "cache")}  # the module's own teacher cache (module fixtures precede conftest's)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDZOO_CACHE", made["cache"])
        for name, methods, pair in (
            ("cnn", ["fitnets"], "resnet->resnet"),
            ("vit", ["kd"], "resnet->vit"),
            ("simkd", ["simkd"], "resnet->resnet"),
        ):
            # one teacher for the three (trained once into the module's cache)
            cfg = tiny_config(methods, "teacher.model=resnet10t", pair=pair, out_dir=str(root))
            trainer = build_trainer(cfg, registry(), root / name, show_progress=False)
            trainer.fit()
            made[name] = (root / name, trainer)
    return made


@pytest.fixture(scope="module")
def exported(runs):
    """Each run exported to ONNX once, with what the command said."""
    return {name: _cli("export", runs[name][0], "--format", "onnx") for name in ("cnn", "vit", "simkd")}


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["cnn", "vit", "simkd"])
def test_export_is_verified_with_onnxruntime_and_scored_like_the_pytorch_file(runs, exported, name):
    run_dir, trainer = runs[name]
    said = exported[name]
    assert "onnxruntime agrees with PyTorch on 128 validation images (top-1 agreement 100.00%" in said
    record = json.loads((run_dir / "student.onnx.json").read_text())
    assert record["agrees"] and record["max_logit_gap_relative"] <= record["tolerance_relative"] == 1e-4
    scored = {suffix: _cli("eval", run_dir / f"student.{suffix}") for suffix in ("onnx", "safetensors")}
    assert scored["onnx"].split()[0] == scored["safetensors"].split()[0]  # the same top-1
    model = onnx.load(str(run_dir / "student.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # a dynamic batch axis


def test_no_method_module_ends_up_in_the_export(runs, exported):
    run_dir, trainer = runs["cnn"]
    model = onnx.load(str(run_dir / "student.onnx"))
    exported = sum(int(torch.tensor(list(i.dims)).prod()) for i in model.graph.initializer)
    student = sum(v.numel() for v in trainer.student.state_dict().values() if v.is_floating_point())
    regressor = sum(p.numel() for p in trainer.modules["fitnets"].parameters())
    assert regressor > 0 and exported <= student  # at most the student's own tensors
    assert not any("regressor" in i.name or "method" in i.name for i in model.graph.initializer)


def test_simkds_export_holds_the_projector_and_the_reused_classifier(runs, exported):
    run_dir, trainer = runs["simkd"]
    model = onnx.load(str(run_dir / "student.onnx"))
    exported = sum(int(torch.tensor(list(i.dims)).prod()) for i in model.graph.initializer)
    assert exported > sum(p.numel() for p in trainer.student.parameters())  # + projector + classifier


def test_safetensors_export_is_written_again_from_the_checkpoint(runs):
    run_dir, _ = runs["simkd"]
    before = load_file(str(run_dir / "student.safetensors"))
    (run_dir / "student.safetensors").unlink()
    _cli("export", run_dir)
    after = load_file(str(run_dir / "student.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(kdzoo.load_student(run_dir / "student.safetensors"), torch.nn.Module)


def test_a_missing_deploy_package_is_one_line_naming_the_extra(runs, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    result = CliRunner().invoke(main, ["export", str(runs["cnn"][0]), "--format", "onnx"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: kdzoo export --format onnx needs the deploy extra (missing: onnxruntime): pip install 'kdzoo[deploy]'"
    ]


def test_exporting_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KdzooError, match="has no student.safetensors"):
        from kdzoo.tools.deploy import export_onnx

        export_onnx(tmp_path)


INT8_BOUND = 2.0  # top-1 points the int8 student may lose to the fp32 one on the digits run


def test_int8_keeps_the_fp32_accuracy_within_the_bound_on_the_embedded_digits_run(tmp_path):
    # the embedded default data (scikit-learn's digits), a student trained without a teacher (Tf-KD)
    cfg = tiny_config(["tfkd"], "data.name=digits", "data.train_limit=null", "train.epochs=3", out_dir=str(tmp_path))
    build_trainer(cfg, registry(), tmp_path / "run", show_progress=False).fit()
    said = _cli("export", tmp_path / "run", "--format", "onnx", "--quantize", "int8")
    assert "student.int8.onnx: top-1" in said and "calibrated on 256 training images" in said
    record = json.loads((tmp_path / "run" / "student.onnx.json").read_text())["int8"]
    assert record["fp32_top1"] > 50  # a student worth quantizing
    assert abs(record["top1_change"]) <= INT8_BOUND, record
    assert record["int8_bytes"] < record["fp32_bytes"] / 2
    # each way tried was scored and timed against fp32 here; the one kept and the verdict follow the numbers
    tried = {c["name"]: c for c in record["candidates"]}
    assert set(tried) == {"fused", "conv-matmul"} and record["chosen"] in tried
    assert record["int8_top1"] == tried[record["chosen"]]["top1"] and record["fp32_images_per_s"] > 0
    assert record["speedup"] == tried[record["chosen"]]["images_per_s"] / record["fp32_images_per_s"]
    assert ("fp32 stays the recommendation" in said) == (record["recommendation"] == "fp32")
    scored = _cli("eval", tmp_path / "run" / "student.int8.onnx")
    assert scored.split()[0] == f"top1={record['int8_top1']:.2f}"
    refused = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--quantize", "int8"])
    assert refused.exit_code != 0 and "--quantize int8 quantizes the ONNX export: add --format onnx" in refused.output


def test_the_trade_off_table_lands_in_summary_json(runs, exported, monkeypatch):
    from kdzoo.tools.tradeoff import deploy_table

    monkeypatch.setenv("KDZOO_CACHE", runs["cache"])  # the run's teacher, as kdzoo trained it
    run_dir, _ = runs["cnn"]
    table = deploy_table(run_dir)
    rows = {(r["model"], r["runtime"]): r for r in table["rows"]}
    assert set(rows) == {(m, r) for m in ("teacher", "student") for r in ("pytorch eager", "onnxruntime fp32")}
    assert rows[("teacher", "pytorch eager")]["retained"] == 1.0 and table["threads"] == torch.get_num_threads()
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["images_per_s"] > 0 and row["file_bytes"] > 0 and row["flops"] > 0
    assert rows[("student", "onnxruntime fp32")]["top1"] == rows[("student", "pytorch eager")]["top1"]
    assert json.loads((run_dir / "summary.json").read_text())["deploy"] == json.loads(json.dumps(table))
    assert (run_dir / "teacher.onnx").is_file() and json.loads((run_dir / "teacher.onnx.json").read_text())["agrees"]


def test_compare_deploy_exports_and_measures_each_methods_best_run(tmp_path):
    from tests.helpers import TINY

    sets = [*TINY, "teacher.model=resnet10t", "student.model=test_resnet", "train.epochs=1"]
    args = ["compare", "--methods", "kd", "--seeds", "1", "--deploy", "--out", str(tmp_path / "cmp")]
    said = _cli(*args, *[a for s in sets for a in ("--set", s)])
    assert "deploy: kd seed 0: ONNX, int8 and their costs" in said
    report = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(report["deploy"]) == {"scratch", "kd"}
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "## Deployed: each method's best run in onnxruntime" in table and "| kd (0) |" in table
    assert {"onnxruntime", "onnx"} <= set(report["meta"]["versions"])  # what measured it
    teacher = [[r for r in report["deploy"][m]["rows"] if r["model"] == "teacher"] for m in ("kd", "scratch")]
    assert teacher[0] and teacher[0] == teacher[1]  # the shared teacher, measured once and in every table
    assert not (tmp_path / "cmp" / "runs" / "scratch-seed0" / "teacher.onnx").exists()
    assert all(r["retained"] is not None for r in report["deploy"]["scratch"]["rows"])
    int8 = tmp_path / "cmp" / "runs" / "kd-seed0" / "student.int8.onnx"
    assert int8.is_file()

    from kdzoo.tools.int8 import int8_is_current

    made = int8.stat().st_mtime_ns
    assert int8_is_current(int8.parent) and "ONNX, int8" in _cli(*args, *[a for s in sets for a in ("--set", s)])
    assert int8.stat().st_mtime_ns == made  # kept: today's recipe made it
    record_file = int8.parent / "student.onnx.json"
    record = json.loads(record_file.read_text())
    del record["int8"]["min_range"]  # as an older kdzoo recorded it
    record_file.write_text(json.dumps(record))
    assert not int8_is_current(int8.parent)
    _cli(*args, *[a for s in sets for a in ("--set", s)])
    assert int8.stat().st_mtime_ns != made and int8_is_current(int8.parent)  # made again


class DeadBranch(nn.Module):
    """A classifier beside a branch that no image switches on (a dead squeeze-excite ReLU, as attention
    transfer left in a MobileNetV3 student of the leaderboard): its ReLU is zero on every image."""

    def __init__(self, in_chans: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, num_classes)
        self.reduce = nn.Conv2d(in_chans, 2, 1)
        self.expand = nn.Linear(2, num_classes)
        with torch.no_grad():
            self.reduce.weight.zero_()
            self.reduce.bias.fill_(-1.0)

    def forward(self, x):
        dead = torch.relu(self.reduce(x)).mean((2, 3))
        return self.head(self.body(x).flatten(1)) + self.expand(dead)


@pytest.mark.parametrize("way", ["fused", "conv-matmul"])
def test_int8_keeps_a_branch_that_no_calibration_image_switches_on_switched_off(tmp_path, way):
    from onnx import numpy_helper

    from kdzoo.data import load_data
    from kdzoo.tools.deploy import export_verified
    from kdzoo.tools.int8 import CANDIDATES, MIN_INT8_RANGE, quantize_int8

    cfg = tiny_config(["tfkd"], "data.name=digits", "data.train_limit=null", out_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    data = load_data(cfg.data, cfg.train.seed)
    torch.manual_seed(0)
    export_verified(DeadBranch(data.in_chans, data.num_classes), tmp_path / "student.onnx", data, "student")
    quantize_int8(tmp_path, candidates=tuple(c for c in CANDIDATES if c.name == way))
    model = onnx.load(str(tmp_path / "student.int8.onnx"))
    # every activation's step: the per-tensor (one-value) scales, in QDQ pairs or fused QLinear nodes
    steps = {
        i.name: float(numpy_helper.to_array(i))
        for i in model.graph.initializer
        if "scale" in i.name and i.dims in ([], [1])
    }
    # onnxruntime's fallback for a [0, 0] range is a step of 1.0: rounding noise upstream would switch the
    # branch on at full strength; the narrowest range keeps its step (and all it can hold) near zero
    assert steps and max(steps.values()) < 1.0, steps
    assert min(steps.values()) <= MIN_INT8_RANGE / 255 * 1.01, steps


def test_the_int8_choice_is_the_fastest_within_a_point_of_fp32_else_the_most_accurate():
    from kdzoo.tools.int8 import Measured, choose, verdict

    fp32 = Measured("fp32", 80.0, 100.0)
    fast, close, far = Measured("fast", 78.5, 300.0), Measured("close", 79.5, 150.0), Measured("far", 60.0, 900.0)
    assert choose(fp32, [fast, close, far]) == close  # the fastest within 1 point
    assert choose(fp32, [fast, far]) == fast  # none within: the most accurate
    record = {"speedup": 0.69, "throughput_batch": 64, "recommendation": "fp32", "chosen": "fused", "top1_change": 0.0}
    assert verdict(record).startswith("int8 is not faster than fp32 here (0.69x fp32's images/s at batch 64")
    assert verdict(record).endswith("fp32 stays the recommendation")
    faster = {**record, "speedup": 3.0, "recommendation": "int8", "quantized": "every op"}
    assert (
        verdict(faster)
        == "int8 (fused: every op) runs 3.00x fp32's images/s at batch 64 on this machine: the recommendation"
    )


def test_a_method_whose_export_fails_costs_its_own_row_not_the_report(tmp_path, monkeypatch):
    from kdzoo.registry import load_registry
    from kdzoo.tools import deploy as deploy_module
    from kdzoo.tools.compare import compare
    from tests.helpers import TINY

    real_export = deploy_module.export_onnx

    def disagrees_for_kd(run_dir, *args, **kwargs):
        if run_dir.name.startswith("kd-"):
            raise KdzooError("onnxruntime and PyTorch disagree on 3 of 64 images\ndetails below")
        return real_export(run_dir, *args, **kwargs)

    monkeypatch.setattr(deploy_module, "export_onnx", disagrees_for_kd)
    sets = [*TINY, "teacher.model=resnet10t", "student.model=test_resnet", "train.epochs=1"]
    said = []
    report = compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append, deploy=True)
    assert report["deploy"]["kd"] == {"seed": 0, "error": "onnxruntime and PyTorch disagree on 3 of 64 images"}
    assert "rows" in report["deploy"]["scratch"]
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| scratch (0) |" in table and "| kd (0) |" not in table
    assert "- kd (seed 0): onnxruntime and PyTorch disagree on 3 of 64 images" in table
    assert any("deploy: kd seed 0: failed:" in line for line in said)
