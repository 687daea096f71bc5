"""Real epochs on a CIFAR-shaped synthetic set held in accelerator memory: images/s of the student
alone, of KD and of the kd+at+rkd stack with a live teacher, and of the same with a warm
teacher-output cache, each eager and with the compiled objective (issue 16's epoch targets).

    python scripts/gpu_epochs.py [--device cuda] [--samples 50000] [--epochs 2] [--out runs/gpu-epochs]
    python scripts/gpu_epochs.py --device cpu --samples 512 --epochs 1 --teacher test_resnet --student test_resnet

The last epoch of each run is reported (the first one includes compilation and the cache fill);
ratios are against the student-only run, the floor of an epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch


def synthetic(samples: int, classes: int = 100, side: int = 32, seed: int = 0):
    from kdzoo.data import DataBundle, Normalisation, TensorBatches

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (samples, 3, side, side), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, classes, (samples,), generator=gen)
    norm = Normalisation((0.5,) * 3, (0.25,) * 3)
    train = TensorBatches(images, labels, 64, side, norm, train=True, augment=False)
    val = TensorBatches(images[:1024], labels[:1024], 256, side, norm, train=False)
    return DataBundle("synthetic-cifar", train, val, classes, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--out", default="runs/gpu-epochs")
    args = parser.parse_args()

    import timm
    from safetensors.torch import save_file

    from kdzoo.config import load_config
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KDZOO_CACHE", str(out / "cache"))  # teacher outputs of this synthetic set stay here
    weights = out / f"{args.teacher}.safetensors"  # a fixed teacher file: the cache is keyed by its hash
    if not weights.is_file():
        teacher = timm.create_model(args.teacher, num_classes=100)
        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    reg = registry()
    runs = {
        "student only": ([], []),
        "kd": (["kd"], []),
        "kd, cache": (["kd"], ["teacher.cache=true"]),
        "kd+at+rkd": (["kd", "at", "rkd"], []),
        "kd+at+rkd, cache": (["kd", "at", "rkd"], ["teacher.cache=true"]),
    }
    report = {}
    for compiled in ("false", "true"):
        for name, (methods, extra) in runs.items():
            label = f"{name}{' [compile_objective]' if compiled == 'true' else ''}"
            sets = [
                f"teacher.model={args.teacher}",
                f"teacher.checkpoint={weights}",
                f"student.model={args.student}",
                f"train.device={args.device}",
                f"train.epochs={args.epochs}",
                f"train.out_dir={out}",
                f"train.name={label.replace(' ', '_').replace(',', '').replace('[', '').replace(']', '')}",
                f"train.compile_objective={compiled if methods else 'false'}",
                "train.log_every=100000",
                "data.augment=false",
                f"data.train_limit={args.samples}",  # part of the teacher-output cache's key, as the data
                *extra,
            ]
            config = load_config([], sets, methods or ["kd"], reg.config_classes())
            if not methods:  # the student alone: no method, no teacher (as `kdzoo compare`'s scratch)
                config = dataclasses.replace(config, methods=[], method_configs={})
            data = synthetic(args.samples)
            trainer = build_trainer(config, reg, out / config.train.name, data=data, show_progress=False)
            trainer.fit()
            report[label] = trainer.history[-1]["train"]["images_per_s"]
            print(f"{label:>34}: {report[label]:.0f} images/s", flush=True)
    floor = report["student only"]
    print("\nepoch time x the student-only epoch:")
    for label, rate in report.items():
        print(f"  {label:>34}: {floor / rate:.3f}")
    (out / "epochs.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
