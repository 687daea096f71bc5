"""A teacher kdzoo trains depends on its own settings only, and an interrupted one resumes, saying so."""

import json

import pytest

from kdzoo.engine import build_trainer
from kdzoo.engine.loop import Trainer
from kdzoo.engine.teacher import teacher_cache_dir
from kdzoo.registry import registry
from tests.helpers import tiny_config


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir())


def test_student_settings_never_change_the_teacher(tmp_path, capsys):
    a = build_trainer(tiny_config(["kd"], out_dir=str(tmp_path)), registry(), tmp_path / "a", show_progress=True)
    capsys.readouterr()
    b_config = tiny_config(["kd"], "optim.lr=0.2", "train.seed=3", "data.batch_size=16", out_dir=str(tmp_path))
    b = build_trainer(b_config, registry(), tmp_path / "b", show_progress=True)
    assert "from cache" in capsys.readouterr().out  # the same teacher, not trained again
    assert _entries(tmp_path) == [teacher_cache_dir(b_config).name]
    assert all(a.teacher.state_dict()[k].equal(v) for k, v in b.teacher.state_dict().items())

    build_trainer(tiny_config(["kd"], "teacher.train.optim.lr=0.01", out_dir=str(tmp_path)), registry(), tmp_path / "c")
    build_trainer(tiny_config(["kd"], "teacher.train.seed=1", out_dir=str(tmp_path)), registry(), tmp_path / "d")
    assert len(_entries(tmp_path)) == 3  # the teacher's own settings do make another teacher


def test_an_interrupted_teacher_training_resumes_and_says_so(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(["kd"], "teacher.train.epochs=2", out_dir=str(tmp_path))
    save = Trainer._save

    def killed_after_the_first_teacher_epoch(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.label == "teacher ":
            raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "_save", killed_after_the_first_teacher_epoch)
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=True)
    capsys.readouterr()
    build_trainer(cfg, registry(), tmp_path / "run", show_progress=True)
    assert f"teacher resuming {teacher_cache_dir(cfg)} at stage 'train' (1/1), epoch 2/2" in capsys.readouterr().out
    lines = (teacher_cache_dir(cfg) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2]
