"""What every registered method does with each family of student a user deploys and each family of
teacher: trains (a run of one step per stage, through the engine, down to the exported student) or
refuses in one line (its :class:`~kdzoo.KdzooError`). ``scripts/gen_support_matrix.py`` writes the
result to docs/support-matrix.md, and a test keeps it true.

Each family is a tiny timm model of that family's own builder (timm's ``test_*`` models where it has
one), with untrained weights and 32-px synthetic data: the question is whether the method can take
the architecture, not how well it distils it. Any exception other than a ``KdzooError`` is a bug of
the method or of kdzoo, never a cell of the matrix: :func:`run_cell` lets it through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdzoo.config import load_config
from kdzoo.errors import KdzooError, first_line
from kdzoo.models import create_model
from kdzoo.paths import using_cache
from kdzoo.registry import Registry, registry


@dataclass(frozen=True)
class Family:
    """A family of models, as one tiny timm model of it: ``model`` built with ``kwargs``."""

    name: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def spelled(self) -> str:
        """``model(key=value, ...)``: how the matrix names what it built."""
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.model}({args})" if args else self.model


#: the students users deploy, in the matrix's order
STUDENTS: tuple[Family, ...] = (
    Family("resnet", "test_resnet"),
    Family("mobilenetv3", "mobilenetv3_small_050"),
    Family("efficientnet", "test_efficientnet"),
    Family("convnext", "test_convnext"),
    Family("vit", "test_vit", {"img_size": 32, "patch_size": 4}),
    # a distillation token and its second head (timm's *_distilled_* models)
    Family(
        "distilled DeiT",
        "deit_tiny_distilled_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
    ),
)
#: the teachers: a CNN of other widths than the students', and a ViT
TEACHERS: tuple[Family, ...] = (
    Family("CNN", "resnet10t"),
    Family("ViT", "test_vit", {"img_size": 32, "patch_size": 4}),
)
#: one step per epoch, one epoch per stage; the synthetic set's 128 validation images are scored
SETTINGS = (
    "data.name=synthetic",
    "data.img_size=32",
    "data.batch_size=8",
    "data.eval_batch_size=128",
    "data.train_limit=8",
    "train.epochs=1",
    "train.log_every=1",
    "train.device=cpu",
    "teacher.cache=false",
)
#: a cell's text when the method trains
TRAINS = "trains"


@dataclass(frozen=True)
class Cell:
    """One method on one student family and one teacher family: ``refusal`` is ``None`` when it trains."""

    method: str
    student: str
    teacher: str
    refusal: str | None = None

    @property
    def trains(self) -> bool:
        return self.refusal is None

    @property
    def text(self) -> str:
        return TRAINS if self.refusal is None else self.refusal


def _family(name: str, families: Iterable[Family]) -> Family:
    for family in families:
        if family.name == name:
            return family
    raise KdzooError(f"no model family '{name}' in the support matrix")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the warnings a run of one step gives (a one-step cosine schedule, few samples): noise here."""
    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        timm_log.setLevel(level)


def run_cell(method: str, student: str, teacher: str, tmp: str | Path, reg: Registry | None = None) -> Cell:
    """``method`` trained for one step per stage on the ``student`` family, distilled from the ``teacher``
    family (both untrained), evaluated and exported as a run does; or its one-line refusal."""
    from kdzoo.engine import build_trainer

    reg = reg or registry()
    s, t = _family(student, STUDENTS), _family(teacher, TEACHERS)
    # a folder of its own: a run never starts over another one
    out = Path(tempfile.mkdtemp(prefix=f"{method}-{s.name}-{t.name}-".replace(" ", "_"), dir=tmp))
    sets = [*SETTINGS, f"student.model={s.model}", f"teacher.model={t.model}", f"train.out_dir={out}"]
    torch.manual_seed(0)
    try:
        cfg = load_config([], sets, [method], reg.config_classes())
        cfg.student.kwargs.update(s.kwargs)
        cfg.teacher.kwargs.update(t.kwargs)
        # the teacher is given untrained: whether the method takes it does not depend on its weights
        teacher_model = create_model(cfg.teacher, "teacher", 10, 3)
        with using_cache(out / "cache"), _quiet():
            trainer = build_trainer(cfg, reg, out / "run", teacher=teacher_model, show_progress=False)
            # one epoch (of one step) per stage, even where a method fixes a stage's length (a head pre-trained
            # for epochs of its own): every stage and handover runs, at the cost of one step each
            trainer.stages = [dataclasses.replace(stage, epochs=min(stage.epochs, 1)) for stage in trainer.stages]
            summary = trainer.fit()
    except KdzooError as exc:
        return Cell(method, s.name, t.name, first_line(exc))
    losses = [v for record in trainer.history for k, v in record["train"].items() if isinstance(v, float)]
    if not summary or not all(torch.isfinite(torch.tensor(losses))):
        raise AssertionError(f"{method} on {s.name} <- {t.name}: non-finite terms {trainer.history}")
    return Cell(method, s.name, t.name)


def methods(reg: Registry | None = None) -> list[str]:
    """Every registered method, by name (a clash's qualified names included)."""
    return sorted((reg or registry()).methods)


def matrix(
    names: Iterable[str] | None = None,
    students: Iterable[str] | None = None,
    teachers: Iterable[str] | None = None,
    reg: Registry | None = None,
    on_cell: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Every cell of ``names`` x ``students`` x ``teachers`` (default: all), each handed to ``on_cell`` as it
    is done. A method without a teacher (self-distillation) runs once per student and fills every teacher
    column alike."""
    reg = reg or registry()
    names = list(names) if names is not None else methods(reg)
    students = list(students) if students is not None else [f.name for f in STUDENTS]
    teachers = list(teachers) if teachers is not None else [f.name for f in TEACHERS]
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="kdzoo-support-") as tmp:
        for method in names:
            info = reg.get(method)
            needs_teacher = info.wants_teacher(info.config_class())
            for student in students:
                first: Cell | None = None
                for teacher in teachers:
                    if first is not None and not needs_teacher:
                        cell = Cell(method, student, teacher, first.refusal)
                    else:
                        cell = run_cell(method, student, teacher, tmp, reg)
                    first = first or cell
                    cells.append(cell)
                    if on_cell is not None:
                        on_cell(cell)
    return cells
