"""What a distilled student costs where it runs: the deploy trade-off table of a finished run.

For the teacher and the student, each in PyTorch eager and in onnxruntime (fp32, and the int8 file
when one was made): parameters, FLOPs per image, file size, latency at batch 1 and throughput at
:data:`THROUGHPUT_BATCH` (medians of repeated runs, on the CPU, the thread count stated), validation
top-1 and the share of the teacher's it keeps. The teacher's ONNX file is exported and verified as
the student's is. The table lands in the run's ``summary.json`` (``deploy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzoo.data import load_data
from kdzoo.engine.deployed import load_student
from kdzoo.engine.evaluate import evaluate
from kdzoo.engine.export import count_flops
from kdzoo.engine.teacher_files import given_teacher, load_trained_teacher
from kdzoo.tools.deploy import OnnxStudent, record_in_summary, reuse_or_export, run_config
from kdzoo.tools.leaderboard import UNSTEADY_TIMING, threads_text, unsteady
from kdzoo.tools.timing import REPEATS, THROUGHPUT_BATCH, timed


def _row(name: str, runtime: str, model: nn.Module, size: int, params: int, flops: int, data, shape) -> dict:
    one, many = torch.randn(1, *shape), torch.randn(THROUGHPUT_BATCH, *shape)
    batch = timed(lambda: model(many), max(3, REPEATS // 4))
    latency = timed(lambda: model(one))
    return {
        "model": name,
        "runtime": runtime,
        "params": params,
        "flops": flops,
        "file_bytes": size,
        "latency_ms": latency.median,
        "latency_spread": latency.spread,
        "images_per_s": THROUGHPUT_BATCH / (batch.median / 1000),
        "throughput_spread": batch.spread,
        "top1": evaluate(model, data.val.epoch(0), data.num_classes, f"{name} ({runtime})")["top1"],
    }


def deploy_table(run_dir: str | Path, teacher_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure the trade-off table of ``run_dir`` (its student exported to ONNX before) and write it
    into its ``summary.json``. ``teacher_rows``: the teacher's rows of another run with the same
    teacher (a comparison's runs share one), taken as they are instead of measuring it again."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    data = load_data(config.data, config.train.seed)
    shape = (data.in_chans, config.data.img_size, config.data.img_size)
    student = load_student(run_dir / "student.safetensors").float().cpu()
    models = [("student", student, run_dir / "student.safetensors", run_dir / "student.onnx")]
    teacher = None
    if teacher_rows is None and config.methods:  # a run without methods (scratch) has no teacher of its own
        teacher = given_teacher(config, data.num_classes, data.in_chans) or load_trained_teacher(
            config, data.contents, data.num_classes, data.in_chans
        )
    if teacher is not None:
        teacher = teacher.float().cpu().eval()
        teacher_onnx = run_dir / "teacher.onnx"
        reuse_or_export(teacher, teacher_onnx, data, "teacher")  # an empty or damaged file is made again
        models.insert(0, ("teacher", teacher, None, teacher_onnx))
    rows = [dict(row) for row in teacher_rows or []]
    for name, model, weights, onnx_file in models:
        params, flops = sum(p.numel() for p in model.parameters()), count_flops(model, shape)
        state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        pytorch_size = weights.stat().st_size if weights is not None else state_bytes
        rows.append(_row(name, "pytorch eager", model.eval(), pytorch_size, params, flops, data, shape))
        rows.append(
            _row(name, "onnxruntime fp32", OnnxStudent(onnx_file), onnx_file.stat().st_size, params, flops, data, shape)
        )
        int8 = run_dir / "student.int8.onnx"
        if name == "student" and int8.is_file():
            rows.append(
                _row(name, "onnxruntime int8", OnnxStudent(int8), int8.stat().st_size, params, flops, data, shape)
            )
    teacher_top1 = next((r["top1"] for r in rows if r["model"] == "teacher"), None)
    for row in rows:
        row["retained"] = None if not teacher_top1 else row["top1"] / teacher_top1
    table = {"threads": torch.get_num_threads(), "throughput_batch": THROUGHPUT_BATCH, "repeats": REPEATS, "rows": rows}
    record_in_summary(run_dir, "deploy", table)  # atomically: a kill mid-write leaves the old summary
    return table


def format_deploy_table(table: dict[str, Any]) -> list[str]:
    """The table as Markdown lines."""
    lines = [
        f"| model | runtime | parameters | FLOPs / image | file | latency, batch 1 | images/s, batch "
        f"{table['throughput_batch']} | top-1 | retained |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        retained = "-" if r["retained"] is None else f"{100 * r['retained']:.1f}%"
        latency, throughput = unsteady(r.get("latency_spread")), unsteady(r.get("throughput_spread"))
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['params'] / 1e6:.3f} M | {r['flops'] / 1e6:.1f} M | "
            f"{r['file_bytes'] / 1e6:.2f} MB | {r['latency_ms']:.2f} ms{latency} | "
            f"{r['images_per_s']:.0f}{throughput} | {r['top1']:.2f}% | {retained} |"
        )
    lines.append(
        f"\nCPU, {threads_text(table['threads'])} (PyTorch and onnxruntime alike), medians of {table['repeats']} runs."
    )
    if any(unsteady(r.get(key)) for r in table["rows"] for key in ("latency_spread", "throughput_spread")):
        lines.append(UNSTEADY_TIMING)
    return lines
