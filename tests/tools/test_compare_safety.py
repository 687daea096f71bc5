"""``kdzoo compare`` and ``kdzoo plot`` never replace or delete a run, end a damaged file in one line, draw
short runs visibly, and mark a timed figure whose measurements spread too far to be one."""

import json

import pytest
from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.config import load_config
from kdzoo.errors import KdzooError
from kdzoo.registry import load_registry
from kdzoo.tools.leaderboard import RunResult
from tests.helpers import TINY

SETS = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]


def _config(*extra, methods=("kd",)):
    return load_config([], [*SETS, *extra], list(methods), load_registry().config_classes())


# ---------------------------------------------------------------- one folder per comparison config


def test_a_comparison_of_another_config_gets_its_own_default_folder():
    from kdzoo.tools.compare import default_folder

    digits = default_folder(_config())
    assert digits.parent.name == "runs" and digits.name.startswith("compare-test_resnet-")
    assert default_folder(_config("data.train_limit=32")) != digits  # other data: another folder
    assert default_folder(_config("teacher.train.epochs=2")) != digits  # another teacher
    assert default_folder(_config("train.epochs=2")) != digits  # another schedule
    # more methods, other seeds or another method's settings: the same comparison, its finished runs reused
    assert default_folder(_config(methods=("at", "kd"))) == digits
    assert default_folder(_config("train.seed=5")) == digits
    assert default_folder(_config("kd.temperature=2")) == digits


def test_a_folder_holding_a_comparison_of_another_config_is_refused_in_one_line_naming_the_difference(tmp_path):
    from kdzoo.tools.compare import COMPARISON, claim_folder

    out = tmp_path / "cmp"
    claim_folder(out, _config())
    claim_folder(out, _config("train.seed=3", "train.out_dir=elsewhere", methods=("at",)))  # the same comparison
    with pytest.raises(KdzooError) as refused:
        claim_folder(out, _config("data.train_limit=32"))
    line = str(refused.value)
    assert "\n" not in line and str(out) in line and "data.train_limit (64 -> 32)" in line and "--out" in line
    (out / COMPARISON).write_text('{"config": {"data"')  # a record cut short
    with pytest.raises(KdzooError, match=r"comparison.json is damaged \(not JSON.*\); choose another --out"):
        claim_folder(out, _config())


def test_compare_refuses_another_config_in_a_folder_before_training_anything(tmp_path):
    out = tmp_path / "cmp"

    def compare(*sets):
        args = ["compare", "--methods", "kd", "--seeds", "1", "--out", str(out)]
        return CliRunner().invoke(main, [*args, *[a for s in [*SETS, *sets] for a in ("--set", s)]])

    assert compare().exit_code == 0
    results = (out / "results.md").read_text()
    second = compare("data.train_limit=32")
    assert second.exit_code != 0 and "training" not in second.output
    assert second.output.strip().splitlines()[-1].startswith("Error: ") and "data.train_limit" in second.output
    assert (out / "results.md").read_text() == results  # the first comparison's report stands


# ---------------------------------------------------------------- runs are moved aside, never deleted


def test_a_run_of_a_foreign_or_unreadable_config_is_moved_aside_and_a_damaged_record_finished_again(tmp_path):
    from kdzoo.tools.compare import compare

    out, said = tmp_path / "cmp", []
    compare(["kd", "at"], [], SETS, [0], out, load_registry(), echo=said.append)
    runs = out / "runs"
    kd_summary = (runs / "kd-seed0" / "summary.json").read_text()
    (runs / "kd-seed0" / "config.json").write_text("{not json")
    foreign = json.loads((runs / "at-seed0" / "config.json").read_text())
    foreign["train"]["knob_of_a_later_kdzoo"] = 1  # written by another kdzoo version
    (runs / "at-seed0" / "config.json").write_text(json.dumps(foreign))

    said.clear()  # a report that trains nothing leaves them where they are
    report = compare(["kd", "at"], [], SETS, [0], out, load_registry(), echo=said.append, train=False)
    assert report["pending"] == {"kd": [0], "at": [0]}
    assert any(
        "kd seed 0: its config.json is unreadable (not JSON" in line and "not in this report" in line for line in said
    )
    assert any("at seed 0: its config.json is not one this kdzoo reads" in line for line in said)
    assert (runs / "kd-seed0" / "summary.json").read_text() == kd_summary and not (out / "set-aside").exists()

    with (runs / "scratch-seed0" / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "train", "stage_ind')  # a line cut short by a kill
    said.clear()
    report = compare(["kd", "at"], [], SETS, [0], out, load_registry(), echo=said.append)
    assert not report["failed"] and not report["pending"]
    aside = out / "set-aside"
    assert any(
        "kd seed 0: its config.json is unreadable" in line and f"moved it to {aside / 'kd-seed0'}" in line
        for line in said
    )
    assert any(f"moved it to {aside / 'at-seed0'} and training it again" in line for line in said)
    assert (aside / "kd-seed0" / "summary.json").read_text() == kd_summary  # kept whole
    assert (aside / "at-seed0" / "student.safetensors").is_file() and (runs / "kd-seed0" / "summary.json").is_file()
    assert any("scratch seed 0: its metrics.jsonl is damaged (line 2 is not JSON" in line for line in said)
    assert any("finishing it again from its last checkpoint" in line for line in said)
    assert len((runs / "scratch-seed0" / "metrics.jsonl").read_text().splitlines()) == 1  # rewritten whole


def test_a_run_of_a_changed_method_setting_is_moved_aside_with_the_difference_named(tmp_path):
    from kdzoo.tools.compare import compare

    out, said = tmp_path / "cmp", []
    compare(["kd"], [], SETS, [0], out, load_registry(), echo=said.append)
    said.clear()
    compare(["kd"], [], [*SETS, "kd.temperature=2"], [0], out, load_registry(), echo=said.append)
    assert any("kd seed 0: it ran with another config: kd.temperature (4.0 -> 2.0); moved it to" in x for x in said)
    assert any("scratch seed 0: done before, skipped" in line for line in said)  # the shared runs are kept
    assert json.loads((out / "set-aside" / "kd-seed0" / "config.json").read_text())["kd"]["temperature"] == 4.0


def test_a_summary_without_its_numbers_reads_as_damaged(tmp_path):
    from kdzoo.reporting.metrics_file import DamagedFile
    from kdzoo.tools.compare_runs import read_finished

    (tmp_path / "summary.json").write_text(json.dumps({"student_top1": "high", "wall_time_s": 1.0}))
    with pytest.raises(DamagedFile, match="no student_top1"):
        read_finished(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"student_top1": 9.0, "wall_time_s": 1.0}))
    with pytest.raises(DamagedFile, match="metrics.jsonl is damaged \\(missing or empty\\)"):
        read_finished(tmp_path)


def test_a_damaged_teacher_record_costs_the_report_its_teacher_curve_not_the_comparison():
    from kdzoo.engine.teacher_files import teacher_cache_dir
    from kdzoo.tools.compare_runs import teacher_training

    config, said = _config(), []
    metrics = teacher_cache_dir(config, None) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_bytes(b"\xff\xfe garbage")
    assert teacher_training(config, None, said.append) == {"curve": [], "wall_time_s": 0.0}
    assert said == [
        f"teacher: {metrics} is damaged (not UTF-8 text); the report goes without the teacher's curve "
        "(delete the file to silence this)"
    ]


def test_the_runs_train_seed_by_seed_so_a_busy_spell_falls_on_every_method_alike(tmp_path):
    from kdzoo.tools.compare_runs import run_configs

    configs = run_configs(["kd", "at"], [], SETS, [0, 1], tmp_path, load_registry())
    assert list(configs) == [("scratch", 0), ("kd", 0), ("at", 0), ("scratch", 1), ("kd", 1), ("at", 1)]


# ---------------------------------------------------------------- plot: damaged files in one line


def _run_dir(tmp_path, records, summary=None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (run / "summary.json").write_text(summary)
    return run


def _record(stage_index, epoch, global_epoch, stage="train", top1=50.0):
    train = {"loss": 2.0 / global_epoch, "ce": 1.5 / global_epoch, "images_per_s": 100.0}
    return {
        "stage": stage,
        "stage_index": stage_index,
        "epoch": epoch,
        "global_epoch": global_epoch,
        "train": train,
        "val": {"top1": top1 + global_epoch, "top5": 90.0},
        "epoch_time_s": 0.5,
    }


@pytest.mark.parametrize(
    ("damage", "file", "why"),
    [
        (lambda run: (run / "metrics.jsonl").open("a").write('{"stage": "tr'), "metrics.jsonl", "line 2 is not JSON"),
        (lambda run: (run / "metrics.jsonl").open("a").write('{"stage": "x"}\n'), "metrics.jsonl", "line 2 has no"),
        (lambda run: (run / "metrics.jsonl").write_bytes(b"\x80\x81\n"), "metrics.jsonl", "not UTF-8 text"),
        (lambda run: (run / "summary.json").write_text(""), "summary.json", "empty"),
        (lambda run: (run / "summary.json").write_text("[1, 2]"), "summary.json", "not a JSON object"),
        (lambda run: (run / "summary.json").write_text('{"student": "x"'), "summary.json", "not JSON"),
    ],
)
def test_plot_of_a_damaged_file_is_one_line_naming_the_file_and_what_to_do(tmp_path, damage, file, why):
    run = _run_dir(tmp_path, [_record(0, 1, 1)])
    damage(run)
    result = CliRunner().invoke(main, ["plot", str(run)])
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {run / file} is damaged (") and why in line
    assert f"`kdzoo run --resume {run}` writes both again" in line


# ---------------------------------------------------------------- plots of short runs


def _captured(monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *_a, **_k: drawn.append(fig))
    return drawn


def test_a_two_stage_plot_breaks_its_lines_between_the_stages_and_marks_a_one_epoch_stage(tmp_path, monkeypatch):
    from kdzoo.reporting.plots import plot_run

    records = [_record(0, 1, 1, "init"), _record(0, 2, 2, "init"), _record(1, 1, 3, "train")]
    run = _run_dir(tmp_path, records, json.dumps({"methods": ["ab"], "student": "s"}))
    drawn = _captured(monkeypatch)
    plot_run(run)
    loss, accuracy = (fig.axes[0] for fig in drawn)
    for ax, terms in ((loss, 2), (accuracy, 2)):  # ce and loss; top-1 and top-5
        curves = [line for line in ax.get_lines() if line.get_linestyle() != ":"]  # not the stage boundary
        assert sorted(list(line.get_xdata()) for line in curves) == [[1, 2]] * terms + [[3]] * terms  # stages apart
        assert all(line.get_marker() == "o" for line in curves)  # the one-epoch stage is a visible point
        # drawn term by term, stage by stage: one term keeps its colour across the stages
        assert curves[0].get_color() == curves[1].get_color() != curves[2].get_color()
    assert sorted(text.get_text() for text in loss.get_legend().get_texts()) == ["ce", "loss"]  # one entry per term


def test_a_one_or_two_epoch_comparison_draws_each_method_as_visible_points(tmp_path, monkeypatch):
    from kdzoo.tools.leaderboard import summarise
    from kdzoo.tools.leaderboard_plots import plot_curves, zoom_start

    assert [zoom_start(n) for n in (1, 2, 3, 12)] == [0, 0, 1, 6]  # at least two epochs zoomed where there are
    for epochs in (1, 2):
        results = [
            RunResult(m, s, 50.0 + s, 50.0 + s, 1.0, [40.0 + e + s for e in range(epochs)])
            for m in ("scratch", "kd")
            for s in (0, 1)
        ]
        rows = summarise(results, ["scratch", "kd"], 90.0)["rows"]
        drawn = _captured(monkeypatch)
        plot_curves(results, rows, 90.0, tmp_path / "results.png")
        whole, end = drawn[-1].axes
        for ax in (whole, end):
            methods = [
                line
                for line in ax.get_lines()
                if line.get_marker() != "_"  # the error bars' caps, which short curves get instead of a band
                and not line.get_label().startswith("teacher")
            ]
            assert len(methods) == 2 and all(line.get_marker() == "o" for line in methods)
        assert end.get_xlim()[0] < 1 and end.get_xlim()[1] >= epochs  # every epoch inside the zoom


# ---------------------------------------------------------------- timed figures: their spread measured


def _runs(method, costs, epoch_times=()):
    """Runs of ``method`` that took ``costs`` seconds (CPU and wall alike), each with ``epoch_times`` per stage."""
    return [
        RunResult(method, seed, 80.0, 80.0, cost, [70.0, 80.0], cost, [], list(epoch_times))
        for seed, cost in enumerate(costs)
    ]


def test_a_cost_ratio_from_timings_that_varied_widely_is_marked_and_explained():
    from kdzoo.tools.leaderboard import _ranking_lines, summarise
    from kdzoo.tools.leaderboard_plots import _label

    # identical 1-epoch runs of AT took 1.2 and 20.8 CPU s on a busy machine
    results = [*_runs("scratch", [10.0, 10.4]), *_runs("at", [1.2, 20.8]), *_runs("kd", [11.0, 11.3])]
    rows = {r["method"]: r for r in summarise(results, ["scratch", "at", "kd"], 90.0)["rows"]}
    assert rows["at"]["cost_mark"] == "‡" and rows["at"]["cost_spread"] == pytest.approx(20.8 / 1.2 * 10.4 / 10.0)
    assert "its 2 runs took 1.20 to 20.80 CPU s" in rows["at"]["cost_note"]
    assert rows["kd"]["cost_mark"] == "" and rows["scratch"]["cost_mark"] == ""  # steady: a measured figure
    table = "\n".join(_ranking_lines(list(rows.values())))
    assert f"| {rows['at']['cost_vs_scratch']:.2f} ‡ |" in table and f"| {rows['kd']['cost_vs_scratch']:.2f} |" in table
    assert "‡: not a measured figure: the timings it divides varied more than 1.5x" in table
    assert "- at: its timings varied 17.3x (its 2 runs took 1.20 to 20.80 CPU s)" in table
    assert _label(rows["at"], 0, 100) == "at (cost ‡)" and _label(rows["kd"], 0, 100) == "kd"


def test_a_cost_ratio_is_checked_against_like_epochs_within_a_run_and_marked_when_nothing_measured_it():
    from kdzoo.tools.leaderboard import _ranking_lines, summarise

    steady = [[3.0, 1.0, 1.05, 1.02]]  # the first epoch pays for warm-up: left out
    one_run = [*_runs("scratch", [10.0], steady), *_runs("kd", [12.0], steady)]
    rows = {r["method"]: r for r in summarise(one_run, ["scratch", "kd"], 90.0)["rows"]}
    assert rows["kd"]["cost_mark"] == "" and rows["kd"]["cost_spread"] == pytest.approx(1.05**2)
    jumpy = [*_runs("scratch", [10.0], steady), *_runs("kd", [12.0], [[1.0, 1.0, 5.0, 1.0]])]
    rows = {r["method"]: r for r in summarise(jumpy, ["scratch", "kd"], 90.0)["rows"]}
    assert rows["kd"]["cost_mark"] == "‡" and "like epochs of one run took 1 to 5 s" in rows["kd"]["cost_note"]
    unmeasured = [*_runs("scratch", [10.0], [[1.0]]), *_runs("kd", [12.0], [[1.0, 1.1]])]
    rows = summarise(unmeasured, ["scratch", "kd"], 90.0)["rows"]
    kd = next(r for r in rows if r["method"] == "kd")
    assert kd["cost_mark"] == "?" and "kd and scratch" in kd["cost_note"]
    table = "\n".join(_ranking_lines(rows))
    assert f"| {kd['cost_vs_scratch']:.2f} ? |" in table and "?: nothing measured how far its timings vary" in table


def test_a_speed_up_whose_interleaved_rounds_disagree_is_marked_with_its_range():
    from kdzoo.tools.compare_costs import speedup_figures
    from kdzoo.tools.leaderboard import _costs_lines
    from kdzoo.tools.timing import Measured

    def costs(teacher_ms, student_ms):
        t, s = Measured(teacher_ms), Measured(student_ms)
        models = {
            role: {"model": role, "params": 1e6, "flops": 1e6, "latency_ms": m.median, "latency_spread": m.spread}
            for role, m in (("teacher", t), ("student", s))
        }
        return {**models, "compression": 2.0, "flops_ratio": 2.0, **speedup_figures(t, s)}

    quiet = costs([5.0, 5.1, 5.0, 4.9, 5.0, 5.1], [1.0, 1.0, 1.02, 0.98, 1.0, 1.0])
    assert quiet["speedup"] == pytest.approx(5.0, rel=0.03) and quiet["latency_rounds"] == 6
    assert "5.0x measured speed-up." in "\n".join(_costs_lines(quiet)) and "‡" not in "\n".join(_costs_lines(quiet))
    # a busy machine: the teacher's rounds caught other work, the student's did not
    busy = costs([5.0, 90.0, 5.0, 180.0, 60.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    text = "\n".join(_costs_lines(busy))
    assert "measured speed-up ‡." in text and "| 5" not in text.split("Compression")[0].split("teacher |")[0]
    assert "ranged 5.0x to 180.0x over 6 interleaved rounds" in text and "ms ‡ |" in text
    assert Measured([1.0]).spread is None and Measured([2.0, 2.0, 2.0, 2.0]).spread == 1.0


def test_a_deploy_table_marks_a_latency_whose_repeats_spread_too_far():
    from kdzoo.tools.tradeoff import format_deploy_table

    def row(runtime, spread):
        return {
            "model": "student",
            "runtime": runtime,
            "params": 1e6,
            "flops": 1e6,
            "file_bytes": 1e6,
            "latency_ms": 1.0,
            "latency_spread": spread,
            "images_per_s": 100.0,
            "top1": 80.0,
            "retained": None,
        }

    table = {"threads": 1, "throughput_batch": 64, "repeats": 20, "rows": [row("pytorch eager", 1.1)]}
    assert "‡" not in "\n".join(format_deploy_table(table))
    table["rows"].append(row("onnxruntime fp32", 3.0))
    lines = format_deploy_table(table)
    assert "| 1.00 ms ‡ |" in lines[3] and "| 1.00 ms |" in lines[2]
    assert lines[-1].startswith("‡: not a measured figure: its repeated timings varied more than 1.5x")
    older = {**table, "rows": [{k: v for k, v in r.items() if k != "latency_spread"} for r in table["rows"]]}
    assert "‡" not in "\n".join(format_deploy_table(older))  # a table from before kdzoo measured it: no claim
