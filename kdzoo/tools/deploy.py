"""``kdzoo export``: the deployed student of a finished run as an ONNX file, verified against PyTorch.

The network exported is what the run deploys (:func:`kdzoo.load_student`: the student alone, or what
a method builds around it, SimKD's projector and reused classifier), never a method's training
modules. PyTorch's own exporter writes it with a dynamic batch axis; the ``onnx`` checker validates
it; then ``onnxruntime`` runs it on the run's validation set beside PyTorch, and the export is kept
only when both agree: the same top-1 class for every image, logits within :data:`LOGIT_TOLERANCE`.
The result is written beside the file (``student.onnx.json``) and printed.

Every file lands whole or not at all (exported and verified in memory, or written under a temp name,
then fsync + rename): a kill leaves the previous file, a full disk is one line naming the file and the
bytes it needs. A file kdzoo would reuse (the teacher's ONNX export, an int8 file) is checked first
(:func:`onnx_is_sound`) and made again when an interrupted write or a damaged disk broke it. An ONNX
file onnxruntime cannot load is one line naming it.

These are optional dependencies (``pip install 'kdzoo[deploy]'``); a missing one is one line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzoo.config import RunConfig, config_from_dict
from kdzoo.data import load_data
from kdzoo.engine.deployed import load_student
from kdzoo.engine.export import write_atomic
from kdzoo.errors import KdzooError, first_line
from kdzoo.registry import registry
from kdzoo.reporting import read_json

#: largest |logit difference| allowed between onnxruntime and PyTorch, relative to the largest |logit|
LOGIT_TOLERANCE = 1e-4
DEPLOY_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require_deploy_extra(what: str) -> None:
    """One line naming the extra to install when a deploy package is missing."""
    missing = []
    for name in DEPLOY_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise KdzooError(f"{what} needs the deploy extra (missing: {', '.join(missing)}): pip install 'kdzoo[deploy]'")


def run_config(run_dir: Path) -> RunConfig:
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise KdzooError(f"{run_dir} holds no config.json: give the folder of a finished kdzoo run")
    try:
        raw = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdzooError(f"{config_file} is damaged (not JSON: {exc})") from None
    return config_from_dict(raw, registry().config_classes())


def export_onnx(run_dir: str | Path, which: str = "last") -> dict[str, Any]:
    """Write ``run_dir/student.onnx`` (dynamic batch) from the run's last student, or its best epoch's or
    EMA's (``which``; the record names the weights file), check it, verify it on the validation set."""
    from kdzoo.engine.export import kept_student

    require_deploy_extra("kdzoo export --format onnx")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdzooError(f"run folder {run_dir} does not exist: give the folder of a kdzoo run")
    weights = kept_student(run_dir, which)
    config = run_config(run_dir)
    data = load_data(config.data, config.train.seed)
    model = load_student(weights).float()
    return export_verified(model, run_dir / "student.onnx", data, "student", {"weights": weights.name})


def export_verified(
    model: nn.Module, target: Path, data, what: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``model`` as ``target`` (checked), kept only when onnxruntime agrees with it on ``data.val``;
    the check's record lands beside it (``<target>.json``). Exported, checked and verified in memory:
    ``target`` is written (atomically) only once it is known good."""
    sample = next(iter(data.val.epoch(0)))[0][:2]
    exported = _onnx_bytes(model, sample)
    check = verify_onnx(target, model, data.val.epoch(0), exported)
    record = {"file": target.name, "opset": _opset(exported), **check, **(extra or {})}
    record_file = target.with_name(target.name + ".json")
    if not check["agrees"]:
        target.unlink(missing_ok=True)  # an older export of this file no longer stands for the model
        write_atomic(record_file, json.dumps(record, indent=2))
        raise KdzooError(
            f"onnxruntime disagrees with PyTorch about the {what} on {check['images']} validation images (top-1 "
            f"agreement {100 * check['top1_agreement']:.2f}%, logit gap {check['max_logit_gap']:.2e}): "
            f"{target.name} not kept; see {record_file}"
        )
    write_atomic(target, exported)
    write_atomic(record_file, json.dumps(record, indent=2))
    return record


def reuse_or_export(model: nn.Module, target: Path, data, what: str) -> bool:
    """``target`` when it is a sound, verified export (:func:`onnx_is_sound`), else ``model`` exported
    into it again (:func:`export_verified`); True when it was reused. An empty or damaged file left by
    an interrupted write is never reused."""
    if onnx_is_sound(target):
        return True
    export_verified(model, target, data, what)
    return False


def onnx_is_sound(path: Path) -> bool:
    """Whether ``path`` is a whole ONNX file that the ``onnx`` checker accepts and whose verification
    record (``<path>.json``) says onnxruntime agreed with PyTorch on it."""
    import onnx

    record_file = path.with_name(path.name + ".json")
    if not path.is_file() or path.stat().st_size == 0 or not record_file.is_file():
        return False
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return json.loads(record_file.read_text()).get("agrees") is True
    except Exception:  # any damage (a truncated protobuf, a record that is not JSON) means: make it again
        return False


def record_in_summary(run_dir: str | Path, key: str, value: Any) -> None:
    """The run's ``summary.json`` with ``key`` set to ``value``, written atomically (a kill leaves the
    previous summary, which marks the run finished); a damaged summary is refused in one line, never
    replaced by one that holds ``key`` alone."""
    summary_file = Path(run_dir) / "summary.json"
    summary = read_json(summary_file, f"'{key}' not written into it") if summary_file.is_file() else {}
    summary[key] = value
    write_atomic(summary_file, json.dumps(summary, indent=2))


def read_record(record_file: Path) -> dict[str, Any]:
    """A verification record, or {} when there is none or a damaged one (it is written again whole)."""
    try:
        record = json.loads(record_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def onnx_file_checks(path: Path) -> bool:
    """Whether ``path`` is a non-empty ONNX file the ``onnx`` checker accepts."""
    import onnx

    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        onnx.checker.check_model(str(path))
    except Exception:  # a truncated or foreign file: not reusable
        return False
    return True


def first_images(batches, count: int):
    """Batches of the first ``count`` training images (the last batch cut to size)."""
    taken = 0
    for x, _ in batches:
        if taken >= count:
            return
        yield x[: count - taken]
        taken += len(x[: count - taken])


def _onnx_bytes(model: nn.Module, sample: torch.Tensor) -> bytes:
    """``model`` exported by PyTorch's exporter (dynamic batch axis) and checked by ``onnx``, as bytes."""
    import onnx

    batch = torch.export.Dim("batch")
    # the exporter reports progress on stdout and deprecations as warnings: kdzoo speaks for it
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (sample,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
        proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _opset(exported: bytes) -> int:
    import onnx

    model = onnx.load_from_string(exported)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def onnx_session(path: Path, exported: bytes | None = None, spinning: bool = True):
    """An onnxruntime session on the CPU for ``path`` (or for ``exported``, the bytes meant for it); a
    file onnxruntime cannot load (empty, truncated, not ONNX) is one line naming it. ``spinning=False``:
    its threads sleep between runs instead of spinning, for sessions timed in turns (a session's
    spinning threads take the cores from the next one's run)."""
    require_deploy_extra(f"scoring {path.name}")
    import onnxruntime as ort

    if exported is None and not path.is_file():
        raise KdzooError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = torch.get_num_threads()  # as many as PyTorch uses: timings compare alike
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path) if exported is None else exported, options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...), all one line here
        size = path.stat().st_size if exported is None else len(exported)
        raise KdzooError(
            f"ONNX file {path} cannot be loaded by onnxruntime ({size:,} bytes; {_ort_reason(exc)}): "
            f"a damaged or foreign file; export it again with kdzoo export RUN_DIR --format onnx"
        ) from None


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message, without its ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix."""
    text = first_line(exc)
    return text.rsplit(" : ", 1)[-1].strip()[:200] or type(exc).__name__


def onnx_logits(session, images: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: images.detach().cpu().float().numpy()})[0])


@torch.inference_mode()
def verify_onnx(path: Path, model: nn.Module, batches, exported: bytes | None = None) -> dict[str, Any]:
    """onnxruntime (on ``path``, or on ``exported``, the bytes meant for it) against PyTorch on every
    batch: the share of images whose top-1 class agrees, and the largest logit gap."""
    exported = OnnxStudent(path, exported)
    model.eval()
    same = images = 0
    gap = scale = 0.0
    for x, _ in batches:
        ours, theirs = model(x.float()).cpu(), exported(x).cpu()
        same += int((ours.argmax(1) == theirs.argmax(1)).sum())
        images += len(x)
        gap = max(gap, float((ours - theirs).abs().max()))
        scale = max(scale, float(ours.abs().max()))
    agreement = same / max(images, 1)
    relative = gap / max(scale, 1e-12)
    return {
        "images": images,
        "top1_agreement": agreement,
        "max_logit_gap": gap,
        "max_logit_gap_relative": relative,
        "tolerance_relative": LOGIT_TOLERANCE,
        "agrees": agreement == 1.0 and relative <= LOGIT_TOLERANCE,
    }


class OnnxStudent(nn.Module):
    """An exported ONNX file run by onnxruntime on the CPU, behind ``nn.Module``'s call: what
    :func:`kdzoo.engine.evaluate.evaluate` scores, as it scores a PyTorch model."""

    def __init__(self, path: Path, exported: bytes | None = None):
        super().__init__()
        self.path, self.session = path, onnx_session(path, exported)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onnx_logits(self.session, x).to(x.device)

    def check_fits(self, image_shape: tuple[int, ...], num_classes: int) -> None:
        """One line when the file's declared input or output does not fit the run's data (an ONNX file
        of another model): a batch of ``image_shape`` images in, (batch, num_classes) logits out."""
        (given,), (made,) = self.session.get_inputs(), self.session.get_outputs()
        wanted_in, wanted_out = [None, *image_shape], [None, num_classes]
        for what, declared, wanted in (("takes", given.shape, wanted_in), ("gives", made.shape, wanted_out)):
            if not _shape_fits(declared, wanted):
                raise KdzooError(
                    f"{self.path} is not this run's student: it {what} {_shape_text(declared)}, the run's data needs "
                    f"{_shape_text(wanted)}"
                )


def _shape_fits(declared: list, wanted: list) -> bool:
    """Whether an ONNX value's declared shape (ints, or names for dynamic axes) can be ``wanted``."""
    if len(declared) != len(wanted):
        return False
    return all(not isinstance(d, int) or w is None or d == w for d, w in zip(declared, wanted, strict=True))


def _shape_text(shape: list) -> str:
    return "[" + ", ".join("N" if d is None or not isinstance(d, int) else str(d) for d in shape) + "]"


__all__ = [
    "LOGIT_TOLERANCE",
    "OnnxStudent",
    "export_onnx",
    "export_verified",
    "first_images",
    "onnx_file_checks",
    "onnx_is_sound",
    "read_record",
    "record_in_summary",
    "reuse_or_export",
    "require_deploy_extra",
    "verify_onnx",
]
