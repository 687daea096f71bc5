"""A conformance suite for method plugins: run it from your plugin package's own tests.

::

    # tests/test_conformance.py of your plugin package
    from kdzoo.testing import check_method

    def test_my_method_conforms(tmp_path):
        check_method("my_method", tmp_path)

or, for one pytest test per check and pair::

    from kdzoo.testing import conformance_cases, run_case

    @pytest.mark.parametrize("case", conformance_cases("my_method"), ids=str)
    def test_conformance(case, tmp_path):
        run_case(case, tmp_path)

Each check builds the method on tiny timm pairs (CNN->CNN of different widths, CNN->mobilenet,
ViT->CNN) with synthetic data, and asserts what every method owes its users: registration
metadata, a typed config with defaults that round-trips, named finite scalar loss terms, weights
only for terms that exist, gradients reaching the student and the method's own modules and never
the teacher, and a checkpoint that restores the run exactly.

A dataset plugin (``kdzoo_register_datasets``) is checked by :func:`check_dataset`::

    def test_my_dataset_conforms(tmp_path):
        check_dataset("my_scans", tmp_path, method="kd", root="tests/data/scans")
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdzoo.api import Batch, When
from kdzoo.config import RunConfig, as_dict, build, load_config
from kdzoo.paths import using_cache
from kdzoo.registry import registry

#: where the conformance cases keep the tiny teachers they train (never the user's kdzoo cache)
TESTING_CACHE = Path(tempfile.gettempdir()) / f"kdzoo-testing-{getpass.getuser()}"

#: (teacher, teacher kwargs, student, student kwargs): tiny models, 32 px
PAIRS: dict[str, tuple[str, dict, str, dict]] = {
    "resnet->resnet": ("resnet10t", {}, "test_resnet", {}),
    "resnet->mobilenetv3": ("test_resnet", {}, "mobilenetv3_small_050", {}),
    "vit->resnet": ("test_vit", {"img_size": 32, "patch_size": 4}, "test_resnet", {}),
    # a transformer student of a CNN teacher, for methods that promise heterogeneous pairs (OFA)
    "resnet->vit": ("test_resnet", {}, "test_vit", {"img_size": 32, "patch_size": 4}),
    # for methods that compare stages channel by channel (FSP): same widths, another initialisation
    "resnet->resnet-same-widths": ("test_resnet", {}, "test_resnet", {}),
    # for methods that train a distillation token (DeiT): a two-block distilled transformer
    "resnet->deit": (
        "test_resnet",
        {},
        "deit_tiny_distilled_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
    ),
}
#: several teachers (``teachers:``, each (model, kwargs)) -> a student (model, kwargs), for methods that
#: distil from several (``MethodInfo.min_teachers``) and for one-teacher methods on an ensemble
ENSEMBLES: dict[str, tuple[tuple[tuple[str, dict], ...], str, dict]] = {
    "resnet+vit->resnet": ((("resnet10t", {}), ("test_vit", {"img_size": 32, "patch_size": 4})), "test_resnet", {}),
    "resnet+resnet->mobilenetv3": ((("test_resnet", {}), ("resnet10t", {})), "mobilenetv3_small_050", {}),
}
CHECKS = ("registration", "config", "losses", "gradients", "checkpoint")
_TINY = [
    "data.name=synthetic",
    "data.img_size=32",
    "data.batch_size=16",
    "data.train_limit=32",
    "train.epochs=1",
    "train.log_every=1",
]
_TINY_TEACHER_TRAINING = {"epochs": 1, "train_limit": 32}  # a teacher kdzoo trains first: a few steps


@dataclass(frozen=True)
class Case:
    method: str
    check: str
    pair: str = "resnet->resnet"
    settings: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.method}-{self.check}-{self.pair}"


#: the pairs every method is checked on unless told otherwise: CNN -> CNN of other widths, a CNN ->
#: MobileNetV3 student, ViT -> CNN
DEFAULT_PAIRS = ["resnet->resnet", "resnet->mobilenetv3", "vit->resnet"]


def conformance_cases(method: str, pairs: list[str] | None = None, settings: tuple[str, ...] = ()) -> list[Case]:
    """Every (check, pair) case for ``method``; pair-independent checks run once, the checkpoint round
    trip on the first pair."""
    pairs = pairs or DEFAULT_PAIRS
    cases = [Case(method, "registration", settings=settings), Case(method, "config", settings=settings)]
    for check in ("losses", "gradients"):
        cases += [Case(method, check, pair, settings) for pair in pairs]
    # the round trip of the method's modules does not depend on the pair: one full run is enough
    return [*cases, Case(method, "checkpoint", pairs[0], settings)]


def check_method(
    method: str,
    tmp_path: str | Path,
    pairs: list[str] | None = None,
    settings: tuple[str, ...] = (),
    cache: str | Path | None = None,
):
    """Run every conformance check for ``method``; raises AssertionError on the first failure."""
    for case in conformance_cases(method, pairs, settings):
        run_case(case, Path(tmp_path) / str(case), cache)


def run_case(case: Case, tmp_path: str | Path, cache: str | Path | None = None) -> None:
    """Run one check. The tiny teachers it trains go to ``cache`` (default: one folder under the
    system's temporary directory, shared by every case so each teacher is trained once), never to
    the user's kdzoo cache, and the environment is left as it was."""
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    check = {
        "registration": _registration,
        "config": _config,
        "losses": _losses,
        "gradients": _gradients,
        "checkpoint": _checkpoint,
    }[case.check]
    with using_cache(cache or TESTING_CACHE):
        check(case, tmp_path)


def tiny_config(case: Case, out_dir: Path) -> RunConfig:
    """The case's run: tiny models of its pair (one teacher, or several: :data:`ENSEMBLES`), 32 px."""
    if case.pair in ENSEMBLES:
        members, student, s_kwargs = ENSEMBLES[case.pair]
        teachers = [{"model": m, "kwargs": kw, "train": _TINY_TEACHER_TRAINING} for m, kw in members]
        chosen = [f"teachers={json.dumps(teachers)}"]
    else:
        teacher, t_kwargs, student, s_kwargs = PAIRS[case.pair]
        training = [f"teacher.train.{key}={value}" for key, value in _TINY_TEACHER_TRAINING.items()]
        chosen = [f"teacher.model={teacher}", f"teacher.kwargs={json.dumps(t_kwargs)}", *training]
    sets = [*_TINY, *chosen, f"student.model={student}", f"train.out_dir={out_dir}", *case.settings]
    cfg = load_config([], sets, [case.method], registry().config_classes())
    cfg.student.kwargs.update(s_kwargs)
    return cfg


def _trainer(case: Case, tmp_path: Path, run: str = "run"):
    from kdzoo.engine import build_trainer

    return build_trainer(tiny_config(case, tmp_path), registry(), tmp_path / run, show_progress=False)


def _registration(case: Case, _tmp: Path) -> None:
    reg = registry()
    assert case.method not in reg.failures, f"plugin failed to load: {reg.failures.get(case.method)}"
    info = reg.get(case.method)
    assert info.name == case.method and info.paper.strip() and info.summary.strip(), "name, paper and summary"
    assert callable(info.factory), "factory must build the method from its config"
    assert info.plugin, "registered through a plugin (entry point)"


def _config(case: Case, _tmp: Path) -> None:
    info = registry().get(case.method)
    cls = info.config_class
    assert dataclasses.is_dataclass(cls), "config_class must be a dataclass"
    defaults = cls()  # every field needs a default: the paper's setting
    data = as_dict(defaults)
    assert build(cls, data, case.method) == defaults, "config must round-trip through a plain dict"
    import yaml

    assert build(cls, yaml.safe_load(yaml.safe_dump(data)), case.method) == defaults, "and through YAML"
    assert info.factory(defaults) is not None


def _losses(case: Case, tmp_path: Path) -> None:
    trainer = _trainer(case, tmp_path)
    x, y, idx = next(trainer.data.train.epoch(0, with_index=True))
    result = trainer.step.losses(Batch(x, y, idx), When(trainer.stages[0], 0, 0.5))
    total, terms = result.loss, result.terms
    assert terms, f"stage {trainer.stages[0].name}: no loss terms"
    for name, value in terms.items():
        assert isinstance(name, str) and name, "term names are non-empty strings"
        assert isinstance(value, torch.Tensor) and value.ndim == 0, f"term {name} must be a scalar tensor"
        assert torch.isfinite(value), f"term {name} is not finite"
    assert torch.isfinite(total)
    trainer.fit()  # every stage, with whatever the stage boundaries hand over
    produced = {name for record in trainer.history for name in record["train"]}
    weighted = {name for record in trainer.history for name in record["train"]["weights"]}
    unknown = weighted - produced - {"ce"}
    assert not unknown, f"weights for terms the method never produces: {sorted(unknown)}"
    for record in trainer.history:
        values = [v for k, v in record["train"].items() if k not in ("weights", "images_per_s")]
        assert all(torch.isfinite(torch.tensor(v)) for v in values), f"non-finite terms in {record['stage']}"


def _gradients(case: Case, tmp_path: Path) -> None:
    trainer = _trainer(case, tmp_path)
    x, y, idx = next(trainer.data.train.epoch(0, with_index=True))
    for stage in trainer.stages:
        trainable = trainer.step.set_trainable(stage)
        for p in [*trainer.student.parameters(), *trainer.modules.parameters()]:
            p.grad = None
        total = trainer.step.losses(Batch(x, y, idx), When(stage, 0, 0.5)).loss
        total.backward()
        # a stage may train only the method's own modules (a paraphraser's pre-training, say)
        trains_student = any(p.requires_grad for p in trainer.student.parameters())
        reached = trainer.student.parameters() if trains_student else trainer.modules.parameters()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reached), (
            f"stage {stage.name}: no gradient reaches what trains ({'student' if trains_student else 'modules'})"
        )
        ids = {id(p) for p in trainer.modules.parameters()}
        assert all(p.grad is None for p in trainer.student.parameters() if not p.requires_grad), (
            f"stage {stage.name}: frozen student parameters received gradients"
        )
        if ids and any(id(p) in ids for p in trainer.modules.parameters() if p.requires_grad):
            assert any(p.grad is not None for p in trainer.modules.parameters()), (
                f"stage {stage.name}: the method's trainable modules get no gradient"
            )
        assert trainable
        if trainer.teacher is not None:
            assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters()), (
                "the teacher must stay frozen"
            )


def _state(trainer) -> dict[str, Any]:
    return {
        **{f"student.{k}": v for k, v in trainer.student.state_dict().items()},
        **{f"modules.{k}": v for k, v in trainer.modules.state_dict().items()},
    }


def _checkpoint(case: Case, tmp_path: Path) -> None:
    from kdzoo import checkpoint

    trainer = _trainer(case, tmp_path)
    trainer.fit()
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    again = _trainer(case, tmp_path, run="restored")
    again.student.load_state_dict(saved["student"])
    again.modules.load_state_dict(saved["modules"])
    before, after = _state(trainer), _state(again)
    assert before.keys() == after.keys(), "checkpoint keys differ from a fresh build of the same config"
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} differs after a checkpoint round trip"


# ----------------------------------------------------------------------------- a dataset plugin
def check_dataset(
    name: str, tmp_path: str | Path, method: str, root: str | None = None, cache: str | Path | None = None
) -> None:
    """What a dataset plugin owes its users (``kdzoo_register_datasets``): it is registered under
    ``name``, its loader returns :class:`kdzoo.DatasetSplits` whose samples are (image, label) with
    labels among its classes, and a run of ``method`` on it (``"kd"``; tiny models, 32 px, one epoch over
    a few samples) trains and evaluates; ``root`` is the ``data.root`` it is given. Raises AssertionError
    on the first failure."""
    from kdzoo.api import DatasetSplits
    from kdzoo.engine import build_trainer

    tmp_path = Path(tmp_path)
    datasets = registry().datasets
    assert name in datasets, f"no plugin registers dataset '{name}' (registered: {sorted(datasets)})"
    splits = datasets[name].load(root)
    assert isinstance(splits, DatasetSplits), f"{name}: load returned {type(splits).__name__}, not DatasetSplits"
    for split in (splits.train, splits.val):
        assert len(split) > 0, f"{name}: a split is empty"
        for index in (0, len(split) - 1):
            image, label = split[index]
            assert 0 <= int(label) < splits.num_classes, f"{name}: label {label} outside 0..{splits.num_classes - 1}"
            assert hasattr(image, "convert") or isinstance(image, torch.Tensor), f"{name}: sample {index} is no image"
    sets = [
        f"data.name={name}",
        "data.img_size=32",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "data.train_limit=8",
        "data.num_workers=1",
        "teacher.model=test_resnet",
        "teacher.train.epochs=1",
        "teacher.train.train_limit=8",
        "student.model=test_resnet",
        "train.epochs=1",
        f"train.out_dir={tmp_path}",
    ]
    if root is not None:
        sets.append(f"data.root={root}")
    config = load_config([], sets, [method], registry().config_classes())
    with using_cache(cache or TESTING_CACHE):
        trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
        trainer.fit()
    record = trainer.history[-1]
    assert trainer.data.num_classes == splits.num_classes
    assert torch.isfinite(torch.tensor(record["train"]["loss"])), f"{name}: the loss is not finite ({record})"
    assert 0.0 <= record["val"]["top1"] <= 100.0
