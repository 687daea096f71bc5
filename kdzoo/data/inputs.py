"""Each model its own input: the mean, std, size, interpolation and crop a model expects.

A pretrained timm model expects the inputs it was trained on (its ``pretrained_cfg``: a ViT mean and
std 0.5, bicubic, crop 0.9); a model trained from scratch on the run's data, the dataset's statistics.
The training batches are drawn once, at the larger of the two models' sizes (with that model's
interpolation and crop) and the student's normalisation (:attr:`RunInputs.render`); on the device each
model's input is made from that same batch (:class:`InputAdapter`: re-normalised, resized when its
size differs), so teacher and student see one view, and the larger model sees exactly what its own
evaluation transform gives. Evaluation batches are made for each model by its own transform.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.config import RunConfig


@dataclass(frozen=True)
class InputPrep:
    """How images become one model's input."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def as_record(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "size": self.size,
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}  # fmt: skip


@dataclass(frozen=True)
class PrepRequest:
    """What the config asks of a model's input; ``None``: the dataset's (mean, std), the run's size."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def resolve(self, dataset: InputPrep) -> InputPrep:
        """This request filled in from the dataset's own preparation. A model of another channel count
        than the data's statistics (a 3-channel pretrained mean on 1-channel digits) keeps the data's."""
        mean = self.mean if self.mean is not None and len(self.mean) == len(dataset.mean) else dataset.mean
        std = self.std if self.std is not None and len(self.std) == len(dataset.std) else dataset.std
        return InputPrep(
            mean=tuple(mean),
            std=tuple(std),
            size=self.size or dataset.size,
            interpolation=self.interpolation or dataset.interpolation,
            crop_pct=self.crop_pct or dataset.crop_pct,
        )


def pretrained_request(model: str, pretrained: bool, size: int | None = None) -> PrepRequest:
    """What a timm model's pretrained weights expect (timm's ``pretrained_cfg``), when it starts from them."""
    if not pretrained:
        return PrepRequest(size=size)
    from timm.models import get_pretrained_cfg

    source, _, where = model.partition(":")
    if source.lower() in ("hf-hub", "hf_hub", "local-dir"):
        found = _saved_pretrained_cfg(source.lower(), where)
    else:
        cfg = get_pretrained_cfg(model)
        found = None if cfg is None else cfg.to_dict()
    if not found:
        return PrepRequest(size=size)
    return PrepRequest(
        mean=tuple(found["mean"]) if found.get("mean") else None,
        std=tuple(found["std"]) if found.get("std") else None,
        size=size,
        interpolation=found.get("interpolation") or None,
        crop_pct=found.get("crop_pct") or None,
    )


def _saved_pretrained_cfg(source: str, where: str) -> dict | None:
    """The ``pretrained_cfg`` in an ``hf-hub:`` / ``local-dir:`` model's config.json (timm's
    ``save_for_hf`` layout), from the folder or the Hugging Face cache (downloaded when missing and
    allowed: timm fetches it to build the model anyway); ``None`` when it cannot be read."""
    import json
    import os
    from pathlib import Path

    try:
        if source == "local-dir":
            path = Path(where) / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            repo, _, revision = where.partition("@")
            path = Path(hf_hub_download(repo, "config.json", revision=revision or None,
                                        cache_dir=os.environ.get("HF_HUB_CACHE")))  # fmt: skip
        data = json.loads(path.read_text())
    except (OSError, ValueError, ImportError):  # no file, offline, not JSON: the model's build says so
        return None
    cfg = data.get("pretrained_cfg", data) if isinstance(data, dict) else None
    return cfg if isinstance(cfg, dict) else None


@dataclass(frozen=True)
class InputRequests:
    """What the student's and the teacher's configs ask of their inputs."""

    student: PrepRequest = PrepRequest()
    teacher: PrepRequest = PrepRequest()
    members: tuple[PrepRequest, ...] = ()  #: each of several teachers' (``teachers:``), in order

    def resolve(self, dataset: InputPrep) -> RunInputs:
        return RunInputs(
            student=self.student.resolve(dataset),
            teacher=self.teacher.resolve(dataset),
            members=tuple(member.resolve(dataset) for member in self.members),
        )


def requests_of(config: RunConfig) -> InputRequests:
    """What a run's config asks of its models' inputs: a model that starts from pretrained weights (not
    a checkpoint of kdzoo's) gets its ``pretrained_cfg``'s; ``data.interpolation`` / ``crop_pct``, when
    set, are the student's; ``teacher.img_size`` the teacher's size. Under ``teacher.assistants`` the
    student's teacher is the last assistant, trained as a student from scratch: the dataset's statistics
    at the run's size."""
    s, t, d = config.student, config.teacher, config.data
    student = pretrained_request(s.model, s.pretrained and not s.checkpoint)
    student = replace(
        student, interpolation=d.interpolation or student.interpolation, crop_pct=d.crop_pct or student.crop_pct
    )
    teacher = pretrained_request(t.model, t.pretrained and not t.checkpoint, t.img_size)
    # several teachers: each its own input, made from the first's (the ensemble's input)
    members = tuple(pretrained_request(m.model, m.pretrained and not m.checkpoint, m.img_size) for m in config.teachers)
    if t.assistants:  # the student's teacher is the last assistant, trained from scratch on this data
        teacher = PrepRequest(interpolation=d.interpolation, crop_pct=d.crop_pct)
    return InputRequests(student=student, teacher=teacher, members=members)


@dataclass(frozen=True)
class RunInputs:
    """The student's and the teacher's inputs, and the one the training batches are drawn at."""

    student: InputPrep
    teacher: InputPrep
    #: several teachers' (``teachers:``), in order; ``teacher`` is then the first's, the ensemble's input
    members: tuple[InputPrep, ...] = ()

    @property
    def render(self) -> InputPrep:
        larger = self.teacher if self.teacher.size > self.student.size else self.student
        return replace(larger, mean=self.student.mean, std=self.student.std)

    def as_record(self) -> dict:
        record = {"student": self.student.as_record(), "teacher": self.teacher.as_record()}
        return record | {"members": [m.as_record() for m in self.members]} if self.members else record


class InputAdapter(nn.Module):
    """``source``-prepared batches as ``target`` expects them, on the device: un-normalised, resized
    (anti-aliased, with the target's interpolation) when the sizes differ, normalised again."""

    def __init__(self, source: InputPrep, target: InputPrep):
        super().__init__()
        self.source, self.target = source, target
        self.resize = source.size != target.size
        mode = {"bicubic": "bicubic", "nearest": "nearest"}.get(target.interpolation, "bilinear")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1, 1, 1)
        mean_s, std_s = (torch.tensor(v, dtype=x.dtype, device=x.device).view(shape) for v in self.source_stats)
        x = x * std_s + mean_s
        if self.resize:
            size = (self.target.size, self.target.size)
            antialias = self.mode != "nearest"
            x = F.interpolate(x, size=size, mode=self.mode, antialias=antialias, align_corners=None)
        mean_t, std_t = (torch.tensor(v, dtype=x.dtype, device=x.device).view(shape) for v in self.target_stats)
        return (x - mean_t) / std_t

    @property
    def source_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.source.mean, self.source.std

    @property
    def target_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.target.mean, self.target.std


def adapter(source: InputPrep, target: InputPrep) -> InputAdapter | None:
    """The adapter from ``source`` to ``target``, or ``None`` when they are the same input."""
    same = (source.mean, source.std, source.size) == (target.mean, target.std, target.size)
    return None if same else InputAdapter(source, target)
