"""Trains kd on one pair per timm model family, in this process or under torchrun (see test_distributed).

usage: python tests/ddp_pairs.py OUT_DIR WEIGHTS_DIR
"""

import sys
from pathlib import Path

from kdzoo.config import load_config
from kdzoo.engine import build_trainer
from kdzoo.engine.distributed import process_group_left_at_exit
from kdzoo.registry import registry

VIT = "{img_size: 32, patch_size: 4}"
# name: (teacher, student, student kwargs); teachers come as weight files, so no teacher is trained here
PAIRS = {
    "default": ("resnet18", "mobilenetv3_small_050", "{}"),  # the README's pair: timm's BatchNormAct2d
    "resnet": ("test_resnet", "test_resnet", "{}"),
    "efficientnet": ("test_resnet", "test_efficientnet", "{}"),
    "convnext": ("test_resnet", "test_convnext", "{}"),
    "vit": ("test_resnet", "test_vit", VIT),
}


def main(out: Path, weights: Path) -> None:
    for name, (teacher, student, kwargs) in PAIRS.items():
        sets = [
            "data.name=synthetic",
            "data.img_size=32",
            "data.batch_size=32",
            "data.train_limit=64",
            # 2 steps: mobilenetv3 at 32 px normalises 1x1 maps over 16 samples, so rounding noise grows
            # fast with every further step (one process on 1 vs 2 threads differs by 1e-3 after 4 steps)
            "train.epochs=1",
            f"teacher.model={teacher}",
            f"teacher.checkpoint={weights / teacher}.safetensors",
            f"student.model={student}",
            f"student.kwargs={kwargs}",
        ]
        config = load_config([], sets, ["kd"], registry().config_classes())
        build_trainer(config, registry(), out / name, show_progress=False).fit()


if __name__ == "__main__":
    with process_group_left_at_exit():  # a gloo group left to the interpreter's exit can abort it
        main(Path(sys.argv[1]), Path(sys.argv[2]))
