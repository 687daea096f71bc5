"""``kdzoo export``: the deployed student of a finished run as an ONNX file, verified against PyTorch.

The network exported is what the run deploys (:func:`kdzoo.load_student`: the student alone, or what
a method builds around it, SimKD's projector and reused classifier), never a method's training
modules. PyTorch's own exporter writes it with a dynamic batch axis; the ``onnx`` checker validates
it; then ``onnxruntime`` runs it on the run's validation set beside PyTorch, and the export is kept
only when both agree: the same top-1 class for every image, logits within :data:`LOGIT_TOLERANCE`.
The result is written beside the file (``student.onnx.json``) and printed.

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
from kdzoo.errors import KdzooError
from kdzoo.registry import registry

#: largest |logit difference| allowed between onnxruntime and PyTorch, relative to the largest |logit|
LOGIT_TOLERANCE = 1e-4
#: training images the int8 quantization calibrates its activation ranges on (min-max, per tensor)
CALIBRATION_IMAGES = 256
#: the narrowest range an int8 tensor is given. A branch that no calibration image switches on (a dead
#: squeeze-excite ReLU, say) calibrates to [0, 0], which onnxruntime would quantize in steps of 1.0: the
#: smallest upstream rounding error then turns it on at full strength (an attention-transfer student of
#: the Fashion-MNIST leaderboard fell from 78% to 45% that way). A range this narrow keeps it off.
MIN_INT8_RANGE = 1e-4
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
    return config_from_dict(json.loads(config_file.read_text()), registry().config_classes())


def export_onnx(run_dir: str | Path) -> dict[str, Any]:
    """Write ``run_dir/student.onnx`` (dynamic batch), check it, verify it on the validation set."""
    require_deploy_extra("kdzoo export --format onnx")
    run_dir = Path(run_dir)
    weights = run_dir / "student.safetensors"
    if not weights.is_file():
        raise KdzooError(f"{run_dir} has no student.safetensors: the run has not finished (resume it first)")
    config = run_config(run_dir)
    data = load_data(config.data, config.train.seed)
    return export_verified(load_student(weights).float(), run_dir / "student.onnx", data, "student")


def export_verified(model: nn.Module, target: Path, data, what: str) -> dict[str, Any]:
    """``model`` as ``target`` (checked), kept only when onnxruntime agrees with it on ``data.val``;
    the check's record lands beside it (``<target>.json``)."""
    sample = next(iter(data.val.epoch(0)))[0][:2]
    _write_onnx(model, sample, target)
    check = verify_onnx(target, model, data.val.epoch(0))
    record = {"file": target.name, "opset": _opset(target), **check}
    record_file = target.with_name(target.name + ".json")
    record_file.write_text(json.dumps(record, indent=2))
    if not check["agrees"]:
        target.unlink()
        raise KdzooError(
            f"onnxruntime disagrees with PyTorch about the {what} on {check['images']} validation images (top-1 "
            f"agreement {100 * check['top1_agreement']:.2f}%, logit gap {check['max_logit_gap']:.2e}): "
            f"{target.name} not kept; see {record_file}"
        )
    return record


def quantize_int8(run_dir: str | Path) -> dict[str, Any]:
    """``student.int8.onnx``: post-training static quantization of ``student.onnx`` (QDQ, int8 weights
    per channel and activations, ranges calibrated on :data:`CALIBRATION_IMAGES` training images),
    scored beside the fp32 file on the validation set; recorded in ``student.onnx.json``."""
    require_deploy_extra("kdzoo export --quantize int8")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kdzoo.engine.evaluate import evaluate

    run_dir = Path(run_dir)
    fp32, int8 = run_dir / "student.onnx", run_dir / "student.int8.onnx"
    if not fp32.is_file():
        raise KdzooError(f"{run_dir} has no student.onnx to quantize: export it with --format onnx first")
    config = run_config(run_dir)
    data = load_data(config.data, config.train.seed)
    name = onnx_session(fp32).get_inputs()[0].name

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.batches = _first_images(data.train.epoch(0), CALIBRATION_IMAGES)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: batch.cpu().float().numpy()}

    prepared = run_dir / ".student.prepared.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(int8),
                TrainingImages(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={"MinimumRealRange": MIN_INT8_RANGE},
            )
    finally:
        prepared.unlink(missing_ok=True)
    scores = {
        label: evaluate(OnnxStudent(path), data.val.epoch(0), data.num_classes, f"student ({path.name})")
        for label, path in (("fp32", fp32), ("int8", int8))
    }
    record_file = run_dir / "student.onnx.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    record["int8"] = {
        "file": int8.name,
        "calibration_images": CALIBRATION_IMAGES,
        "min_range": MIN_INT8_RANGE,
        "fp32_top1": scores["fp32"]["top1"],
        "int8_top1": scores["int8"]["top1"],
        "top1_change": scores["int8"]["top1"] - scores["fp32"]["top1"],
        "fp32_bytes": fp32.stat().st_size,
        "int8_bytes": int8.stat().st_size,
    }
    record_file.write_text(json.dumps(record, indent=2))
    return record["int8"]


def int8_is_current(run_dir: str | Path) -> bool:
    """Whether ``student.int8.onnx`` was made by today's recipe (its calibration count and narrowest
    range, as recorded beside it): one made by an older kdzoo is made again, never reported as today's."""
    run_dir = Path(run_dir)
    record_file = run_dir / "student.onnx.json"
    if not (run_dir / "student.int8.onnx").is_file() or not record_file.is_file():
        return False
    made = json.loads(record_file.read_text()).get("int8", {})
    return made.get("calibration_images") == CALIBRATION_IMAGES and made.get("min_range") == MIN_INT8_RANGE


def _first_images(batches, count: int):
    """Batches of the first ``count`` training images (the last batch cut to size)."""
    taken = 0
    for x, _ in batches:
        if taken >= count:
            return
        yield x[: count - taken]
        taken += len(x[: count - taken])


def _write_onnx(model: nn.Module, sample: torch.Tensor, target: Path) -> None:
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
        program.save(str(target))
    import onnx

    onnx.checker.check_model(str(target), full_check=True)


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def onnx_session(path: Path):
    """An onnxruntime session on the CPU for ``path``."""
    require_deploy_extra(f"scoring {path.name}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = torch.get_num_threads()  # as many as PyTorch uses: timings compare alike
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: images.detach().cpu().float().numpy()})[0])


@torch.inference_mode()
def verify_onnx(path: Path, model: nn.Module, batches) -> dict[str, Any]:
    """onnxruntime against PyTorch on every batch: top-1 agreement and the largest logit gap."""
    exported = OnnxStudent(path)
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

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.session = path, onnx_session(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onnx_logits(self.session, x).to(x.device)


__all__ = [
    "CALIBRATION_IMAGES",
    "LOGIT_TOLERANCE",
    "OnnxStudent",
    "export_onnx",
    "export_verified",
    "quantize_int8",
    "require_deploy_extra",
    "verify_onnx",
]
