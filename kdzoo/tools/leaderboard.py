"""The leaderboard ``kdzoo compare`` writes: every method ranked against scratch, with its spread over
seeds, its training cost relative to scratch, the methods that could not run on the pair (and why),
the deployed trade-off, and two plots (accuracy per epoch; accuracy against training cost).

Files: ``results.md``, ``results.csv``, ``results.json``, ``results.png``, ``accuracy_vs_cost.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from kdzoo.errors import KdzooError

SCRATCH = "scratch"
#: a method is marked when its mean is further from scratch's than this many of scratch's standard deviations
MARK_SIGMAS = 2.0


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


def summarise(results: list[RunResult], order: list[str], teacher_top1: float | None) -> dict[str, Any]:
    """One row per method that ran, ranked by mean last-epoch top-1 (scratch among them)."""
    rows = []
    for method in order:
        mine = [r for r in results if r.method == method]
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
    for row in rows:
        row["vs_scratch"] = row["last_top1_mean"] - scratch["last_top1_mean"]
        beyond = scratch["seeds"] > 1 and abs(row["vs_scratch"]) > MARK_SIGMAS * scratch["last_top1_std"]
        row["beyond_scratch_spread"] = row["method"] != SCRATCH and beyond
        row["cost_vs_scratch"] = row["cost_s_mean"] / scratch["cost_s_mean"] if same_basis else None
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
        cost = "-" if row["cost_vs_scratch"] is None else f"{row['cost_vs_scratch']:.2f}"
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
        "",
    ]


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
    for method in [m for m in order if m in measured]:
        table = measured[method]
        rows = {(r["model"], r["runtime"]): r for r in table["rows"]}
        fp32, int8 = rows[("student", "onnxruntime fp32")], rows[("student", "onnxruntime int8")]
        retained = "-" if int8["retained"] is None else f"{100 * int8['retained']:.1f}%"
        lines.append(
            f"| {method} ({table['seed']}) | {fp32['latency_ms']:.2f} ms | {int8['latency_ms']:.2f} ms | "
            f"{int8['images_per_s']:.0f} | {fp32['file_bytes'] / 1e6:.2f} / {int8['file_bytes'] / 1e6:.2f} MB | "
            f"{fp32['top1']:.2f}% | {int8['top1']:.2f}% | {int8['top1'] - fp32['top1']:+.2f} | {retained} |"
        )
    wanted = ("teacher", "onnxruntime fp32")
    teacher = next((r for t in measured.values() for r in t["rows"] if (r["model"], r["runtime"]) == wanted), None)
    if teacher is not None:
        lines += ["", f"Teacher in onnxruntime fp32: {teacher['latency_ms']:.2f} ms at batch 1."]
    threads = threads_text(any_table["threads"])
    lines += ["", f"CPU, {threads}; every run's whole table is in its summary.json ('deploy').", ""]
    return lines + _deploy_failed_lines(deploy)


def _deploy_failed_lines(deploy: dict[str, Any]) -> list[str]:
    failed = {method: table for method, table in deploy.items() if "error" in table}
    if not failed:
        return []
    lines = ["Not deployed (the export or its check failed):", ""]
    lines += [f"- {method} (seed {table['seed']}): {table['error']}" for method, table in failed.items()]
    return [*lines, ""]


def _costs_lines(costs: dict[str, Any]) -> list[str]:
    t, s = costs["teacher"], costs["student"]
    return [
        "## Teacher / student trade-off",
        "",
        "| | model | parameters | FLOPs / image | CPU latency / image (batch 1) |",
        "|---|---|---|---|---|",
        *(
            f"| {role} | {c['model']} | {c['params'] / 1e6:.3f} M | {c['flops'] / 1e6:.1f} M | "
            f"{c['latency_ms']:.2f} ms |"
            for role, c in (("teacher", t), ("student", s))
        ),
        *(
            f"| {d['network']} | {s['model']} + {method}'s modules | {d['params'] / 1e6:.3f} M | "
            f"{d['flops'] / 1e6:.1f} M | - |"
            for method, d in costs.get("deployed", {}).items()
        ),
        "",
        f"Compression {costs['compression']:.1f}x in parameters, {costs['flops_ratio']:.1f}x in FLOPs, "
        f"{costs['speedup']:.1f}x measured speed-up.",
        "",
    ]


def write_report(report: dict[str, Any], results: list[RunResult], out: Path) -> None:
    rows, costs, info = report["rows"], report["models"], report["meta"]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(
        json.dumps({**report, "runs": [dataclasses.asdict(r) for r in results]}, indent=2)
    )
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
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_curves(results, rows, teacher_top1, out / "results.png")
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_cost.png")
    if teacher_curve:
        plot_teacher(teacher_curve, out / "teacher.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: list[RunResult], rows: list[dict], teacher_top1: float | None, path: Path) -> None:
    """Mean validation top-1 per epoch (± std band) of every method: all epochs on the left, and on the
    right the second half zoomed to the mean curves, where a few points decide the ranking."""
    import torch

    plt = _pyplot()
    fig, (whole, end) = plt.subplots(1, 2, figsize=(14 if len(rows) <= 16 else 17, 5))
    styles = ["-", "--", ":", "-."]
    means = []
    for i, row in enumerate(rows):
        curves = [r.curve for r in results if r.method == row["method"]]
        length = min(len(c) for c in curves)
        stacked = torch.tensor([c[:length] for c in curves])
        mean = stacked.mean(0)
        std = stacked.std(0) if len(curves) > 1 else torch.zeros_like(mean)
        means.append(mean)
        epochs = range(1, length + 1)
        style = {"linewidth": 2.5 if row["method"] == SCRATCH else 1.2, "linestyle": styles[i // 10 % 4]}
        line = whole.plot(epochs, mean, label=f"{row['method']} ({row['last_top1_mean']:.2f})", **style)
        whole.fill_between(epochs, mean - std, mean + std, alpha=0.1, color=line[0].get_color())
        end.plot(epochs, mean, color=line[0].get_color(), **style)
    if teacher_top1:
        whole.axhline(teacher_top1, color="black", linewidth=1, label=f"teacher ({teacher_top1:.2f})")
    whole.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy per epoch (mean ± std over seeds)")
    low, high = min(min(r.curve) for r in results), max(max(r.curve) for r in results)
    whole.set_ylim(max(0, low - 2), min(100, max(high, teacher_top1 or 0) + 2))
    length = min(len(m) for m in means)
    first = length // 2  # the second half, where the ranking settles; the teacher is far above it
    tail = torch.stack([m[first:length] for m in means])
    end.set(xlabel="epoch", title=f"epochs {first + 1}-{length}, means only (zoomed)")
    end.set_xlim(first + 0.8, length + 0.2)
    end.set_ylim(float(tail.min()) - 0.5, float(tail.max()) + 0.5)
    handles, labels = whole.get_legend_handles_labels()
    end.legend(
        handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(rows) <= 16 else 2
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy_vs_cost(rows: list[dict], path: Path) -> None:
    """Each method's mean last-epoch top-1 (± std) against its training cost over scratch's; the band is
    scratch ± the marking spread."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    scratch = next(r for r in rows if r["method"] == SCRATCH)
    if scratch["seeds"] > 1:  # one scratch run has no spread to draw
        spread = MARK_SIGMAS * scratch["last_top1_std"]
        ax.axhspan(
            scratch["last_top1_mean"] - spread,
            scratch["last_top1_mean"] + spread,
            color="grey",
            alpha=0.15,
            label=f"scratch ± {MARK_SIGMAS:g} std",
        )
    for row in rows:
        cost = row["cost_vs_scratch"] if row["cost_vs_scratch"] is not None else float("nan")
        ax.errorbar(
            cost,
            row["last_top1_mean"],
            yerr=row["last_top1_std"] or 0.0,
            fmt="o",
            markersize=4,
            capsize=2,
            color="black" if row["method"] == SCRATCH else None,
        )

    points = [(r["cost_vs_scratch"], r["last_top1_mean"], r["method"]) for r in rows if r["cost_vs_scratch"]]
    label_offset = (ax.get_xlim()[1] - ax.get_xlim()[0]) / 60
    for (x, y, name), label_y in zip(points, spread_labels(points, ax), strict=True):
        ax.annotate(
            name,
            (x, y),
            xytext=(x + label_offset, label_y),
            textcoords="data",
            fontsize=7,
            ha="left",
            va="center",
            arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": "grey"},
        )
    ax.set(
        xlabel="training cost (x scratch)",
        ylabel="last-epoch top-1 (%)",
        title="accuracy against training cost (mean ± std over seeds)",
    )
    if scratch["seeds"] > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spread_labels(points: list[tuple[float, float, str]], ax) -> list[float]:
    """Label heights that do not overlap: points close in cost share a column of labels, stacked at least
    one label's height apart in the order of their accuracies and centred on the points' mean."""
    low, high = ax.get_ylim()
    gap = (high - low) / 38  # one 7-point label on a 5.5-inch axis, with a little air
    width = (ax.get_xlim()[1] - ax.get_xlim()[0]) / 12  # about one label's length
    heights = [y for _x, y, _name in points]
    by_cost = sorted(range(len(points)), key=lambda k: points[k][0])
    columns: list[list[int]] = []
    for k in by_cost:
        if columns and points[k][0] - points[columns[-1][-1]][0] < width:
            columns[-1].append(k)
        else:
            columns.append([k])
    for column in columns:
        below = float("-inf")
        for k in sorted(column, key=lambda k: points[k][1]):
            heights[k] = max(points[k][1], below + gap)
            below = heights[k]
        # the stack centred on its points, so it rises above the top one no more than below the lowest
        shift = statistics.fmean(points[k][1] for k in column) - statistics.fmean(heights[k] for k in column)
        for k in column:
            heights[k] += shift
    return heights


def plot_teacher(curve: list[float], path: Path) -> None:
    """The teacher's validation top-1 per epoch: whether it had plateaued before it was distilled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title=f"teacher: {curve[-1]:.2f}% after {len(curve)} epochs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
