"""A paper's data recipe (issue 31, item 3): timm's transforms for file-backed data (RandAugment, random
erasing, colour jitter, interpolation, crop), mixup and cutmix with soft targets reaching the core's CE
and the methods, label smoothing. Two processes = one and an exact resume with all of it on:
tests/engine/test_scale_data.py (RECIPE)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdzoo.config import DataConfig, load_config
from kdzoo.data import load_data
from kdzoo.data.mixing import BatchMixing
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.registry import registry


def _mixing(**settings):
    values = {"mixup": 0.8, "cutmix": 1.0, "prob": 1.0, "switch_prob": 0.5, "smoothing": 0.1, "num_classes": 5}
    return BatchMixing(**{**values, **settings}, seed=3)


def test_mixing_is_drawn_per_step_and_pairs_neighbours_within_a_share():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for step in range(6):  # mixup and cutmix both come up
        whole = _mixing()(x, y, epoch=2, step=step)
        again = _mixing()(x, y, epoch=2, step=step)
        assert torch.equal(whole.inputs, again.inputs) and torch.equal(whole.soft_targets, again.soft_targets)
        # two processes' shares of 4, mixed apart, are the whole batch mixed at once
        halves = [_mixing()(x[i : i + 4], y[i : i + 4], epoch=2, step=step) for i in (0, 4)]
        assert torch.equal(torch.cat([h.inputs for h in halves]), whole.inputs)
        assert torch.equal(torch.cat([h.soft_targets for h in halves]), whole.soft_targets)
        assert torch.allclose(whole.soft_targets.sum(1), torch.ones(8))
        # each sample's share of itself is lam: its own class's target, less the smoothing's
        lam = (whole.soft_targets[0, 0] - 0.1 / 5) / 0.9
        own = torch.where(lam >= 0.5, y, y[torch.arange(8) ^ 1])
        assert torch.equal(whole.labels, own)
    assert not torch.equal(_mixing()(x, y, 2, 0).inputs, _mixing()(x, y, 2, 1).inputs)


def test_cutmix_pastes_the_partners_box_and_its_targets_are_the_areas():
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 10, 10), torch.tensor([0, 1])
    mixed = _mixing(mixup=0.0, smoothing=0.0, num_classes=2)(x, y, 0, 0)
    from_partner = (mixed.inputs[0] == x[1]) & (mixed.inputs[0] != x[0])
    kept = 1 - from_partner.float().mean()
    assert mixed.soft_targets[0, 0] == pytest.approx(float(kept)) and mixed.soft_targets[0, 1] == pytest.approx(
        1 - kept
    )


def test_the_core_ce_takes_soft_targets_and_smoothing():
    from kdzoo.engine.objective import Objective

    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    soft = torch.softmax(torch.randn(4, 5), 1)
    objective = Objective.__new__(Objective)
    objective.label_smoothing = 0.1
    by_hand = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(objective._cross_entropy(logits, labels, soft), by_hand)
    smoothed = 0.9 * F.one_hot(labels, 5) + 0.1 / 5
    assert torch.allclose(
        objective._cross_entropy(logits, labels, None), -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 4-class image folder (24 training images of 20x24) and a teacher's weights for it."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    for label in range(4):
        colour = np.array([60 * label, 200 - 40 * label, 90])
        for split, count in (("train", 6), ("val", 3)):
            (root / "images" / split / f"c{label}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "images" / split / f"c{label}" / f"{i}.png")
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=4)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(root / "teacher.safetensors"))
    return root


RECIPE = [
    "data.auto_augment=rand-m9-mstd0.5-inc1",
    "data.re_prob=0.25",
    "data.color_jitter=0.3",
    "data.interpolation=bicubic",
    "data.mixup=0.8",
    "data.cutmix=1.0",
    "train.label_smoothing=0.1",
    "optim.warmup_epochs=0.5",
    "optim.clip_grad=5.0",
    "train.accumulate=2",
    "train.ema=true",
]


@pytest.mark.parametrize("method", ["kd", "dkd", "ofa", "crd", "fitnets"])
def test_one_epoch_of_the_recipe_on_an_image_folder(method, folder, tmp_path):
    sets = [
        "data.name=imagefolder",
        f"data.root={folder / 'images'}",
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=1",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={folder / 'teacher.safetensors'}",
        "student.model=test_resnet",
        "train.epochs=1",
        *RECIPE,
    ]
    config = load_config([], sets, [method], registry().config_classes())
    trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    seen = []
    trainer.pm.register(_SoftTargetsSeen(seen))
    trainer.fit()
    record = trainer.history[-1]
    assert all(np.isfinite(v) for v in record["train"].values() if isinstance(v, float)), record
    assert record["val_ema"] is not None and (tmp_path / "run" / "student_best.safetensors").is_file()
    assert seen and all(s is not None and s.shape[1] == 4 for s in seen)  # the methods received them


class _SoftTargetsSeen:
    """Records the soft targets a method's ``kdzoo_compute_losses`` is handed."""

    def __init__(self, seen):
        self.seen = seen

    import kdzoo

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, soft_targets):
        self.seen.append(soft_targets)


def test_the_teacher_cache_refuses_mixed_batches(tmp_path):
    from tests.helpers import tiny_config

    cfg = tiny_config(["kd"], "teacher.cache=true", "data.augment=false", "data.mixup=0.2", out_dir=str(tmp_path))
    with pytest.raises(KdzooError, match="teacher.cache: data.mixup/cutmix mix each batch anew"):
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)


def test_image_folder_transforms_are_timms(folder):
    from PIL import Image
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    cfg = DataConfig(
        name="imagefolder", root=str(folder / "images"), img_size=16, auto_augment="rand-m9-mstd0.5", re_prob=0.5
    )
    data = load_data(cfg, seed=0)
    steps = [type(t) for t in data.train.dataset.transform.transforms]
    assert RandAugment in steps and RandomErasing in steps
    path = data.val.dataset.samples[0][0]
    expected = create_transform(16, is_training=False, crop_pct=0.875, interpolation="bilinear")(
        Image.open(path).convert("RGB")
    )
    assert torch.equal(data.val.dataset[0][0], expected)
