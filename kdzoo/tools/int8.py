"""``kdzoo export --quantize int8``: an int8 student that is faster than fp32 where it can be, and says so
where it cannot.

Post-training static quantization of ``student.onnx`` by onnxruntime: weights int8 per channel,
activations **uint8**, ranges calibrated (min-max) on :data:`CALIBRATION_IMAGES` training images. uint8
activations times int8 weights are the products onnxruntime's int8 kernels run fast on x86 (VNNI's and
AVX2's u8 x s8 dot products); int8 activations there left a resnet-18 at 224 px no faster than fp32
(0.96x its images/s) where uint8 made it 2.9x faster (docs/performance.md, "int8").

What to quantize is chosen by measuring: each way in :data:`CANDIDATES` (every op onnxruntime has an int8
kernel for, fused into QOperator nodes; or only the weighted ops, convolutions and matmuls, leaving
activation-only ops and small gates such as hard-swish and squeeze-excite in float) is made, scored on the
validation set and timed against fp32 at batch :data:`~kdzoo.tools.timing.THROUGHPUT_BATCH` at the model's
input size, on this machine, the calls taking turns. The fastest within :data:`MAX_TOP1_DROP` points of
fp32's top-1 becomes ``student.int8.onnx`` (none within: the most accurate). When it is not faster than
fp32, the record and the command say so plainly and fp32 stays the recommendation. Everything is
recorded in ``student.onnx.json`` (``int8``: each candidate's top-1 and images/s, the choice, the
speed-up, the recommendation).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdzoo.data import load_data
from kdzoo.engine.export import publish_atomic, write_atomic, write_failed
from kdzoo.errors import KdzooError
from kdzoo.tools.deploy import (
    OnnxStudent,
    first_images,
    onnx_file_checks,
    onnx_is_sound,
    onnx_session,
    read_record,
    require_deploy_extra,
    run_config,
)
from kdzoo.tools.timing import THROUGHPUT_BATCH, interleaved, timed

#: training images the int8 quantization calibrates its activation ranges on (min-max, per tensor)
CALIBRATION_IMAGES = 256
#: the narrowest range an int8 tensor is given. A branch that no calibration image switches on (a dead
#: squeeze-excite ReLU, say) calibrates to [0, 0], which onnxruntime would quantize in steps of 1.0: the
#: smallest upstream rounding error then turns it on at full strength (an attention-transfer student of
#: the Fashion-MNIST leaderboard fell from 78% to 45% that way). A range this narrow keeps it off.
MIN_INT8_RANGE = 1e-4
#: top-1 points a candidate may lose to fp32 and still be chosen for its speed
MAX_TOP1_DROP = 1.0
#: how much faster than fp32 int8 must measure to be recommended: repeated exports of a small student
#: measured its speed-up from 0.96x to 1.15x, so a smaller margin would recommend noise
CLEARLY_FASTER = 1.1
#: what an int8 file made by today's exporter records (1: QDQ with int8 activations on every op, unmeasured)
RECIPE = 2
#: interleaved timing rounds per candidate, and timed calls per round, each call at least MIN_CALL_MS long
ROUNDS, REPEATS, MIN_CALL_MS = 7, 3, 50.0


@dataclass(frozen=True)
class Candidate:
    """One way to quantize: ``fmt`` ``QOperator`` (fused int8 nodes) or ``QDQ`` (quantize/dequantize
    pairs around float nodes), ``ops`` the op types quantized (empty: every one with an int8 kernel)."""

    name: str
    fmt: str
    ops: tuple[str, ...] = ()
    summary: str = ""


CANDIDATES = (
    Candidate("fused", "QOperator", (), "every op with an int8 kernel, fused (QLinearConv, QLinearAdd, ...)"),
    Candidate(
        "conv-matmul",
        "QDQ",
        ("Conv", "MatMul", "Gemm"),
        "convolutions and matmuls only; activation-only ops and gates (hard-swish, squeeze-excite) in float",
    ),
)


@dataclass(frozen=True)
class Measured:
    """A candidate (or fp32) as measured here: its validation top-1 and its images/s at batch 64."""

    name: str
    top1: float
    images_per_s: float


def choose(fp32: Measured, candidates: list[Measured], max_drop: float = MAX_TOP1_DROP) -> Measured:
    """The fastest candidate within ``max_drop`` top-1 points of ``fp32``; none within: the most accurate."""
    accurate = [c for c in candidates if c.top1 >= fp32.top1 - max_drop]
    if accurate:
        return max(accurate, key=lambda c: (c.images_per_s, c.top1))
    return max(candidates, key=lambda c: (c.top1, c.images_per_s))


def quantize_int8(run_dir: str | Path, candidates: tuple[Candidate, ...] = CANDIDATES) -> dict[str, Any]:
    """``student.int8.onnx``, chosen among ``candidates`` by top-1 and measured speed (see the module);
    recorded in ``student.onnx.json`` and returned."""
    require_deploy_extra("kdzoo export --quantize int8")
    from kdzoo.engine.evaluate import evaluate

    run_dir = Path(run_dir)
    fp32, int8 = run_dir / "student.onnx", run_dir / "student.int8.onnx"
    if not fp32.is_file():
        raise KdzooError(f"{run_dir} has no student.onnx to quantize: export it with --format onnx first")
    config = run_config(run_dir)
    data = load_data(config.data, config.train.seed)
    made = {c.name: run_dir / f".student.int8.{c.name}.tmp{os.getpid()}.onnx" for c in candidates}
    try:
        _quantize(fp32, made, candidates, data)
        files = {"fp32": fp32, **made}
        scores = {
            name: evaluate(OnnxStudent(path), data.val.epoch(0), data.num_classes, f"student ({name})")["top1"]
            for name, path in files.items()
        }
        speeds = _images_per_s(files, next(iter(data.val.epoch(0)))[0].shape[1:])
        measured = {name: Measured(name, scores[name], speeds[name]) for name in files}
        chosen = choose(measured["fp32"], [measured[c.name] for c in candidates])
        publish_atomic(made[chosen.name], int8)
    except OSError as exc:  # each candidate takes up to the fp32 file's size
        raise write_failed(int8, exc, (len(candidates) + 1) * fp32.stat().st_size) from None
    finally:
        for path in made.values():
            path.unlink(missing_ok=True)
    record = _record(measured, chosen, candidates, fp32, int8)
    record_file = run_dir / "student.onnx.json"
    kept = read_record(record_file)
    kept["int8"] = record
    write_atomic(record_file, json.dumps(kept, indent=2))
    return record


def _quantize(fp32: Path, made: dict[str, Path], candidates: tuple[Candidate, ...], data) -> None:
    """Each candidate's int8 file, calibrated on the first training images."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx_session(fp32).get_inputs()[0].name

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.batches = first_images(data.train.epoch(0), CALIBRATION_IMAGES)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: batch.cpu().float().numpy()}

    prepared = fp32.with_name(f".student.prepared.tmp{os.getpid()}.onnx")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            for candidate in candidates:
                quantize_as(candidate, prepared, made[candidate.name], TrainingImages())
    finally:
        prepared.unlink(missing_ok=True)


def quantize_as(candidate: Candidate, prepared: Path, out: Path, calibration: Any) -> None:
    """``prepared`` (an fp32 file through onnxruntime's ``quant_pre_process``) quantized the
    ``candidate``'s way into ``out``, its ranges calibrated on ``calibration`` (a ``CalibrationDataReader``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(out),
        calibration,
        quant_format=getattr(QuantFormat, candidate.fmt),
        op_types_to_quantize=list(candidate.ops) or None,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"MinimumRealRange": MIN_INT8_RANGE},
    )


def _images_per_s(files: dict[str, Path], image_shape: torch.Size) -> dict[str, float]:
    """Each file's images/s at batch 64 in onnxruntime, the files taking turns (a busy spell of the
    machine falls on all of them alike, so their ratios compare the same moments) and their threads
    sleeping between runs (spinning, one session's threads slowed the next one's run about threefold)."""
    images = torch.randn(THROUGHPUT_BATCH, *image_shape).numpy()
    runs, calls = {}, {}
    for name, path in files.items():
        session = onnx_session(path, spinning=False)  # timed in turns: no session's threads spin in another's
        feed = {session.get_inputs()[0].name: images}
        once = timed(lambda session=session, feed=feed: session.run(None, feed), repeats=5, warmup=5).median
        # a timed call long enough that a timer tick or a wake-up is a small part of it (a small student's
        # batch takes a couple of milliseconds)
        runs[name] = max(1, math.ceil(MIN_CALL_MS / max(once, 1e-3)))
        calls[name] = lambda session=session, feed=feed, n=runs[name]: [session.run(None, feed) for _ in range(n)]
    times = interleaved(calls, ROUNDS, REPEATS, warmup=2)
    return {name: runs[name] * THROUGHPUT_BATCH / (measured.median / 1000) for name, measured in times.items()}


def _record(
    measured: dict[str, Measured], chosen: Measured, candidates: tuple[Candidate, ...], fp32: Path, int8: Path
) -> dict[str, Any]:
    base = measured["fp32"]
    speedup = chosen.images_per_s / base.images_per_s
    described = {c.name: c for c in candidates}[chosen.name]
    return {
        "file": int8.name,
        "recipe": RECIPE,
        "calibration_images": CALIBRATION_IMAGES,
        "min_range": MIN_INT8_RANGE,
        "activations": "uint8",
        "weights": "int8, per channel",
        "chosen": chosen.name,
        "format": described.fmt,
        "quantized": described.summary,
        "fp32_top1": base.top1,
        "int8_top1": chosen.top1,
        "top1_change": chosen.top1 - base.top1,
        "fp32_bytes": fp32.stat().st_size,
        "int8_bytes": int8.stat().st_size,
        "throughput_batch": THROUGHPUT_BATCH,
        "threads": torch.get_num_threads(),
        "fp32_images_per_s": base.images_per_s,
        "int8_images_per_s": chosen.images_per_s,
        "speedup": speedup,
        "recommendation": "int8" if speedup >= CLEARLY_FASTER and chosen.top1 >= base.top1 - MAX_TOP1_DROP else "fp32",
        "candidates": [
            {
                "name": c.name,
                "format": c.fmt,
                "top1": measured[c.name].top1,
                "images_per_s": measured[c.name].images_per_s,
            }
            for c in candidates
        ],
    }


def verdict(record: dict[str, Any]) -> str:
    """The int8 record in one line: how much faster than fp32 here, or plainly that it is not."""
    speed = f"{record['speedup']:.2f}x fp32's images/s at batch {record['throughput_batch']} on this machine"
    if record["recommendation"] == "int8":
        return f"int8 ({record['chosen']}: {record['quantized']}) runs {speed}: the recommendation"
    if record["speedup"] <= 1.0:
        return f"int8 is not faster than fp32 here ({speed}, the fastest way tried): fp32 stays the recommendation"
    if record["speedup"] < CLEARLY_FASTER:
        noise = "within the measurement's noise"
        return f"int8 runs about as fast as fp32 here ({speed}, {noise}): fp32 stays the recommendation"
    return (
        f"int8 is faster ({speed}) but loses {-record['top1_change']:.2f} top-1 points, more than "
        f"{MAX_TOP1_DROP:g}: fp32 stays the recommendation"
    )


def int8_is_current(run_dir: str | Path) -> bool:
    """Whether ``student.int8.onnx`` was made by today's exporter (its recipe, calibration count and
    narrowest range, as recorded beside it): one made by an older kdzoo is made again, never reported
    as today's."""
    run_dir = Path(run_dir)
    if not onnx_is_sound(run_dir / "student.onnx") or not onnx_file_checks(run_dir / "student.int8.onnx"):
        return False
    made = read_record(run_dir / "student.onnx.json").get("int8", {})
    today = (RECIPE, CALIBRATION_IMAGES, MIN_INT8_RANGE)
    return (made.get("recipe"), made.get("calibration_images"), made.get("min_range")) == today
