"""``kdzoo compare --methods all``: every installed method (built-in and third-party) is listed, run
or skipped with its reason, and a restart redoes nothing that finished."""

import importlib.metadata
import json

import pytest
from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.registry import ENTRY_POINT_GROUP, load_registry, reset_registry
from tests.helpers import (
    LOGIT_MSE_PLUGIN,
    TINY,
    NaNFromTheStart,
    NoConfig,
    installed_distribution,
    registry_with_method,
)

KEPT = {"kd", "deit", "mlkd"}  # deit cannot run on a CNN student; mlkd refuses the teacher-output cache


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """Installed methods: kd, deit and mlkd of kdzoo's own, and a third-party package's logit_mse."""
    site = tmp_path / "site"
    site.mkdir()
    module = "kdzoo_logit_mse"
    installed_distribution(site, module, module, LOGIT_MSE_PLUGIN, {"logit_mse": module})
    monkeypatch.syspath_prepend(str(site))
    builtins = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist.name == "kdzoo"}
    monkeypatch.setenv("KDZOO_DISABLE_PLUGINS", ",".join(sorted(builtins - KEPT)))
    reset_registry()
    yield
    reset_registry()


def _compare(out, *extra):
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    sets += ["teacher.cache=true", "data.views=2"]  # fixed augmented views: what a cache can hold
    args = ["compare", "--methods", "all", "--seeds", "2", "--out", str(out), *extra]
    return CliRunner().invoke(main, [*args, *[a for s in sets for a in ("--set", s)]])


def test_all_lists_every_installed_method_and_says_why_one_did_not_run(zoo, tmp_path):
    out = tmp_path / "cmp"
    first = _compare(out)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in report["rows"]} == {"scratch", "kd", "mlkd", "logit_mse"}
    assert all(r["seeds"] == 2 for r in report["rows"])
    tops = [r["last_top1_mean"] for r in report["rows"]]
    assert tops == sorted(tops, reverse=True)  # ranked
    assert list(report["skipped"]) == ["deit"] and "has no" in report["skipped"]["deit"]
    assert "live teacher" in report["notes"]["mlkd"] and "teacher.cache" in report["notes"]["mlkd"]
    for method, cached in (("kd", True), ("logit_mse", True), ("mlkd", False)):
        config = json.loads((out / "runs" / f"{method}-seed1" / "config.json").read_text())
        assert config["teacher"]["cache"] is cached, method
    assert not (out / "runs" / "deit-seed0").exists()
    table = (out / "results.md").read_text()
    assert "| deit | deit trains a student's distillation token" in table
    assert "- mlkd: live teacher" in table and "compare --methods all --seeds 2" in table
    scratch = next(r for r in report["rows"] if r["method"] == "scratch")
    assert scratch["cost_vs_scratch"] == 1.0 and scratch["cost_basis"] == "cpu"
    assert all(r["cost_vs_scratch"] > 0 for r in report["rows"])
    teacher = report["teacher_training"]  # the teacher's own curve
    assert len(teacher["curve"]) == 1 and teacher["wall_time_s"] > 0 and (out / "teacher.png").is_file()
    assert "Spearman" in table and "- wall time: " in table
    assert (out / "accuracy_vs_cost.png").stat().st_size > 0 and (out / "results.png").stat().st_size > 0

    (out / "runs" / "logit_mse-seed1" / "summary.json").unlink()  # as if killed after its last checkpoint
    again = _compare(out)
    assert again.exit_code == 0, again.output
    assert again.output.count("done before, skipped") == 7 and again.output.count(": training") == 1
    assert "logit_mse seed 1: training" in again.output and "deit: does not apply" in again.output
    assert json.loads((out / "results.json").read_text())["skipped"] == report["skipped"]

    moved = out.rename(tmp_path / "moved")  # a comparison folder moved elsewhere keeps its runs
    third = _compare(moved)
    assert third.exit_code == 0, third.output
    assert third.output.count("done before, skipped") == 8 and ": training" not in third.output


def test_all_must_stand_alone(zoo, tmp_path):
    result = _compare(tmp_path / "cmp", "--methods", "kd,all")
    assert result.exit_code != 0
    assert "'all' alone" in result.output


def test_the_leaderboard_config_loads_for_every_installed_method():
    from pathlib import Path

    from kdzoo.config import load_config
    from kdzoo.registry import registry

    config = Path(__file__).parents[2] / "configs" / "fashion_mnist" / "leaderboard.yaml"
    reg = registry()
    for method in reg.methods:
        cfg = load_config([str(config)], [], [method], reg.config_classes())
        assert cfg.methods == [method] and cfg.teacher.train.epochs == 30 and cfg.train.epochs == 12


def test_ranking_agreement_is_spearmans_rho_against_the_last_epoch():
    from kdzoo.tools.leaderboard import RunResult, ranking_agreement

    curves = {"a": [[1.0, 3.0, 3.0]], "b": [[2.0, 2.0, 2.0]], "c": [[3.0, 1.0, 2.5], [3.0, 1.0, 1.5]]}
    results = [RunResult(m, s, c[-1], max(c), 1.0, c) for m, cs in curves.items() for s, c in enumerate(cs)]
    rows = [{"method": m} for m in curves]
    # the last epoch ranks c (mean 2.0) = b < a: (2, 0.5, 0.5), deviations (1, -0.5, -0.5), norm sqrt(1.5);
    # epoch 1 ranks a < b < c: (0, 1, 2), deviations (-1, 0, 1); epoch 2 ranks c < b < a: (2, 1, 0)
    rho = 1.5 / (2**0.5 * 1.5**0.5)
    assert ranking_agreement(results, rows) == pytest.approx([-rho, rho, 1.0])


def test_a_method_below_scratch_comes_with_its_gap_per_epoch_and_its_label_share():
    from kdzoo.tools.compare_runs import label_share
    from kdzoo.tools.leaderboard import RunResult, below_scratch_lines, summarise

    assert label_share({"loss": 29.24, "ce": 2.56, "hint": 0.2668, "weights": {"ce": 1.0, "hint": 100.0}}) == (
        pytest.approx(2.56 / 29.24)
    )
    results = [
        RunResult("scratch", 0, 80.0, 80.0, 10.0, [70.0, 80.0], 10.0, [1.0, 1.0]),
        RunResult("scratch", 1, 82.0, 82.0, 10.0, [72.0, 82.0], 10.0, [1.0, 1.0]),
        RunResult("at", 0, 79.0, 79.0, 12.0, [60.0, 79.0], 12.0, [0.1, 0.4]),
        RunResult("at", 1, 79.0, 79.0, 12.0, [62.0, 79.0], 12.0, [0.1, 0.6]),
    ]
    lines = below_scratch_lines(results, summarise(results, ["scratch", "at"], 90.0)["rows"])
    assert lines[2] == (
        "- at (-2.00, within scratch's spread): gap to scratch per epoch -10.0 / -2.0; the labels' share of its "
        "loss: 10% at epoch 1, 50% at the last."
    )
    # a term too small to move the loss (CC at its weight 0.02) is not rounded away to 100%;
    # a last stage on the labels alone is said so
    quiet = [RunResult("cc", s, 79.0, 79.0, 12.0, [62.0, 79.0], 12.0, [0.99985, 0.99990]) for s in (0, 1)]
    plain = [RunResult("ab", s, 79.0, 79.0, 12.0, [62.0, 79.0], 12.0, [1.0, 1.0]) for s in (0, 1)]
    both = [*results[:2], *quiet, *plain]
    lines = below_scratch_lines(both, summarise(both, ["scratch", "cc", "ab"], 90.0)["rows"])
    assert lines[2].endswith("the labels' share of its loss: 99.98% at epoch 1, 99.99% at the last.")
    assert lines[3].endswith("-9.0 / -2.0; its last stage trains on the labels alone.")


def test_the_table_marks_a_method_short_of_seeds_and_an_epoch_where_every_method_tied():
    from kdzoo.tools.leaderboard import RunResult, _failed_lines, _ranking_lines, _settling_lines, summarise

    results = [
        RunResult("scratch", 0, 80.0, 80.0, 10.0, [10.0, 80.0]),
        RunResult("scratch", 1, 82.0, 82.0, 10.0, [10.0, 82.0]),
        RunResult("kd", 0, 84.0, 84.0, 12.0, [10.0, 84.0]),
        RunResult("kd", 1, 85.0, 85.0, 12.0, [10.0, 85.0]),
        RunResult("at", 0, 70.0, 70.0, 12.0, [10.0, 70.0]),  # its seed 1 failed
    ]
    report = summarise(results, ["scratch", "kd", "at"], 90.0)
    failed = {"at": {1: "a loss | turned non-finite"}}
    rows = report["rows"]
    table = "\n".join([*_ranking_lines(rows), *_settling_lines(results, rows), *_failed_lines(failed)])
    assert "| at | 1 of 2 † |" in table and "†: some of its seeds did not finish" in table
    asked = "\n".join(_ranking_lines(rows, asked=3))  # a seed every method lost is still missing
    assert "| kd | 2 of 3 † |" in asked and "| at | 1 of 3 † |" in asked
    assert "| ρ | – | 1.00 |" in table and "–: every method had the same top-1 at that epoch" in table
    assert "| at | 1 | a loss \\| turned non-finite |" in table  # a '|' in a reason keeps the table whole


def test_curves_follow_the_last_stage_which_every_method_runs_for_the_same_epochs():
    from kdzoo.tools.compare_runs import final_stage

    # AB-like: an init stage where the student's head is untrained, then the stage of train.epochs
    records = [{"stage_index": 0, "epoch": e, "val": {"top1": 10.0}} for e in (1, 2, 3)]
    records += [{"stage_index": 1, "epoch": e, "val": {"top1": 70.0 + e}} for e in (1, 2)]
    assert [r["val"]["top1"] for r in final_stage(records)] == [71.0, 72.0]
    assert final_stage(records[:3]) == records[:3]  # one stage: all of it


def test_a_run_that_fails_is_listed_and_the_others_go_on(tmp_path):
    from kdzoo.tools.compare import compare

    reg = registry_with_method("diverges", NaNFromTheStart, NoConfig, needs_teacher=False)
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    said = []
    report = compare(["diverges", "kd"], [], sets, [0], tmp_path / "cmp", reg, echo=said.append)
    assert {r["method"] for r in report["rows"]} == {"scratch", "kd"}
    assert "non-finite" in report["failed"]["diverges"][0] or "nan" in report["failed"]["diverges"][0].lower()
    assert "| diverges | 0 |" in (tmp_path / "cmp" / "results.md").read_text()
    said.clear()
    again = compare(["diverges", "kd"], [], sets, [0], tmp_path / "cmp", reg, echo=said.append)
    assert any("diverges seed 0: failed before, not retried" in line for line in said)
    assert again["failed"] == {"diverges": {0: report["failed"]["diverges"][0]}}


def test_a_stop_on_request_stops_the_comparison_and_is_no_failure(tmp_path, monkeypatch):
    from kdzoo.errors import RunStopped
    from kdzoo.tools import compare as compare_module
    from kdzoo.tools import compare_runs

    def stopped(*args):
        raise RunStopped("stopped by SIGTERM; checkpoint written")

    monkeypatch.setattr(compare_runs, "run_one", stopped)
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    with pytest.raises(RunStopped):
        compare_module.compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=lambda _: None)
    assert not list((tmp_path / "cmp" / "runs").glob("*/failed.txt"))


def test_a_run_another_process_holds_is_left_to_it_and_read_by_a_later_compare(tmp_path):
    from kdzoo.engine.locking import RunDirLock
    from kdzoo.tools.compare import compare

    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    said = []
    with RunDirLock(tmp_path / "cmp" / "runs" / "kd-seed0"):  # another compare training the same folder
        report = compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append)
    assert "in use by another kdzoo process" in report["failed"]["kd"][0]
    assert any("kd seed 0: not in this report" in line for line in said)
    assert not (tmp_path / "cmp" / "runs" / "kd-seed0" / "failed.txt").exists()  # no verdict on its run
    said.clear()
    again = compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append)
    assert not again["failed"] and any("kd seed 0: training" in line for line in said)


def test_a_crash_is_listed_and_retried_and_an_unreadable_summary_is_finished_again(tmp_path, monkeypatch):
    from kdzoo.tools import compare as compare_module
    from kdzoo.tools import compare_runs

    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    real_run_one, said = compare_runs.run_one, []

    def crashes_for_kd(config, registry, teacher_file):
        if config.methods == ["kd"]:
            raise RuntimeError("a third-party plugin's bug\nwith a traceback below")
        return real_run_one(config, registry, teacher_file)

    monkeypatch.setattr(compare_runs, "run_one", crashes_for_kd)
    report = compare_module.compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append)
    assert report["failed"] == {"kd": {0: "RuntimeError: a third-party plugin's bug"}}
    assert not (tmp_path / "cmp" / "runs" / "kd-seed0" / "failed.txt").exists()  # not a verdict: retried
    monkeypatch.setattr(compare_runs, "run_one", real_run_one)
    compare_module.compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append)
    summary = tmp_path / "cmp" / "runs" / "kd-seed0" / "summary.json"
    finished = json.loads(summary.read_text())
    summary.write_text(summary.read_text()[:40])  # as if written by a kdzoo that was killed mid-write
    said.clear()
    again = compare_module.compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=said.append)
    assert any("summary.json is damaged" in line and "finishing it again" in line for line in said)
    assert not again["failed"]
    assert json.loads(summary.read_text())["student_top1"] == finished["student_top1"]


def test_the_cost_plot_keeps_the_labels_of_methods_of_like_cost_apart():
    from kdzoo.tools.leaderboard_plots import _pyplot, spread_labels

    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.set_xlim(0.8, 4.4)
    ax.set_ylim(74, 82)
    points = [(1.2, 78.0, "a"), (1.3, 78.05, "b"), (1.25, 77.98, "c"), (4.2, 78.0, "far")]
    heights = spread_labels(points, ax)
    plt.close(fig)
    gap = 8 / 38
    close = sorted(heights[:3])
    assert all(b - a >= gap - 1e-9 for a, b in zip(close, close[1:], strict=False))  # stacked apart
    assert sum(heights[:3]) / 3 == pytest.approx((78.0 + 78.05 + 77.98) / 3)  # centred on their points
    assert heights[3] == 78.0  # alone in its column: at its point


def test_the_cost_plot_turns_logarithmic_when_one_schedule_costs_many_times_the_others(tmp_path, monkeypatch):
    """SSKD's 60 head epochs cost 27x scratch: on a linear axis every other method would share its first tenth."""
    from matplotlib.figure import Figure

    from kdzoo.tools.leaderboard_plots import plot_accuracy_vs_cost

    scales = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *_a, **_k: scales.append(fig.axes[0].get_xscale()))

    def row(method, cost, top1):
        return {"method": method, "cost_vs_scratch": cost, "last_top1_mean": top1, "last_top1_std": 0.5, "seeds": 3}

    near = [row("scratch", 1.0, 78.0), row("kd", 1.6, 79.0), row("ft", 5.4, 81.5)]
    plot_accuracy_vs_cost(near, tmp_path / "near.png")
    plot_accuracy_vs_cost([*near, row("sskd", 27.2, 78.9)], tmp_path / "far.png")
    assert scales == ["linear", "log"]


def test_the_cost_plot_keeps_a_method_far_below_the_others_on_its_edge_with_its_value(tmp_path, monkeypatch):
    """SimKD's 46% among 76-82% would squeeze every other method into a sliver of the accuracy axis."""
    from matplotlib.figure import Figure

    from kdzoo.tools.leaderboard_plots import accuracy_range, plot_accuracy_vs_cost

    def row(method, top1, std=0.5):
        return {"method": method, "cost_vs_scratch": 1.5, "last_top1_mean": top1, "last_top1_std": std, "seeds": 3}

    rows = [row("scratch", 78.5), row("srd", 82.3, 0.3), row("kd", 79.0), row("crd", 76.0, 0.9), row("at", 77.6)]
    low, high = accuracy_range(rows)
    assert low < 76.0 - 0.9 and high > 82.3 + 0.3  # every mean and its spread on the axis
    assert high - low < 10
    assert accuracy_range([*rows, row("simkd", 45.9, 6.3)]) == (low, high)  # the far one does not stretch it
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *_a, **_k: drawn.append(fig.axes[0]))
    plot_accuracy_vs_cost([*rows, row("simkd", 45.9, 6.3)], tmp_path / "plot.png")
    (ax,) = drawn
    assert ax.get_ylim() == pytest.approx((low, high))
    labels = [text.get_text() for text in ax.texts]
    assert "simkd (45.9, off the axis)" in labels and "crd" in labels


def test_the_teacher_row_is_the_shared_teacher_never_one_a_method_made(tmp_path):
    """Born-again hands each generation over as the teacher; the report's teacher stays the one compare
    gave every run, and the best epoch, like the curves, is of the last stage (not generation 0's)."""
    from kdzoo.tools.compare import compare, resolve_methods

    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    report = compare(["self-distill"], [], sets, [0], tmp_path / "cmp", load_registry(), echo=lambda _: None)
    summary = json.loads((tmp_path / "cmp" / "runs" / "self-distill-seed0" / "summary.json").read_text())
    assert summary["teacher"] == "test_resnet (gen1)"
    assert report["teacher_top1"] == pytest.approx(report["teacher_training"]["curve"][-1])
    assert summary["teacher_top1"] != report["teacher_top1"]  # generation 1 scored otherwise
    records = [json.loads(line) for line in (tmp_path / "cmp" / "runs" / "self-distill-seed0" / "metrics.jsonl").open()]
    (row,) = [r for r in report["rows"] if r["method"] == "self-distill"]
    assert row["best_top1_mean"] == max(r["val"]["top1"] for r in records if r["stage"] == "gen2")
    assert resolve_methods(["kd", "at", "kd"], load_registry()) == ["kd", "at"]  # a method named twice: one row


def test_report_only_reports_the_runs_so_far_and_trains_nothing(tmp_path):
    from kdzoo import KdzooError
    from kdzoo.tools.compare import compare

    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    out, said = tmp_path / "cmp", []
    untrained = [*sets, "teacher.train.seed=7"]  # a teacher no test has trained
    with pytest.raises(KdzooError, match="not trained yet"):
        compare(["kd"], [], untrained, [0], out, load_registry(), echo=said.append, train=False)
    with pytest.raises(KdzooError, match="--report-only"):
        compare(["kd"], [], sets, [0], out, load_registry(), echo=said.append, deploy=True, train=False)
    compare(["kd"], [], sets, [0], out, load_registry(), echo=said.append)
    said.clear()
    report = compare(["kd"], [], sets, [0, 1], out, load_registry(), echo=said.append, train=False)
    assert not any("training" in line for line in said) and not (out / "runs" / "kd-seed1").exists()
    assert report["pending"] == {"scratch": [1], "kd": [1]}
    table = (out / "results.md").read_text()
    assert "| kd | 1 of 2 † |" in table and "## Runs not finished yet" in table and "| kd | 1 |" in table
    assert "--report-only" in table  # the command that wrote it


def test_report_only_fills_no_teacher_output_cache(tmp_path):
    import os
    from pathlib import Path

    from kdzoo.tools.compare import compare

    pair = ["teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    sets = [*TINY, *pair, "teacher.cache=true", "data.augment=false"]
    out, said = tmp_path / "cmp", []
    compare(["kd"], [], sets, [0], out, load_registry(), echo=said.append)  # fills kd's entry (the logits)
    cache = Path(os.environ["KDZOO_CACHE"])
    before = sorted(p for p in cache.rglob("*") if p.is_file())
    report = compare(["kd", "at"], [], sets, [0], out, load_registry(), echo=said.append, train=False)
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == before  # at's feature maps never computed
    assert report["pending"] == {"at": [0]}


def test_the_applicability_check_reads_the_data_once_for_every_method(tmp_path, monkeypatch):
    """The teacher and each method's check (a build of its run) share one read of the dataset, which was
    most of a comparison's start when every check read it again."""
    from kdzoo.data import datasets
    from kdzoo.tools.compare import compare

    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    compare(["kd"], [], sets, [0], tmp_path / "cmp", load_registry(), lambda _: None)  # the teacher, scratch, kd
    reads, said = [], []
    read = datasets.DATASETS["synthetic"]
    monkeypatch.setitem(datasets.DATASETS, "synthetic", lambda *a: reads.append(a) or read(*a))
    compare(["kd", "at", "rkd"], [], sets, [0], tmp_path / "cmp", load_registry(), said.append, train=False)
    assert len(reads) == 1  # a report trains nothing: the teacher's load and the three checks read it once
    assert not any("does not apply" in line for line in said) and sum("not finished yet" in x for x in said) == 2
