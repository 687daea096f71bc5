"""Several teachers (issue 33 item 1): ``teachers:`` lists them, each with its own weights and input
preparation; methods learn from their ensemble (the mean of their logits) and a method that takes
``teachers`` gets each teacher's own outputs."""

from __future__ import annotations

import json

import pytest
import torch

import kdzoo
from kdzoo.api import Batch, When
from kdzoo.config import load_config
from kdzoo.data.inputs import InputAdapter, InputPrep
from kdzoo.engine import build_trainer
from kdzoo.engine.ensemble import TeacherEnsemble
from kdzoo.errors import KdzooError
from kdzoo.registry import registry
from tests.helpers import VIT, VIT_KWARGS, NoConfig, random_image_folder, registry_with_method, teacher_weights

SMALL = [
    "data.name=synthetic",
    "data.img_size=32",
    "data.batch_size=32",
    "data.train_limit=64",
    "student.model=test_resnet",
    "train.log_every=1",
]


class _SeesTeachers:
    """A test method recording the teacher outputs it is handed."""

    seen: dict = {}

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher, teachers):
        _SeesTeachers.seen = {"teacher": teacher.logits.detach().clone(), "teachers": teachers}
        return {"probe": student.logits.sum() * 0.0}


def test_two_teachers_of_other_architectures_and_inputs_each_reach_the_method(tmp_path, vit_in_hub_cache):
    """A pretrained ViT (mean/std 0.5, 32 px, bicubic) and a CNN of the run's data (its statistics,
    24 px): each runs on the batch's image prepared as it expects; the method gets each one's logits, and
    as the teacher their mean."""
    random_image_folder(tmp_path / "images")
    cnn = teacher_weights(tmp_path / "cnn.safetensors", 4)
    teachers = (
        f"teachers=[{{model: {VIT}, pretrained: true, train: {{epochs: 0}}, img_size: 32, kwargs: {VIT_KWARGS}}},"
        f" {{model: test_resnet, checkpoint: {cnn}, img_size: 24}}]"
    )
    sets = [
        "data.name=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.img_size=24",
        "data.augment=false",
        "data.batch_size=8",
        "data.num_workers=1",
        "student.model=test_resnet",
        "train.epochs=1",
        teachers,
    ]
    reg = registry_with_method("sees_teachers", _SeesTeachers, NoConfig)
    config = load_config([], sets, ["kd", "sees_teachers"], reg.config_classes())
    trainer = build_trainer(config, reg, tmp_path / "run", show_progress=False)
    inputs, ensemble = trainer.data.inputs, trainer.teacher
    assert isinstance(ensemble, TeacherEnsemble) and ensemble.names == [VIT, "test_resnet"]
    vit_prep, cnn_prep = inputs.members
    assert vit_prep == InputPrep((0.5,) * 3, (0.5,) * 3, 32, "bicubic", 0.9) and inputs.teacher == vit_prep
    assert cnn_prep.size == 24 and cnn_prep.mean == inputs.student.mean != vit_prep.mean

    seen = {}
    vit, cnn_model = ensemble.members
    vit.patch_embed.register_forward_pre_hook(lambda _m, a: seen.setdefault("vit in", a[0].detach().clone()))
    cnn_model.conv1.register_forward_pre_hook(lambda _m, a: seen.setdefault("cnn in", a[0].detach().clone()))
    vit.register_forward_hook(lambda _m, _a, out: seen.setdefault("vit out", out.detach().clone()))
    cnn_model.register_forward_hook(lambda _m, _a, out: seen.setdefault("cnn out", out.detach().clone()))
    trainer.step.begin(trainer.stages[0])
    x, y, idx = next(iter(trainer.data.train.epoch(0, 0, with_index=True)))  # drawn at 32 px, the student's stats
    trainer.step(Batch(x, y, idx), When(trainer.stages[0], 0, 0.0))

    render = inputs.render
    assert render.size == 32 and render.mean == inputs.student.mean
    # each teacher's input is the same image, normalised (and sized) as that teacher expects
    torch.testing.assert_close(seen["vit in"], InputAdapter(render, vit_prep)(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(seen["cnn in"], InputAdapter(render, cnn_prep)(x), rtol=0, atol=1e-4)
    # each teacher's own logits reach the method; the teacher it is handed is their mean
    got = _SeesTeachers.seen
    assert [t.logits.shape for t in got["teachers"]] == [(8, 4), (8, 4)]
    assert torch.equal(got["teachers"][0].logits, seen["vit out"])
    assert torch.equal(got["teachers"][1].logits, seen["cnn out"])
    assert torch.equal(got["teacher"], (seen["vit out"] + seen["cnn out"]) / 2)


def test_two_identical_teachers_give_one_teachers_kd_exactly(tmp_path):
    weights = teacher_weights(tmp_path / "teacher.safetensors", 10)
    one = f"{{model: test_resnet, checkpoint: {weights}}}"
    histories, students = [], []
    for name, teacher in (("one", [f"teacher={one}"]), ("two", [f"teachers=[{one}, {one}]"])):
        config = load_config([], [*SMALL, "train.epochs=2", *teacher], ["kd"], registry().config_classes())
        trainer = build_trainer(config, registry(), tmp_path / name, show_progress=False)
        summary = trainer.fit()
        histories.append([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
        students.append(trainer.student.state_dict())
    assert summary["teacher"] == "test_resnet + test_resnet"
    strip = lambda history: [{k: v for k, v in r.items() if k not in ("epoch_time_s",)} for r in history]  # noqa: E731
    for a, b in zip(strip(histories[0]), strip(histories[1]), strict=True):
        assert a["train"] | {"images_per_s": 0} == b["train"] | {"images_per_s": 0} and a["val"] == b["val"]
    for key, value in students[0].items():
        assert torch.equal(value, students[1][key]), key


def test_several_teachers_are_refused_in_one_line_where_they_cannot_teach(tmp_path):
    weights = teacher_weights(tmp_path / "teacher.safetensors", 10)
    two = f"teachers=[{{model: test_resnet, checkpoint: {weights}}}, {{model: test_resnet, checkpoint: {weights}}}]"
    config = load_config([], [*SMALL, two], ["fitnets"], registry().config_classes())
    with pytest.raises(KdzooError, match=r"teachers: method 'fitnets' reads the teacher's feature maps"):
        build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    with pytest.raises(KdzooError, match=r"'teacher' and 'teachers' are both given"):
        load_config([], [*SMALL, two, "teacher.model=resnet10t"], ["kd"], registry().config_classes())
    with pytest.raises(KdzooError, match=r"one teacher is the teacher: section"):
        load_config([], [*SMALL, f"teachers=[{{model: test_resnet, checkpoint: {weights}}}]"], ["kd"],
                    registry().config_classes())  # fmt: skip
