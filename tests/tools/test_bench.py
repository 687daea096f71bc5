"""The benchmark runs the engine's real step for each stack and reports ratios (no timing assertions)."""

import pytest
import torch
from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.tools.bench_memory import tensor_peak_mb


def test_bench_table_has_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--teacher",
            "test_resnet",
            "--student",
            "test_resnet",
            "--methods",
            "kd,kd+at+rkd",
            "--batch",
            "8",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--options",
            "channels_last,bf16",
            "--torchdistill",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("floor", "student only", "kdzoo kd", "kdzoo kd+at+rkd", "kdzoo kd [channels_last]", "kdzoo kd [bf16]"):
        assert f"| {name} |" in result.output
    assert "| floor [bf16] |" in result.output  # each option is compared with the floor done the same way
    assert "kdzoo step time / the floor's in the same mode: kd [channels_last]" in result.output
    for name in ("torchdistill kd", "torchdistill kd+at+rkd"):  # the same steps done by torchdistill
        assert f"| {name} |" in result.output
    import json

    report = json.loads(out.read_text())
    assert report["results"]["floor"]["ratio"] == 1.0
    assert set(report["vs_same_mode_floor"]) == {
        f"{s} [{o}]" for s in ("kd", "kd+at+rkd") for o in ("channels_last", "bf16")
    }
    assert all(r["step_ms"] > 0 and r["peak_mb"] > 0 for r in report["results"].values())


def test_unknown_option_is_one_line():
    result = CliRunner().invoke(
        main, ["bench", "--teacher", "test_resnet", "--student", "test_resnet", "--options", "fp8"]
    )
    assert result.exit_code != 0
    assert (
        "bench option 'fp8' is unknown; choose from channels_last, bf16, fp16, compile, compile_objective, "
        "reduce_overhead" in result.output
    )


def test_tensor_peak_counts_what_a_step_holds_at_once():
    cpu = torch.device("cpu")
    kept = []

    def step():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**19)  # 2 MiB while a is alive: the peak is 6 MiB
        kept[:] = [a.sum() + b.sum()]

    assert tensor_peak_mb(step, cpu) == pytest.approx(6.0, abs=0.01)


def test_the_bench_times_the_stage_a_method_distils_in():
    from kdzoo import Stage
    from kdzoo.tools.bench import distilling_stage

    init, plain = Stage("init", 30, losses=frozenset({"ab"})), Stage("train", 5, losses=frozenset({"ce"}))
    assert distilling_stage([init, plain]) is init  # AB, FSP: the main stage is plain CE
    paraphrase, main = Stage("paraphrase", 3, losses=frozenset({"ft_reconstruction"})), Stage("train", 5)
    assert distilling_stage([paraphrase, main]) is main
    assert distilling_stage([plain]) is plain


def test_bench_model_arguments_are_read_as_yaml_and_a_malformed_one_is_one_line():
    from click.testing import CliRunner

    from kdzoo.cli import _model_args, main

    assert _model_args(("img_size=32", "patch_size=4", "global_pool=avg"), "--student-arg") == {
        "img_size": 32,
        "patch_size": 4,
        "global_pool": "avg",
    }
    result = CliRunner().invoke(main, ["bench", "--methods", "kd", "--student-arg", "img_size"])
    assert result.exit_code == 1
    assert (
        result.output.strip() == "Error: --student-arg 'img_size': expected KEY=VALUE, e.g. --student-arg img_size=32"
    )
