"""Bad input of every kind ends in one line saying what is wrong and what to do, never a traceback."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import kdzoo
from kdzoo.cli import main
from tests.helpers import TINY, NaNFromTheStart, NoConfig, registry_with_method


def _sets(*pairs):
    return [a for s in pairs for a in ("--set", s)]


def _run(tmp_path, *extra):
    base = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    return ["run", "--quiet", "--method", "kd", *_sets(*base, f"train.out_dir={tmp_path / 'runs'}", *extra)]


# ------------------------------------------------------------------ image folders
def _png(path, color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)


def _folder(tmp_path, classes=("a", "b"), broken=None):
    for split in ("train", "val"):
        (tmp_path / "img" / split).mkdir(parents=True, exist_ok=True)
        for c in classes:
            for i in range(4):
                _png(tmp_path / "img" / split / c / f"{i}.png")
    if broken:
        broken(tmp_path / "img" / "train" / classes[-1] / "bad.png")
    return _run(tmp_path, "data.name=imagefolder", f"data.root={tmp_path / 'img'}", "data.batch_size=4")


def empty_imagefolder(tmp_path):
    return _folder(tmp_path, classes=())


def one_class(tmp_path):
    return _folder(tmp_path, classes=("only",))


def undecodable_image(tmp_path):
    return _folder(tmp_path, broken=lambda p: p.write_bytes(b"this is not an image"))


def truncated_image(tmp_path):
    def truncate(path):
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return _folder(tmp_path, broken=truncate)


# ------------------------------------------------------------------ idx files (Fashion-MNIST)
def _idx(path, array, magic, cut=0):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[: len(raw) - cut])


def _fashion(tmp_path, images_magic=2051, train_labels=40, cut=0):
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = train_labels if prefix == "train" else n
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), images_magic, cut)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(labels) % 10, 2049)
    return _run(tmp_path, "data.name=fashion_mnist", f"data.root={root}", "data.batch_size=8")


def truncated_idx(tmp_path):
    return _fashion(tmp_path, cut=100)


def wrong_magic(tmp_path):
    return _fashion(tmp_path, images_magic=2049)


def counts_differ(tmp_path):
    return _fashion(tmp_path, train_labels=30)


# ------------------------------------------------------------------ the machine
def disk_full(tmp_path, monkeypatch):
    def full(*args, **kwargs):  # what torch.save raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    return _run(tmp_path)


def read_only_out_dir(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()  # root ignores permission bits: use a folder nobody can write to
        folder = "/sys/kdzoo-runs"
    except OSError:
        pass
    return _run(tmp_path, f"train.out_dir={folder}")


# ------------------------------------------------------------------ configs
def zero_epochs(tmp_path):
    return _run(tmp_path, "train.epochs=0")


def yaml_syntax_error(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("methods: [kd]\ntrain:\n  epochs: [1, 2\n")
    return ["run", "--config", str(config)]


# ------------------------------------------------------------------ plugins
def _bad_term(value):
    class BadTerm:
        def __init__(self, config):
            pass

        @kdzoo.hookimpl
        def kdzoo_compute_losses(self, student):
            return value(student.logits)

    return BadTerm


PLUGIN_RESULTS = {
    "a float": lambda logits: {"bad": 0.5},
    "a vector": lambda logits: {"bad": logits.mean(dim=1)},
    "None": lambda logits: {"bad": None},
    "not a dict": lambda logits: logits.mean(),
}


def _plugin(tmp_path, monkeypatch, result):
    reg = registry_with_method("badterm", _bad_term(result), NoConfig, needs_teacher=False)
    monkeypatch.setattr("kdzoo.cli.registry", lambda: reg)
    return [*_run(tmp_path)[:2], "--method", "badterm", *_run(tmp_path)[4:]]


def nan_before_any_checkpoint(tmp_path, monkeypatch):
    reg = registry_with_method("flaky", NaNFromTheStart, NoConfig, needs_teacher=False)
    monkeypatch.setattr("kdzoo.cli.registry", lambda: reg)
    return [*_run(tmp_path)[:2], "--method", "flaky", *_run(tmp_path)[4:]]


CASES = {
    "empty imagefolder": (empty_imagefolder, ["imagefolder:", "train", "class folder"]),
    "one class": (one_class, ["has 1 class folder (only)", "at least two"]),
    "undecodable image": (undecodable_image, ["bad.png cannot be decoded", "remove or replace it"]),
    "truncated image": (truncated_image, ["bad.png cannot be decoded"]),
    "truncated idx file": (truncated_idx, ["train-images-idx3-ubyte.gz", "is truncated"]),
    "wrong magic number": (wrong_magic, ["train-images-idx3-ubyte.gz", "magic number 0x00000801", "0x00000803"]),
    "image and label counts differ": (counts_differ, ["holds 40 images but", "holds 30 labels"]),
    "full disk": (disk_full, ["could not write checkpoint", "PytorchStreamWriter failed", "previous checkpoint"]),
    "read-only out_dir": (read_only_out_dir, ["cannot write to", "set train.out_dir to a writable folder"]),
    "train.epochs=0": (zero_epochs, ["train.epochs", "must be >= 1"]),
    "unknown compile backend": (
        lambda tmp_path: _run(tmp_path, "train.compile_objective=true", "train.compile_backend=aot_eagr"),
        ["train.compile_backend", "no backend 'aot_eagr'", "did you mean 'aot_eager'", "inductor"],
    ),
    "YAML syntax error": (yaml_syntax_error, ["broken.yaml is not valid YAML at line 4, column 1"]),
    "NaN before any checkpoint": (nan_before_any_checkpoint, ["'flaky' became NaN/inf", "no checkpoint was written"]),
    **{
        f"plugin term is {kind}": (
            lambda tmp_path, monkeypatch, result=result: _plugin(tmp_path, monkeypatch, result),
            ["method 'badterm'", "kdzoo_compute_losses"],
        )
        for kind, result in PLUGIN_RESULTS.items()
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, tmp_path, monkeypatch):
    make, needles = CASES[case]
    args = make(tmp_path, monkeypatch) if "monkeypatch" in make.__code__.co_varnames else make(tmp_path)
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not os.path.exists(tmp_path / "runs" / "kd-test_resnet-seed0" / "summary.json")
