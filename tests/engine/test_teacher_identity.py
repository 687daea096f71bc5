"""A teacher kdzoo trains depends on its own settings only, and an interrupted one resumes, saying so."""

import json

import pytest
import torch

from kdzoo.engine import build_trainer
from kdzoo.engine.loop import Trainer
from kdzoo.engine.teacher_files import teacher_cache_dir
from kdzoo.registry import registry
from tests.helpers import tiny_config


def _build(tmp_path, name, *sets, methods=("kd",)):
    return build_trainer(
        tiny_config(list(methods), *sets, out_dir=str(tmp_path)), registry(), tmp_path / name, show_progress=True
    )


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir())


def test_student_settings_never_change_the_teacher(tmp_path, capsys):
    a = build_trainer(tiny_config(["kd"], out_dir=str(tmp_path)), registry(), tmp_path / "a", show_progress=True)
    capsys.readouterr()
    # the student's own settings, its data settings included: the teacher trains on its own
    # (teacher.train.*), and data.root names where files are, not what they hold (synthetic reads none)
    student_side = [
        "optim.lr=0.2",
        "train.seed=3",
        "data.batch_size=16",
        "data.train_limit=32",
        "data.augment=false",
        "data.views=2",
        f"data.root={tmp_path / 'elsewhere'}",
    ]
    b_config = tiny_config(["kd"], *student_side, out_dir=str(tmp_path))
    b = build_trainer(b_config, registry(), tmp_path / "b", show_progress=True)
    assert "from cache" in capsys.readouterr().out  # the same teacher, not trained again
    assert _entries(tmp_path) == [teacher_cache_dir(b_config, b.data.contents).name]
    assert all(a.teacher.state_dict()[k].equal(v) for k, v in b.teacher.state_dict().items())

    build_trainer(tiny_config(["kd"], "teacher.train.optim.lr=0.01", out_dir=str(tmp_path)), registry(), tmp_path / "c")
    capsys.readouterr()
    build_trainer(
        tiny_config(["kd"], "teacher.train.seed=1", out_dir=str(tmp_path)),
        registry(),
        tmp_path / "d",
        show_progress=True,
    )
    assert len(_entries(tmp_path)) == 3  # the teacher's own settings do make another teacher, saying why
    assert "the nearest cached one differs in train.seed)" in capsys.readouterr().out


def _fashion(root, labels_shift=0):
    """A tiny Fashion-MNIST in its idx layout: 40 training and 20 test images, labels shifted by ``labels_shift``."""
    import gzip
    import struct

    import numpy as np

    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        for kind, array, magic in (
            ("images-idx3", rng.integers(0, 255, (n, 28, 28)), 2051),
            ("labels-idx1", (np.arange(n) + labels_shift) % 10, 2049),
        ):
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(header + array.astype(np.uint8).tobytes())


def test_data_relabelled_in_place_trains_a_new_teacher_and_fills_new_outputs_saying_why(tmp_path, capsys):
    root = tmp_path / "fashion"
    _fashion(root)
    sets = ["data.name=fashion_mnist", f"data.root={root}", "data.augment=false", "teacher.train.augment=false"]
    first = build_trainer(
        tiny_config(["kd"], *sets, out_dir=str(tmp_path)), registry(), tmp_path / "a", show_progress=True
    )
    assert "teacher: training" in capsys.readouterr().out
    _fashion(root, labels_shift=3)  # the same files, relabelled
    second = build_trainer(
        tiny_config(["kd"], *sets, out_dir=str(tmp_path)), registry(), tmp_path / "b", show_progress=True
    )
    printed = capsys.readouterr().out
    assert "teacher: training" in printed and "the nearest cached one differs in the data's contents" in printed
    assert len(_entries(tmp_path)) == 2
    assert any(not first.teacher.state_dict()[k].equal(v) for k, v in second.teacher.state_dict().items())

    # a given teacher (the same weights either way): its stored outputs follow the data too
    weights = tmp_path / "teacher.pt"
    torch.save(first.teacher.state_dict(), weights)
    cached = [*sets, f"teacher.checkpoint={weights}", "teacher.cache=true"]
    _build(tmp_path, "c", *cached)
    capsys.readouterr()
    _fashion(root)  # back to the first labels
    _build(tmp_path, "d", *cached)
    printed = capsys.readouterr().out
    assert "teacher-output cache: filling" in printed and "differs in the data's contents" in printed


def test_an_interrupted_teacher_training_resumes_and_says_so(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(["kd"], "teacher.train.epochs=2", out_dir=str(tmp_path))
    save = Trainer._save

    def killed_after_the_first_teacher_epoch(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.parts.label == "teacher ":
            raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "_save", killed_after_the_first_teacher_epoch)
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=True)
    capsys.readouterr()
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=True)
    folder = teacher_cache_dir(cfg, trainer.data.contents)
    assert f"teacher resuming {folder} at stage 'train' (1/1), epoch 2/2" in capsys.readouterr().out
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2]
