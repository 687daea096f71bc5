"""Each model its own input (issue 31, item 2): a pretrained ViT teacher (mean and std 0.5, bicubic, crop
0.9) and a CNN student (ImageNet's statistics, another size) see one view of each image, each prepared as
it expects; the teacher's input is exactly what timm's own evaluation transform makes of the image."""

import numpy as np
import timm
import torch
from PIL import Image

from kdzoo.api import Batch, When
from kdzoo.config import load_config
from kdzoo.data.inputs import InputPrep, adapter
from kdzoo.engine import build_trainer
from kdzoo.engine.teacher_cache import data_settings
from kdzoo.registry import registry
from tests.helpers import VIT, VIT_KWARGS, random_image_folder, tiny_config


def test_a_vit_teacher_gets_exactly_timms_eval_transform_of_the_image(tmp_path, vit_in_hub_cache):
    random_image_folder(tmp_path / "images")
    sets = [
        "data.name=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.img_size=24",
        "data.augment=false",
        "data.batch_size=8",
        "data.num_workers=1",
        f"teacher.model={VIT}",
        "teacher.pretrained=true",
        "teacher.train.epochs=0",
        "teacher.img_size=32",
        f"teacher.kwargs={VIT_KWARGS}",
        "student.model=test_resnet",
        "train.epochs=1",
    ]
    config = load_config([], sets, ["kd"], registry().config_classes())
    trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    inputs = trainer.data.inputs
    assert inputs.teacher == InputPrep((0.5,) * 3, (0.5,) * 3, 32, "bicubic", 0.9)
    assert inputs.student.size == 24 and inputs.student.mean == (0.485, 0.456, 0.406)

    seen = {}
    teacher, student = trainer.teacher, trainer.student
    # the first layer each model runs (kdzoo calls forward_intermediates, not the model itself)
    teacher.patch_embed.register_forward_pre_hook(lambda _m, a: seen.setdefault("teacher", a[0].detach().clone()))
    student.conv1.register_forward_pre_hook(lambda _m, a: seen.setdefault("student", a[0].detach().clone()))
    trainer.step.begin(trainer.stages[0])
    x, y, idx = next(iter(trainer.data.train.epoch(0, 0, with_index=True)))
    trainer.step(Batch(x, y, idx), When(trainer.stages[0], 0, 0.0))

    reference = timm.create_model(VIT, pretrained=False, num_classes=4, **VIT_KWARGS)
    data_config = timm.data.resolve_model_data_config(reference)  # the pretrained cfg's mean, std, crop...
    timm_eval = timm.data.create_transform(**{**data_config, "input_size": (3, 32, 32)})  # ...at teacher.img_size
    path = trainer.data.train.dataset.samples[int(idx[0])][0]
    expected = timm_eval(Image.open(path).convert("RGB"))
    assert expected.shape == (3, 32, 32)
    assert torch.allclose(seen["teacher"][0], expected, atol=1e-6, rtol=0)
    # the student: the same view, at its size, with its statistics
    assert seen["student"].shape == (8, 3, 24, 24)
    back = adapter(inputs.student, inputs.teacher)(seen["student"][:1])
    assert torch.allclose(back[0].mean(), expected.mean(), atol=0.05)
    # the teacher is scored on the validation set as its own transform makes it
    assert trainer.data.teacher_val is not None
    assert next(iter(trainer.data.teacher_val.epoch(0)))[0].shape[-1] == 32


def test_in_memory_data_and_the_teacher_cache_key_follow_each_models_input(tmp_path):
    plain = tiny_config(["kd"], out_dir=str(tmp_path))
    bigger = tiny_config(["kd"], "teacher.img_size=48", out_dir=str(tmp_path))
    trainer = build_trainer(bigger, registry(), tmp_path / "run", show_progress=False)
    assert trainer.data.inputs.render.size == 48 and trainer.data.inputs.student.size == 32
    x, _ = next(iter(trainer.data.train.epoch(0)))
    assert x.shape[-1] == 48  # drawn at the larger input; the student's is made from it
    assert trainer.objective.student_tap.prepare is not None and trainer.objective.teacher_side.prepare is None
    trainer.fit()
    assert all(np.isfinite(r["train"]["loss"]) for r in trainer.history)
    contents = trainer.data.contents
    same = build_trainer(plain, registry(), tmp_path / "plain", show_progress=False)
    assert same.objective.student_tap.prepare is None and same.objective.teacher_side.prepare is None
    assert data_settings(plain, contents, same.data.inputs) != data_settings(bigger, contents, trainer.data.inputs)


def test_a_saved_models_input_comes_from_its_config_json(tmp_path):
    """local-dir: (and hf-hub:, the same file in the hub cache) carry their pretrained_cfg in config.json."""
    from timm.models import save_for_hf

    from kdzoo.data.inputs import pretrained_request

    save_for_hf(timm.create_model("test_vit"), str(tmp_path / "saved"))
    asked = pretrained_request(f"local-dir:{tmp_path / 'saved'}", True, 32)
    expected = timm.models.get_pretrained_cfg("test_vit")
    assert (asked.mean, asked.std, asked.size) == (tuple(expected.mean), tuple(expected.std), 32)
    assert asked.interpolation == expected.interpolation and asked.crop_pct == expected.crop_pct
    assert pretrained_request(f"local-dir:{tmp_path / 'missing'}", True).mean is None  # the model's build says why
