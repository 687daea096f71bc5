"""Small configs for fast engine tests: synthetic data, tiny timm models, a couple of steps."""

from __future__ import annotations

import dataclasses
import os
import textwrap
import types

import torch

import kdzoo
from kdzoo.config import RunConfig, load_config
from kdzoo.registry import Registry, load_registry, registry

TINY = [
    "data.name=synthetic",
    "data.img_size=32",
    "data.batch_size=32",
    "data.train_limit=64",
    "teacher.train.epochs=1",
    "teacher.train.train_limit=64",
    "train.log_every=1",
]

PAIRS = {
    "resnet->resnet": ("resnet10t", {}, "test_resnet", {}),
    "resnet->mobilenetv3": ("test_resnet", {}, "mobilenetv3_small_050", {}),
    "vit->resnet": ("test_vit", {"img_size": 32, "patch_size": 4}, "test_resnet", {}),
    "convnext->resnet": ("test_convnext", {}, "test_resnet", {}),
    "resnet->vit": ("test_resnet", {}, "test_vit", {"img_size": 32, "patch_size": 4}),
    "resnet->efficientnet": ("test_resnet", {}, "test_efficientnet", {}),
}


def subprocess_env(tmp_path) -> dict[str, str]:
    """The environment for a kdzoo subprocess: offline, one thread, the test's own cache."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "KDZOO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def tiny_config(methods: list[str], *extra: str, pair: str = "resnet->resnet", out_dir: str = "runs") -> RunConfig:
    t, t_kw, s, s_kw = PAIRS[pair]
    sets = [*TINY, f"teacher.model={t}", f"student.model={s}", f"train.out_dir={out_dir}", "train.epochs=1", *extra]
    cfg = load_config([], sets, methods, registry().config_classes())
    cfg.teacher.kwargs.update(t_kw)
    cfg.student.kwargs.update(s_kw)
    return cfg


@dataclasses.dataclass
class NoConfig:
    """The config of a test method that has no settings."""


class NaNFromTheStart:
    """A test method whose loss term is non-finite from the first step."""

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        return {"flaky": student.logits.mean() * float("nan")}


def registry_with_method(name: str, factory, config_class=dict, needs_teacher: bool = True) -> Registry:
    """The installed plugins plus one throwaway plugin module registering method ``name``."""

    @kdzoo.hookimpl
    def kdzoo_register_methods(register):
        register(kdzoo.MethodInfo(name, factory, config_class, "test", "test method", needs_teacher=needs_teacher))

    module = types.ModuleType(f"{name}_plugin")
    module.kdzoo_register_methods = kdzoo_register_methods
    return load_registry(extra=[(f"{name}_plugin", module)])


def pip_install_into(source, target) -> None:
    """Install the distribution at ``source`` for real into folder ``target`` (offline: no deps,
    the build backend from this environment), as a user's ``pip install`` would."""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",  # offline: the build backend (setuptools) comes from this environment
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def seeded(seed: int) -> torch.Generator:
    """A generator seeded with ``seed``: the reference checks draw their tensors from it."""
    return torch.Generator().manual_seed(seed)


def logit_pair(seed: int, batch: int = 16, classes: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded student and teacher logits (scaled 2 and 3) for the reference checks."""
    gen = seeded(seed)
    return 2 * torch.randn(batch, classes, generator=gen), 3 * torch.randn(batch, classes, generator=gen)


def td_io(x, path: str = ".") -> dict:
    """``x`` as torchdistill's losses read a module's output: ``{path: {"output": x}}``."""
    return {path: {"output": x}}


def fit_tiny(cfg: RunConfig, tmp_path):
    """``cfg`` trained in ``tmp_path/run``, checking that every logged term is finite and the student
    changed: (the trainer, its last epoch's record)."""
    from kdzoo.engine import build_trainer

    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    record = trainer.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record["train"].items() if isinstance(v, float))
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in before.items())
    return trainer, record


def logit_terms(pm, student, teacher_logits) -> dict:
    """The terms the methods registered on ``pm`` compute from ``student`` (an object with ``.logits``, or
    ``Outputs``) and teacher logits, through pluggy, with every other hookspec argument empty."""
    teacher = type("Outputs", (), {"logits": teacher_logits})()
    (terms,) = pm.hook.kdzoo_compute_losses(
        student=student, teacher=teacher, targets=None, stage=None, indices=None, views=None, plan=None, modules=None
    )
    return terms


def logits_only(logits):
    """A student's outputs that hold logits alone."""
    return type("Outputs", (), {"logits": logits})()


class Crash(Exception):
    """What :func:`whole_and_resumed_after_crash` makes a run fail with."""


class _CrashOnCall:
    """Fails the run in its ``calls``-th loss computation, after the checkpoint of the step before."""

    def __init__(self, calls: int):
        self.left = calls

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self):
        self.left -= 1
        if self.left == 0:
            raise Crash


def whole_and_resumed_after_crash(cfg: RunConfig, tmp_path, calls: int):
    """``cfg`` trained uninterrupted in ``whole/``, and again in ``crashed/`` failed in its
    ``calls``-th loss computation then resumed from its checkpoint: (whole, resumed, that checkpoint)."""
    import pytest

    from kdzoo.engine import build_trainer
    from kdzoo.engine.state import RunState

    whole = build_trainer(cfg, registry(), tmp_path / "whole", show_progress=False)
    whole.fit()
    crashed = build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    crashed.pm.register(_CrashOnCall(calls))
    with pytest.raises(kdzoo.KdzooError):
        crashed.fit()
    state = RunState.load(tmp_path / "crashed" / "last.pt")
    resumed = build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    resumed.fit(resume=state)
    return whole, resumed, state


# a third-party method package's module: what a user's own plugin looks like
LOGIT_MSE_PLUGIN = '''
"""A method the built-ins do not have: regress the teacher's logits (Ba & Caruana, 2014)."""
from dataclasses import dataclass

import torch.nn.functional as F

import kdzoo


@dataclass
class LogitMSEConfig:
    weight: float = 1.0


class LogitMSE:
    def __init__(self, config):
        self.config = config

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        return {"logit_mse": F.mse_loss(student.logits, teacher.logits)}

    @kdzoo.hookimpl
    def kdzoo_loss_weights(self):
        return {"logit_mse": self.config.weight}


@kdzoo.hookimpl
def kdzoo_register_methods(register):
    register(kdzoo.MethodInfo(name="logit_mse", factory=LogitMSE, config_class=LogitMSEConfig,
                              paper="Ba & Caruana. Do Deep Nets Really Need to be Deep? NIPS 2014",
                              summary="regress the teacher's logits"))
'''


def installed_distribution(root, dist, module, source, entry_points):
    """A minimal installed distribution (dist-info + module), as pip would leave it."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[kdzoo]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def coloured_image(label: int, rng, size: tuple[int, int] = (20, 20), noise: float = 30.0):
    """A small RGB image of class ``label`` of three (its channel bright, the others dark) with noise:
    what tests of file-backed data store as images."""
    import numpy as np
    from PIL import Image

    colour = np.array([200 if c == label else 40 for c in range(3)])
    return Image.fromarray(np.clip(colour + rng.normal(0, noise, (*size, 3)), 0, 255).astype(np.uint8))


def teacher_weights(path, classes: int, model: str = "test_resnet"):
    """A seeded, untrained timm ``model``'s weights for ``classes`` classes saved as safetensors at ``path``."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    teacher = timm.create_model(model, num_classes=classes)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    return path


VIT = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's pretrained_cfg: mean/std 0.5, bicubic, crop 0.9
VIT_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48, "num_heads": 2}


def random_image_folder(root):
    """An image folder of 4 classes, 4 random 37x45 images each in train/ and val/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(4):
            (root / split / f"c{label}").mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{label}" / f"{i}.png")


TORCHRUN_TWO = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def one_and_two_processes(worker, tmp_path, crash_at: int, sets: list[str], **per_run: list[str]) -> tuple:
    """``worker`` (tests/engine/scale_data_worker.py) run at once on one process (in tmp_path/one) and,
    crashing at loss computation ``crash_at`` and resumed, on two gloo processes under torchrun (in
    tmp_path/two); ``per_run``: settings one of them adds (keyed one=, two=). Their folders."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**subprocess_env(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    launchers = {"one": ([], []), "two": (TORCHRUN_TWO, [str(crash_at)])}
    running = {}
    for out, (launcher, crash) in launchers.items():
        (tmp_path / out).mkdir()
        command = [
            sys.executable,
            *launcher,
            str(worker),
            str(tmp_path / out),
            *crash,
            "--",
            *sets,
            *per_run.get(out, []),
        ]
        running[out] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for out, process in running.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{out}: {output[-4000:]}"
    return tmp_path / "one", tmp_path / "two"
