"""Where an int8 student loses accuracy: the signal-to-quantization-noise ratio (dB) of its activations
against its fp32 export, on validation images, per block (the block's last output) and at the logits,
and what its hard-sigmoid gates (squeeze-excite) are fed.

    python scripts/int8_sqnr.py RUN_DIR [RUN_DIR ...] [--images 512]

Each RUN_DIR holds ``student.onnx`` and ``student.int8.onnx`` (``kdzoo export RUN_DIR --format onnx
--quantize int8``) and the run's ``config.json``, whose validation data is read. Used for the int8
paragraph of docs/results/leaderboard/README.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np


def sqnr(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(((reference - other) ** 2).sum())
    return 10 * float(np.log10(float((reference**2).sum()) / max(noise, 1e-30)))


def activations(model: Path, batches: list[np.ndarray], work: Path) -> dict[str, np.ndarray]:
    """Every intermediate tensor of ``model`` on ``batches``, concatenated over the batches, flattened."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter({"images": b} for b in batches)

        def get_next(self):
            return next(self.left, None)

    exposed = work / model.name
    modify_model_output_intermediate_tensors(str(model), str(exposed))
    seen = collect_activations(str(exposed), Batches())
    return {name: np.concatenate([a.ravel() for a in values]) for name, values in seen.items()}


def validation_images(run_dir: Path, count: int) -> list[np.ndarray]:
    from kdzoo.config import config_from_dict
    from kdzoo.data import load_data
    from kdzoo.registry import registry

    config = config_from_dict(json.loads((run_dir / "config.json").read_text()), registry().config_classes())
    batches, taken = [], 0
    for x, _y in load_data(config.data, config.train.seed).val.epoch(0):
        batches.append(x[: count - taken].numpy().astype(np.float32))
        taken += len(batches[-1])
        if taken >= count:
            break
    return batches


def report(run_dir: Path, count: int) -> str:
    import onnx

    batches = validation_images(run_dir, count)
    with tempfile.TemporaryDirectory() as work:
        fp32 = activations(run_dir / "student.onnx", batches, Path(work))
        int8 = activations(run_dir / "student.int8.onnx", batches, Path(work))
    both = fp32.keys() & int8.keys()
    block_end, gate_inputs, gates = {}, [], []
    for node in onnx.load(str(run_dir / "student.onnx")).graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        scopes = ast.literal_eval(scopes) if scopes else []
        if len(scopes) > 3 and node.output[0] in both:  # ['', 'blocks', 'blocks.2', ..., the node's own name]
            block_end[scopes[2]] = node.output[0]  # graph order: the block's last output stays
        if node.op_type == "HardSigmoid" and node.output[0] in both:
            gate_inputs.append(float(np.abs(fp32[node.input[0]]).max()) if node.input[0] in fp32 else float("nan"))
            gates.append(sqnr(fp32[node.output[0]], int8[node.output[0]]))
    blocks = ", ".join(f"{block} {sqnr(fp32[name], int8[name]):.1f}" for block, name in block_end.items())
    gate = (
        f"{max(gate_inputs):.1f} (median {statistics.median(gate_inputs):.1f}) | "
        f"{min(gates):.1f} (median {statistics.median(gates):.1f})"
        if gates
        else "- | -"
    )
    return f"| {run_dir.name} | {sqnr(fp32['logits'], int8['logits']):.1f} | {blocks} | {gate} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    print(
        "| run | logits SQNR (dB) | SQNR at each block's end (dB) | hard-sigmoid input, largest abs | "
        "hard-sigmoid output SQNR, worst (dB) |\n|---|---|---|---|---|"
    )
    for run_dir in args.runs:
        print(report(run_dir, args.images), flush=True)


if __name__ == "__main__":
    main()
