"""The recipes the papers trained with, as configs (issue 31, item 5): each names its source (kdzoo show),
and each runs one step on tiny stand-in data: a 4-class image folder at 32 px, a small teacher of the
test's own in place of the pretrained one (the recipe's student, optimizer, schedule and augmentation as
written)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdzoo.cli import main
from kdzoo.config import load_config, read_yaml
from kdzoo.engine import build_trainer
from kdzoo.registry import registry

CONFIGS = Path(__file__).parents[2] / "configs"
RECIPES = sorted(
    path
    for folder in ("imagenet", "deit", "cifar100", "function_matching")
    for path in (CONFIGS / folder).glob("*.yaml")
)
SOURCES = {"imagenet": "torchdistill", "deit": "DeiT", "cifar100": "RepDistiller", "function_matching": "Beyer et al."}


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A 4-class image folder and a small teacher's weights for it."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("stand_in")
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for label in range(4):
            (root / split / f"c{label}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{label}" / f"{i}.png")
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=4)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(root / "teacher.safetensors"))
    return root


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_recipe_names_its_source_and_runs_one_step(path, stand_in, tmp_path):
    shown = CliRunner().invoke(main, ["show", str(path)])
    assert shown.exit_code == 0, shown.output
    first = shown.output.splitlines()[0]
    assert first.startswith("# recipe: ") and SOURCES[path.parent.name] in first, first

    written = read_yaml(path)
    methods = [] if written.get("methods") else ["kd"]  # the CIFAR-100 configs take --method
    teacher = {"model": "test_resnet", "pretrained": False, "checkpoint": str(stand_in / "teacher.safetensors")}
    teachers = [f"teachers={json.dumps([teacher] * len(written['teachers']))}"] if written.get("teachers") else None
    stand_ins = [
        "data.name=imagefolder",
        f"data.root={stand_in}",
        "data.img_size=32",
        "data.batch_size=8",
        "data.eval_batch_size=4",
        "data.num_workers=1",
        *(teachers or [f"teacher.{key}={json.dumps(value)}" for key, value in {**teacher, "kwargs": {}}.items()]),
        "train.epochs=1",
        f"train.out_dir={tmp_path}",
    ]
    config = load_config([path], stand_ins, methods, registry().config_classes())
    if config.student.model.startswith(("vit", "deit")):  # a ViT student at the stand-in's 32 px
        config.student.kwargs.update(img_size=32, patch_size=8)
    trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    trainer.fit()
    assert len(trainer.history) == 1 and np.isfinite(trainer.history[0]["train"]["loss"])
    assert config.recipe is not None and trainer.config.to_dict()["recipe"] == config.recipe
