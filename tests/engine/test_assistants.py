"""Teacher-assistant chains (TAKD, issue 33 item 3): teacher -> assistant -> student in stages, each
assistant distilled by the run's methods from the link before it, cached, and resumed where a kill
left it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.engine import build, build_trainer
from kdzoo.engine.state import RunState
from kdzoo.engine.step import Step
from kdzoo.errors import KdzooError
from kdzoo.paths import using_cache
from kdzoo.registry import registry
from tests.helpers import tiny_config

# resnet10t (trained by kdzoo first) -> test_resnet (the assistant) -> mobilenetv3_small_050, on the
# embedded digits: the teacher's 1 step (its own batch of 64), the assistant's 2, the student's 2 epochs of 2
CHAIN = [
    "data.name=digits",
    "teacher.model=resnet10t",
    "teacher.assistants=[{model: test_resnet, epochs: 1}]",
    "train.epochs=2",
    "train.checkpoint_every=1",
]


def _config(tmp_path: Path, *extra: str):
    return tiny_config(["kd"], *CHAIN, *extra, pair="resnet->mobilenetv3", out_dir=str(tmp_path))


class _Crash(Exception):
    pass


def _crash_in_step(monkeypatch, calls: int) -> None:
    """The ``calls``-th training step from now (over every run: teacher, assistant, student) fails."""
    real, left = Step.__call__, [calls]

    def counting(self, batch, when):
        left[0] -= 1
        if left[0] == 0:
            raise _Crash
        return real(self, batch, when)

    monkeypatch.setattr(Step, "__call__", counting)


def _links_trained(monkeypatch) -> list[str]:
    trained: list[str] = []
    real = build._train_link

    def counting(config, folder, label, why, **options):
        trained.append(config.student.model)
        return real(config, folder, label, why, **options)

    monkeypatch.setattr(build, "_train_link", counting)
    return trained


def test_a_chain_runs_end_to_end_and_its_assistant_teaches_the_student(tmp_path, monkeypatch):
    trained = _links_trained(monkeypatch)
    trainer = build_trainer(_config(tmp_path), registry(), tmp_path / "run", show_progress=False)
    summary = trainer.fit()
    assert trained == ["test_resnet"]
    (link,) = summary["assistants"]
    folder = Path(link["run_dir"])
    assert link["model"] == "test_resnet" and folder.parent == tmp_path / "cache" / "assistants"
    # the assistant is a run of its own, kept: distilled from the teacher by the run's method
    link_summary = json.loads((folder / "summary.json").read_text())
    assert (link_summary["teacher"], link_summary["student"], link_summary["methods"]) == (
        "resnet10t",
        "test_resnet",
        ["kd"],
    )
    assert link_summary["epochs"] == 1 and (folder / "metrics.jsonl").is_file() and (folder / "key.json").is_file()
    # the student learnt from the assistant: its weights, and its accuracy measured as the assistant's run did
    assert (summary["teacher"], summary["student"]) == ("test_resnet", "mobilenetv3_small_050")
    assert summary["teacher_top1"] == link["top1"] == link_summary["student_top1"]
    weights = load_file(str(folder / "student.safetensors"))
    for name, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, weights[name]), name
    # another student through the same chain: the assistant is reused, not trained again
    other = build_trainer(
        _config(tmp_path, "student.model=test_resnet"), registry(), tmp_path / "other", show_progress=False
    )
    assert other.fit()["assistants"] == summary["assistants"] and trained == ["test_resnet"]


def test_a_chain_killed_in_the_assistant_and_then_in_the_student_goes_on_and_ends_as_never_killed(
    tmp_path, monkeypatch
):
    cfg = _config(tmp_path)
    with using_cache(tmp_path / "whole-cache"):
        whole = build_trainer(cfg, registry(), tmp_path / "whole", show_progress=False)
        whole_summary = whole.fit()
    trained = _links_trained(monkeypatch)
    with monkeypatch.context() as patched:  # the teacher's step, then the assistant's second
        _crash_in_step(patched, 3)
        with pytest.raises((_Crash, KdzooError)):
            build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    (folder,) = [entry for entry in (tmp_path / "cache" / "assistants").glob("test_resnet-*") if entry.is_dir()]
    assert RunState.load(folder / "last.pt").position.step == 1 and not (folder / "summary.json").exists()
    with monkeypatch.context() as patched:  # the assistant's last step, then the student's second
        _crash_in_step(patched, 3)
        with pytest.raises((_Crash, KdzooError)):
            build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False).fit()
    assert trained == ["test_resnet", "test_resnet"]  # the second time, from its checkpoint
    state = RunState.load(tmp_path / "crashed" / "last.pt")
    assert (state.position.epoch, state.position.step) == (0, 1)
    resumed = build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    summary = resumed.fit(resume=state)
    assert trained == ["test_resnet", "test_resnet"]  # the assistant was done: not trained again
    whole_link = Path(whole_summary["assistants"][0]["run_dir"])
    assert (whole_link / "student.safetensors").read_bytes() == (folder / "student.safetensors").read_bytes()
    for name, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name
    assert summary["student_top1"] == whole_summary["student_top1"]


def test_an_assistant_given_by_its_weights_file_is_used_as_it_is(tmp_path, monkeypatch):
    trained = _links_trained(monkeypatch)
    first = build_trainer(_config(tmp_path), registry(), tmp_path / "first", show_progress=False)
    link = Path(first.fit()["assistants"][0]["run_dir"])
    given = f"teacher.assistants=[{{model: test_resnet, checkpoint: {link / 'student.safetensors'}}}]"
    again = build_trainer(_config(tmp_path, given), registry(), tmp_path / "given", show_progress=False)
    summary = again.fit()
    assert trained == ["test_resnet"]  # the first run's only
    assert summary["assistants"] == [{"model": "test_resnet", "top1": None, "run_dir": None}]
    assert summary["teacher"] == "test_resnet"
    nowhere = tmp_path / "nowhere.safetensors"
    for chain in (
        f"[{{model: test_resnet, checkpoint: {nowhere}}}]",  # the student's teacher
        f"[{{model: test_resnet, checkpoint: {nowhere}}}, {{model: test_resnet}}]",
    ):  # another link's
        with pytest.raises(KdzooError, match=r"nowhere.safetensors"):
            build_trainer(_config(tmp_path, f"teacher.assistants={chain}"), registry(), tmp_path / "missing",
                          show_progress=False)  # fmt: skip


def test_assistants_are_checked_in_one_line():
    with pytest.raises(KdzooError, match=r"teacher.assistants\[0\].epochs"):
        load_config([], ["teacher.assistants=[{model: test_resnet, epochs: 0}]"], ["kd"], registry().config_classes())
    with pytest.raises(KdzooError, match=r"unknown config key 'teacher.assistants\[0\].modl'"):
        load_config([], ["teacher.assistants=[{modl: test_resnet}]"], ["kd"], registry().config_classes())
