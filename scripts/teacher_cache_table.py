"""The teacher run once, measured (issue 32): an image folder made here (C classes of coloured patterns
plus noise), a teacher kdzoo trains on it, then KD runs with data.views=2 fixed crops per sample:
the live teacher, the full teacher-output cache, and the top-K cache for several K. Prints a markdown
table (cache size and fill time per 1,000 images and views, epoch seconds, top-1) for
docs/performance.md.

    python scripts/teacher_cache_table.py [--classes 10 100] [--images 3000] [--epochs 4]

Every class count gets the same number of training images (``--images``), so the rows differ in
their classes only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np


def make_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 255, (classes, 4, 4, 3))
    for split, count in (("train", per_class), ("val", max(per_class // 4, 2))):
        for label in range(classes):
            folder = root / split / f"c{label:03d}"
            folder.mkdir(parents=True)
            big = np.kron(patterns[label], np.ones((10, 10, 1)))
            for i in range(count):
                pixels = np.clip(big + rng.normal(0, 50, big.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def folder_sets(root: Path) -> tuple[list[str], list[str]]:
    """An image folder made here, resnet10t -> test_resnet at 32 px."""
    sets = [
        "data.name=imagefolder",
        f"data.root={root}",
        "data.img_size=32",
        "data.batch_size=64",
        "data.num_workers=1",
        "teacher.model=resnet10t",
        "teacher.train.epochs=6",
        "teacher.train.augment=true",
        "student.model=test_resnet",
    ]
    return [], sets


#: the leaderboard's pair and data (configs/fashion_mnist/leaderboard.yaml), its teacher trained 8 epochs
#: instead of 30 and its students 4 instead of 12, to fit the measurement on 2 cores
LEADERBOARD = (["configs/fashion_mnist/leaderboard.yaml"], ["teacher.train.epochs=8"])


def run(base: tuple[list[str], list[str]], out: Path, name: str, epochs: int, *extra: str) -> dict:
    from kdzoo.config import load_config
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry

    files, sets = base
    sets = [*sets, "data.views=2", f"train.epochs={epochs}", f"train.out_dir={out}", *extra]
    config = load_config(files, sets, ["kd"], registry().config_classes())
    trainer = build_trainer(config, registry(), out / name)
    summary = trainer.fit()
    cache = trainer.teacher_cache
    meta = json.loads((cache.folder / "meta.json").read_text()) if cache is not None else {}
    return {
        "epoch_s": statistics.median(r["epoch_time_s"] for r in trainer.history[1:]),
        "top1": summary["student_top1"],
        "teacher_top1": summary["teacher_top1"],
        "cache_bytes": sum(a.nbytes for a in cache.arrays.values()) if cache is not None else None,
        "fill_cpu_s": meta.get("fill_cpu_s"),
        "samples": trainer.data.train.num_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--images", type=int, default=3000, help="training images, split evenly over the classes")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--leaderboard", action="store_true", help="the leaderboard's pair (Fashion-MNIST) instead")
    args = parser.parse_args()
    from kdzoo.paths import using_cache

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for classes in [10] if args.leaderboard else args.classes:
            root = Path(tmp) / f"folder{classes}"
            if args.leaderboard:
                base = LEADERBOARD
            else:
                make_folder(root, classes, args.images // classes)
                base = folder_sets(root)
            with using_cache(Path(tmp) / f"cache{classes}"):
                variants = [("live teacher", ())]
                variants.append(("cache, every logit", ("teacher.cache=true",)))
                variants += [(f"cache, top-{k}", ("teacher.cache=true", f"teacher.cache_topk={k}")) for k in (1, 5, 10)]
                for label, extra in variants:
                    found = run(
                        base,
                        Path(tmp) / f"runs{classes}",
                        label.replace(" ", "_").replace(",", ""),
                        args.epochs,
                        *extra,
                    )
                    rows.append((classes, label, found))
                    print(classes, label, found, flush=True)
    columns = ["classes", "teacher outputs from", "cache bytes per 1,000 images x views", "fill CPU s per 1,000"]
    columns += ["epoch s (median of 2..)", "student top-1"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for classes, label, r in rows:
        per = 1000 / (r["samples"] * 2)
        size = f"{r['cache_bytes'] * per:,.0f}" if r["cache_bytes"] is not None else "-"
        fill = f"{r['fill_cpu_s'] * per:.2f}" if r["fill_cpu_s"] is not None else "-"
        print(f"| {classes} | {label} | {size} | {fill} | {r['epoch_s']:.2f} | {r['top1']:.1f} |")


if __name__ == "__main__":
    main()
