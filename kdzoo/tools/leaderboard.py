"""The leaderboard ``kdzoo compare`` writes: every method ranked against scratch, with its spread over
seeds, its training cost relative to scratch, the methods that could not run on the pair (and why),
and the deployed trade-off (its plots: :mod:`kdzoo.tools.leaderboard_plots`).

Files: ``results.md``, ``results.csv``, ``results.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_text_atomic
from kdzoo.errors import KdzooError

SCRATCH = "scratch"
#: a method is marked when its mean is further from scratch's than this many of scratch's standard deviations
MARK_SIGMAS = 2.0
#: timings of the same work that varied more than this factor make a figure drawn from them no measured fact:
#: most methods cost 1.0x to 1.6x scratch, so a ratio that could be off by half cannot tell them apart
SPREAD_LIMIT = 1.5
UNSTEADY, UNMEASURED = "‡", "?"  # the marks of a timed figure whose spread was too wide, or not measurable


@dataclasses.dataclass
class RunResult:
    method: str
    seed: int
    last_top1: float
    best_top1: float
    wall_time_s: float
    curve: list[float]
    cpu_time_s: float | None = None  # None for runs written before kdzoo recorded it
    label_share: list[float] = dataclasses.field(default_factory=list)  # the CE's share of the loss, per epoch
    epoch_times_s: list[list[float]] = dataclasses.field(default_factory=list)  # wall seconds per epoch, per stage


@dataclasses.dataclass(frozen=True)
class Spread:
    """How far timings of the same work varied: largest over smallest (1.0: they agreed), and what they were.
    ``factor`` is None when nothing timed the same work twice (one run of at most two epochs per stage)."""

    factor: float | None
    what: str = ""


@dataclasses.dataclass(frozen=True)
class CostCheck:
    """Whether a cost ratio (a method's cost over scratch's) can be trusted: ``spread`` is how far the timings
    it divides varied (both sides' spreads multiplied: None when either is unmeasured); ``mark`` and ``note``
    say why not, empty when it can."""

    spread: float | None
    mark: str = ""
    note: str = ""


def spread_factor(values: list[float]) -> float | None:
    """Largest over smallest of timings of the same work; None for fewer than two (or a zero, unmeasurable)."""
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) / min(values)


def timing_spread(runs: list[RunResult], basis: str) -> Spread:
    """How steady the machine was while a method's runs trained, from two measurements of the same work:
    its runs' costs (the seeds do the same work) and the wall times of like epochs within each run (a
    stage's first epoch is left out: it also pays for warm-up, allocations and compilation). The wider
    one counts; wall times move more under load than CPU times, so this errs towards flagging."""
    unit = "CPU s" if basis == "cpu" else "s"
    costs = [(r.cpu_time_s if basis == "cpu" else r.wall_time_s) or 0.0 for r in runs]
    found = []
    if (across := spread_factor(costs)) is not None:
        found.append(Spread(across, f"its {len(runs)} runs took {min(costs):.2f} to {max(costs):.2f} {unit}"))
    for run in runs:
        for times in run.epoch_times_s:
            if (within := spread_factor(times[1:])) is not None:
                what = f"like epochs of one run took {min(times[1:]):.3g} to {max(times[1:]):.3g} s"
                found.append(Spread(within, what))
    return max(found, key=lambda s: s.factor or 0.0, default=Spread(None))


def cost_check(method: str, mine: Spread, scratch: Spread) -> CostCheck:
    """Whether ``method``'s cost over scratch's is a measured fact (see :class:`CostCheck`). Scratch's own
    ratio is 1 by definition."""
    if method == SCRATCH:
        return CostCheck(1.0)
    if mine.factor is None or scratch.factor is None:
        who = " and ".join(m for m, s in ((method, mine), (SCRATCH, scratch)) if s.factor is None)
        return CostCheck(None, UNMEASURED, f"{method}: nothing timed the same work twice ({who})")
    spread = mine.factor * scratch.factor
    if spread <= SPREAD_LIMIT:
        return CostCheck(spread)
    note = (
        f"{method}: its timings varied {mine.factor:.1f}x ({mine.what}), scratch's {scratch.factor:.1f}x "
        f"({scratch.what}): the ratio could be off {spread:.1f}x"
    )
    return CostCheck(spread, UNSTEADY, note)


def threads_text(count: int) -> str:
    return f"{count} thread" + ("s" if count != 1 else "")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; ``None`` for one value (its spread is unknown, not 0)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cost(runs: list[RunResult]) -> tuple[float, str]:
    """Mean training cost: CPU seconds when every run has them (other jobs on the machine barely change
    them), wall seconds otherwise."""
    if all(r.cpu_time_s is not None for r in runs):
        return statistics.fmean(r.cpu_time_s for r in runs), "cpu"
    return statistics.fmean(r.wall_time_s for r in runs), "wall"


def _runs_of(results: list[RunResult], method: str) -> list[RunResult]:
    return [r for r in results if r.method == method]


def summarise(results: list[RunResult], order: list[str], teacher_top1: float | None) -> dict[str, Any]:
    """One row per method that ran, ranked by mean last-epoch top-1 (scratch among them)."""
    rows = []
    for method in order:
        mine = _runs_of(results, method)
        if not mine:
            continue
        last_mean, last_std = _mean_std([r.last_top1 for r in mine])
        best_mean, best_std = _mean_std([r.best_top1 for r in mine])
        cost, basis = _cost(mine)
        rows.append(
            {
                "method": method,
                "seeds": len(mine),
                "last_top1_mean": last_mean,
                "last_top1_std": last_std,
                "best_top1_mean": best_mean,
                "best_top1_std": best_std,
                "train_time_s_mean": statistics.fmean(r.wall_time_s for r in mine),
                "cost_s_mean": cost,
                "cost_basis": basis,
                "retained": None if not teacher_top1 else last_mean / teacher_top1,
            }
        )
    scratch = next((r for r in rows if r["method"] == SCRATCH), None)
    if scratch is None:
        raise KdzooError("no run of the student trained from scratch finished: nothing to rank the methods against")
    same_basis = all(r["cost_basis"] == scratch["cost_basis"] for r in rows)
    spreads = {row["method"]: timing_spread(_runs_of(results, row["method"]), row["cost_basis"]) for row in rows}
    for row in rows:
        row["vs_scratch"] = row["last_top1_mean"] - scratch["last_top1_mean"]
        beyond = scratch["seeds"] > 1 and abs(row["vs_scratch"]) > MARK_SIGMAS * scratch["last_top1_std"]
        row["beyond_scratch_spread"] = row["method"] != SCRATCH and beyond
        row["cost_vs_scratch"] = row["cost_s_mean"] / scratch["cost_s_mean"] if same_basis else None
        check = cost_check(row["method"], spreads[row["method"]], spreads[SCRATCH]) if same_basis else CostCheck(None)
        row["cost_spread"], row["cost_mark"], row["cost_note"] = check.spread, check.mark, check.note
    rows.sort(key=lambda r: -r["last_top1_mean"])
    return {"teacher_top1": teacher_top1, "rows": rows}


def _pm(mean: float, std: float, n: int) -> str:
    """mean ± std, or the single value with n = 1 (a standard deviation of one run is not 0)."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f} (n = 1)"


def _marked(row: dict[str, Any]) -> str:
    mark = (" ▲" if row["vs_scratch"] > 0 else " ▼") if row["beyond_scratch_spread"] else ""
    return f"{row['vs_scratch']:+.2f}{mark}"


MIXED_BASES = "seconds ('-': some runs were timed in CPU seconds, others by the clock only; rerun those)"


def _ranking_lines(rows: list[dict[str, Any]], asked: int = 0) -> list[str]:
    """The ranking table; a method with fewer seeds than ``asked`` (or than another method) is marked."""
    most = max(asked, *(row["seeds"] for row in rows))
    lines = [
        "| rank | method | seeds | last-epoch top-1 | best-epoch top-1 | vs scratch (last) | retained (last / teacher) "
        "| training cost (x scratch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(rows, start=1):
        retained = "-" if row["retained"] is None else f"{100 * row['retained']:.1f}%"
        cost = "-" if row["cost_vs_scratch"] is None else f"{row['cost_vs_scratch']:.2f}{_mark(row.get('cost_mark'))}"
        last = _pm(row["last_top1_mean"], row["last_top1_std"], row["seeds"])
        best = _pm(row["best_top1_mean"], row["best_top1_std"], row["seeds"])
        seeds = str(row["seeds"]) if row["seeds"] == most else f"{row['seeds']} of {most} †"
        lines.append(f"| {rank} | {row['method']} | {seeds} | {last} | {best} | {_marked(row)} | {retained} | {cost} |")
    basis = {r["cost_basis"] for r in rows}
    seconds = {"cpu": "CPU seconds of the training process", "wall": "wall-clock seconds"}.get(
        basis.pop() if len(basis) == 1 else "mixed", MIXED_BASES
    )
    scratch_runs = next(r["seeds"] for r in rows if r["method"] == SCRATCH)
    marks = f"▲ / ▼: further from scratch than {MARK_SIGMAS:g} standard deviations of the scratch runs. "
    return [
        *lines,
        "",
        "Ranked by mean last-epoch top-1. Mean ± sample standard deviation over seeds; 'last' is the final epoch,",
        "'best' the best epoch on the validation set (optimistic, shown for papers that report it).",
        f"{marks if scratch_runs > 1 else ''}Training cost:",
        f"mean {seconds} per run (teacher forward, the method's work, the student's step and each epoch's",
        "validation pass) over scratch's; a run on the teacher-output cache is charged the teacher's pass that",
        "filled it. Per-epoch figures and the best epoch follow each run's last stage, which every method runs",
        "for the same epochs (stages before it count in the cost).",
        *(
            ["†: some of its seeds did not finish (see below); its row averages those that did."]
            if any(row["seeds"] < most for row in rows)
            else []
        ),
        *_cost_note_lines(rows),
        "",
    ]


def _mark(mark: str | None) -> str:
    return f" {mark}" if mark else ""


def _cost_note_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Why a cost ratio is marked: the timings it divides varied too much, or nothing measured how much."""
    lines = []
    unsteady = [row["cost_note"] for row in rows if row.get("cost_mark") == UNSTEADY]
    if unsteady:
        lines += [
            f"{UNSTEADY}: not a measured figure: the timings it divides varied more than {SPREAD_LIMIT:g}x (other",
            "work on the machine while they trained?); only runs trained again on a quiet machine measure it:",
            *(f"- {note}" for note in unsteady),
        ]
    unmeasured = [row["method"] for row in rows if row.get("cost_mark") == UNMEASURED]
    if unmeasured:
        lines += [
            f"{UNMEASURED}: nothing measured how far its timings vary (one run of at most two epochs per stage, the",
            "first of which pays for warm-up): no better than the machine was quiet; more seeds or epochs measure it "
            f"({', '.join(unmeasured)}).",
        ]
    return lines


def _mean_curve(runs: list[list[float]]) -> list[float]:
    """The mean over runs, epoch by epoch, as long as the shortest run."""
    length = min(len(c) for c in runs)
    return [statistics.fmean(c[e] for c in runs) for e in range(length)]


def ranking_agreement(results: list[RunResult], rows: list[dict[str, Any]]) -> list[float]:
    """Per epoch, Spearman's rank correlation between the methods' mean accuracy at that epoch and at
    the last: how early the ordering was decided (1.0 from some epoch on: a longer schedule would
    likely not reorder the methods)."""
    methods = [r["method"] for r in rows]
    means = {m: _mean_curve([r.curve for r in results if r.method == m]) for m in methods}
    length = min(len(curve) for curve in means.values())
    final = _ranks([means[m][length - 1] for m in methods])
    return [_spearman(_ranks([means[m][e] for m in methods]), final) for e in range(length)]


def _ranks(values: list[float]) -> list[float]:
    """Ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


TIED_NOTE = ["–: every method had the same top-1 at that epoch (no ordering to compare).", ""]


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(set(a)) == 1 or len(set(b)) == 1:
        return float("nan")
    return statistics.correlation(a, b)


def _settling_lines(results: list[RunResult], rows: list[dict[str, Any]]) -> list[str]:
    if len(rows) < 3:
        return []
    agreement = ranking_agreement(results, rows)
    return [
        "How early the ordering was decided: Spearman's rank correlation between the methods' mean top-1 at each",
        "epoch and at the last epoch:",
        "",
        "| epoch | " + " | ".join(str(e) for e in range(1, len(agreement) + 1)) + " |",
        "|---|" + "---|" * len(agreement),
        "| ρ | " + " | ".join("–" if math.isnan(rho) else f"{rho:.2f}" for rho in agreement) + " |",
        "",
        *(TIED_NOTE if any(math.isnan(rho) for rho in agreement) else []),
    ]


def below_scratch_lines(results: list[RunResult], rows: list[dict[str, Any]]) -> list[str]:
    """For each method below scratch, the evidence from its own runs: its gap to scratch epoch by epoch,
    and how much of its loss the labels were (a distillation term that dominates shows as a small share)."""
    below = [r for r in rows if r["method"] != SCRATCH and r["vs_scratch"] < 0]
    if not below:
        return []
    scratch = _mean_curve([r.curve for r in results if r.method == SCRATCH])
    lines = ["## Below scratch: what the runs' own curves show", ""]
    for row in below:
        mine = [r for r in results if r.method == row["method"]]
        curve = _mean_curve([r.curve for r in mine])
        gaps = " / ".join(f"{c - s:+.1f}" for c, s in zip(curve, scratch, strict=False))
        shares = [r.label_share for r in mine if r.label_share]
        share = _mean_curve(shares) if shares else []
        label = _share_text(share) if share else ""
        spread = "" if row["beyond_scratch_spread"] else ", within scratch's spread"
        lines.append(f"- {row['method']} ({row['vs_scratch']:+.2f}{spread}): gap to scratch per epoch {gaps}{label}.")
    return [*lines, ""]


def _share_text(share: list[float]) -> str:
    if min(share) >= 1.0:  # e.g. AB, FT: the distilling happened in the stages before
        return "; its last stage trains on the labels alone"
    # a distillation term too small to move the loss would read as "100%" when rounded to whole points
    places = 0 if max(share) < 0.995 else 2
    first, last = (f"{100 * s:.{places}f}%" for s in (share[0], share[-1]))
    return f"; the labels' share of its loss: {first} at epoch 1, {last} at the last"


def _wall_time(report: dict[str, Any], results: list[RunResult]) -> str:
    runs = sum(r.wall_time_s for r in results) / 3600
    teacher = (report.get("teacher_training") or {}).get("wall_time_s", 0.0) / 60
    trained = f", plus {teacher:.0f} min for the teacher" if teacher else " (the teacher was given, not trained)"
    return f"{runs:.1f} h of training over {len(results)} runs{trained}"


def _skipped_lines(skipped: dict[str, str], notes: dict[str, str]) -> list[str]:
    lines = []
    if skipped:
        lines += ["## Methods that do not apply to this pair", "", "| method | why it did not run |", "|---|---|"]
        lines += [f"| {method} | {_cell(reason)} |" for method, reason in skipped.items()]
        lines.append("")
    if notes:
        lines += ["Ran differently from the others:", ""]
        lines += [f"- {method}: {note}" for method, note in notes.items()]
        lines.append("")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _failed_lines(failed: dict[str, dict[int, str]]) -> list[str]:
    if not failed:
        return []
    lines = ["## Runs that did not finish", "", "| method | seed | why |", "|---|---|---|"]
    lines += [
        f"| {method} | {seed} | {_cell(why)} |" for method, seeds in failed.items() for seed, why in seeds.items()
    ]
    return [*lines, "", "A method's row above, if any, averages the seeds that finished.", ""]


def _pending_lines(pending: dict[str, list[int]]) -> list[str]:
    if not pending:
        return []
    lines = ["## Runs not finished yet", "", "| method | seeds |", "|---|---|"]
    lines += [f"| {method} | {', '.join(str(seed) for seed in seeds)} |" for method, seeds in pending.items()]
    return [
        *lines,
        "",
        "Written with --report-only while they train; their rows, if any, average the seeds so far.",
        "",
    ]


def _deploy_lines(deploy: dict[str, Any] | None, order: list[str]) -> list[str]:
    """The deployed trade-off of each method's best run: its student in onnxruntime, fp32 and int8."""
    if not deploy:
        return []
    measured = {method: table for method, table in deploy.items() if "error" not in table}
    if not measured:
        return _deploy_failed_lines(deploy)
    any_table = next(iter(measured.values()))
    lines = [
        "## Deployed: each method's best run in onnxruntime",
        "",
        "Each method's best seed by last-epoch top-1, chosen on the validation set that scores it here (its",
        "mean over seeds is in the ranking above).",
        "",
        f"| method (seed) | student fp32: latency, batch 1 | int8: latency | int8 images/s, batch "
        f"{any_table['throughput_batch']} | fp32 / int8 file | fp32 top-1 | int8 top-1 | int8 - fp32 "
        "| int8 / teacher |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    marked = False
    for method in [m for m in order if m in measured]:
        table = measured[method]
        rows = {(r["model"], r["runtime"]): r for r in table["rows"]}
        fp32, int8 = rows[("student", "onnxruntime fp32")], rows[("student", "onnxruntime int8")]
        spreads = (fp32.get("latency_spread"), int8.get("latency_spread"), int8.get("throughput_spread"))
        marked = marked or any(unsteady(spread) for spread in spreads)
        retained = "-" if int8["retained"] is None else f"{100 * int8['retained']:.1f}%"
        lines.append(
            f"| {method} ({table['seed']}) | {fp32['latency_ms']:.2f} ms{unsteady(fp32.get('latency_spread'))} | "
            f"{int8['latency_ms']:.2f} ms{unsteady(int8.get('latency_spread'))} | "
            f"{int8['images_per_s']:.0f}{unsteady(int8.get('throughput_spread'))} | "
            f"{fp32['file_bytes'] / 1e6:.2f} / {int8['file_bytes'] / 1e6:.2f} MB | "
            f"{fp32['top1']:.2f}% | {int8['top1']:.2f}% | {int8['top1'] - fp32['top1']:+.2f} | {retained} |"
        )
    wanted = ("teacher", "onnxruntime fp32")
    teacher = next((r for t in measured.values() for r in t["rows"] if (r["model"], r["runtime"]) == wanted), None)
    if teacher is not None:
        lines += ["", f"Teacher in onnxruntime fp32: {teacher['latency_ms']:.2f} ms at batch 1."]
    threads = threads_text(any_table["threads"])
    lines += ["", f"CPU, {threads}; every run's whole table is in its summary.json ('deploy').", ""]
    if marked:
        lines += [UNSTEADY_TIMING, ""]
    return lines + _deploy_failed_lines(deploy)


UNSTEADY_TIMING = (
    f"{UNSTEADY}: not a measured figure: its repeated timings varied more than {SPREAD_LIMIT:g}x (upper over lower "
    "quartile): the machine was busy; measure it again on a quiet one."
)


def _deploy_failed_lines(deploy: dict[str, Any]) -> list[str]:
    failed = {method: table for method, table in deploy.items() if "error" in table}
    if not failed:
        return []
    lines = ["Not deployed (the export or its check failed):", ""]
    lines += [f"- {method} (seed {table['seed']}): {table['error']}" for method, table in failed.items()]
    return [*lines, ""]


def unsteady(spread: float | None) -> str:
    """The mark of a timed figure whose repeated measurements spread more than :data:`SPREAD_LIMIT` ('' when
    none was recorded: a table from before kdzoo measured it)."""
    return f" {UNSTEADY}" if spread is not None and spread > SPREAD_LIMIT else ""


def _speedup_lines(costs: dict[str, Any]) -> list[str]:
    """The measured speed-up, marked and explained when the teacher and student's latencies, timed in
    interleaved rounds, gave per-round ratios too far apart to be one figure."""
    text = f"{costs['speedup']:.1f}x measured speed-up{unsteady(costs.get('speedup_spread'))}."
    low, high = costs.get("speedup_range") or (costs["speedup"], costs["speedup"])
    marked = any(unsteady(c) for c in (costs.get("speedup_spread"), *(costs[r].get("latency_spread") for r in ROLES)))
    if not marked:
        return [text]
    return [
        text,
        "",
        f"{UNSTEADY}: not a measured figure: its timings varied more than {SPREAD_LIMIT:g}x (middle half of the "
        f"repeats; the speed-up per round ranged {low:.1f}x to {high:.1f}x over {costs.get('latency_rounds', 1)} "
        "interleaved rounds): the machine was busy; `kdzoo compare --report-only` on a quiet one measures it again.",
    ]


ROLES = ("teacher", "student")


def _costs_lines(costs: dict[str, Any]) -> list[str]:
    t, s = costs["teacher"], costs["student"]
    speedup, *why = _speedup_lines(costs)
    return [
        "## Teacher / student trade-off",
        "",
        "| | model | parameters | FLOPs / image | CPU latency / image (batch 1) |",
        "|---|---|---|---|---|",
        *(
            f"| {role} | {c['model']} | {c['params'] / 1e6:.3f} M | {c['flops'] / 1e6:.1f} M | "
            f"{c['latency_ms']:.2f} ms{unsteady(c.get('latency_spread'))} |"
            for role, c in (("teacher", t), ("student", s))
        ),
        *(
            f"| {d['network']} | {s['model']} + {method}'s modules | {d['params'] / 1e6:.3f} M | "
            f"{d['flops'] / 1e6:.1f} M | - |"
            for method, d in costs.get("deployed", {}).items()
        ),
        "",
        f"Compression {costs['compression']:.1f}x in parameters, {costs['flops_ratio']:.1f}x in FLOPs, " + speedup,
        *why,
        "",
    ]


def write_report(report: dict[str, Any], results: list[RunResult], out: Path) -> None:
    rows, costs, info = report["rows"], report["models"], report["meta"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(table.getvalue(), out / "results.csv")
    everything = {**report, "runs": [dataclasses.asdict(r) for r in results]}
    write_text_atomic(json.dumps(everything, indent=2), out / "results.json")
    teacher_top1 = report["teacher_top1"]
    teacher_curve = (report.get("teacher_training") or {}).get("curve", [])
    lines = [
        f"# kdzoo compare: {costs['teacher']['model']} -> {costs['student']['model']}",
        "",
        f"Teacher top-1: {teacher_top1:.2f}%" if teacher_top1 else "Teacher: none",
        *(
            [f"(trained by kdzoo for {len(teacher_curve)} epochs: ![teacher's accuracy per epoch](teacher.png))"]
            if teacher_curve
            else []
        ),
        "",
        *_ranking_lines(rows, report.get("seeds_asked", 0)),
        *_settling_lines(results, rows),
        *below_scratch_lines(results, rows),
        *_skipped_lines(report.get("skipped", {}), report.get("notes", {})),
        *_failed_lines(report.get("failed", {})),
        *_pending_lines(report.get("pending", {})),
        *_costs_lines(costs),
        *_deploy_lines(report.get("deploy"), [r["method"] for r in rows]),
        "## How this was made",
        "",
        f"- command: `{info['command']}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        f"- hardware: {info['hardware']}",
        f"- wall time: {_wall_time(report, results)}",
        "",
        "![accuracy per epoch](results.png)",
        "",
        "![accuracy against training cost](accuracy_vs_cost.png)",
    ]
    write_text_atomic("\n".join(lines) + "\n", out / "results.md")
