"""The int8 exporter's ways of quantizing (kdzoo/tools/int8.py, CANDIDATES) against fp32, in onnxruntime on
this machine: images/s at batch 64 for timm students at a given input size, the calls taking turns. Speed
only (random weights, calibrated on random images); accuracy is the exporter's own measurement on a run.
Also the former recipe (QDQ, int8 activations, every op), to show what uint8 activations change.

usage: python scripts/int8_speed.py SIZE MODEL [MODEL ...]   # e.g. 224 resnet18 mobilenetv3_large_100
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from kdzoo.tools.deploy import onnx_session
from kdzoo.tools.int8 import CANDIDATES, quantize_as
from kdzoo.tools.timing import THROUGHPUT_BATCH, interleaved


def former(prepared: Path, out: Path, calibration) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(prepared), str(out), calibration, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip


def main(size: int, models: list[str]) -> None:
    import timm
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Random(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": torch.randn(8, 3, size, size).numpy()} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    heads = ["fp32", "former int8 (QDQ, int8 activations)", *(c.name for c in CANDIDATES)]
    print(f"| model | input | {' | '.join(heads)} |")
    print("|---|---|" + "---|" * (2 + len(CANDIDATES)))
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model = timm.create_model(name, num_classes=1000).eval()
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, torch.randn(1, 3, size, size), str(folder / "fp32.onnx"), input_names=["x"],
                                  dynamic_axes={"x": {0: "batch"}}, dynamo=False)  # fmt: skip
                quant_pre_process(str(folder / "fp32.onnx"), str(folder / "prepared.onnx"), skip_symbolic_shape=True)
                former(folder / "prepared.onnx", folder / "former.onnx", Random())
                for candidate in CANDIDATES:
                    quantize_as(candidate, folder / "prepared.onnx", folder / f"{candidate.name}.onnx", Random())
            images = torch.randn(THROUGHPUT_BATCH, 3, size, size).numpy()
            files = ["fp32", "former", *(c.name for c in CANDIDATES)]
            sessions = {f: onnx_session(folder / f"{f}.onnx", spinning=False) for f in files}  # timed in turns
            feed = {"x": images}
            calls = {f: (lambda s=s, feed=feed: s.run(None, feed)) for f, s in sessions.items()}
            speed = {f: THROUGHPUT_BATCH / (m.median / 1000) for f, m in interleaved(calls, 5, 3).items()}
            cells = [f"{speed[f]:.0f} ({speed[f] / speed['fp32']:.2f}x)" for f in files]
            print(f"| {name} | {size} px | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
