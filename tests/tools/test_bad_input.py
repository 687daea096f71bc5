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


def fifo_image(tmp_path):
    return _folder(tmp_path, broken=lambda p: os.mkfifo(p))  # reading it would block forever


def symlink_loop(tmp_path):
    return _folder(tmp_path, broken=lambda p: p.with_name("loop").symlink_to(".."))  # train/b/loop -> train


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


# ------------------------------------------------------------------ CIFAR
def damaged_cifar(tmp_path):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x04 truncated")  # what a cut download leaves
    return _run(tmp_path, "data.name=cifar10", f"data.root={tmp_path / 'cifar'}")


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


def _config_file(tmp_path, raw: bytes):
    config = tmp_path / "c.yaml"
    config.write_bytes(raw)
    return [*_run(tmp_path), "--config", str(config)]


def alias_bomb(tmp_path):
    """~540 bytes that expand to 9^9 values once anything walks them (formatting an error did: 2.5 GB)."""
    lines = ["student:", "  kwargs:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return _config_file(tmp_path, "\n".join(lines).encode())


def huge_kwargs_in_error(tmp_path):
    """kwargs a model does not take, large but within bounds: the error shows them cut short."""
    return _run(tmp_path, "student.kwargs={not_an_argument: " + str(list(range(500))) + "}")


def bad_config(*sets):
    return lambda tmp_path: _run(tmp_path, *sets)


def missing_checkpoint_path(tmp_path):
    return _run(tmp_path, f"student.kwargs.checkpoint_path={tmp_path / 'nowhere.pth'}")


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
    "FIFO named *.png": (fifo_image, ["bad.png is a FIFO, not an image file", "remove it"]),
    "symlink loop in an image folder": (symlink_loop, ["train/b/loop and", "same folder", "symlink loop", "remove"]),
    "damaged CIFAR folder": (damaged_cifar, ["CIFAR10:", "data_batch_1 is damaged", "complete copy"]),
    "truncated idx file": (truncated_idx, ["train-images-idx3-ubyte.gz", "is truncated"]),
    "wrong magic number": (wrong_magic, ["train-images-idx3-ubyte.gz", "magic number 0x00000801", "0x00000803"]),
    "image and label counts differ": (counts_differ, ["holds 40 images but", "holds 30 labels"]),
    "full disk": (disk_full, ["could not write checkpoint", "PytorchStreamWriter failed", "no checkpoint was written"]),
    "read-only out_dir": (read_only_out_dir, ["cannot write to", "set train.out_dir to a writable folder"]),
    "train.epochs=0": (zero_epochs, ["train.epochs", "must be >= 1"]),
    "unknown compile backend": (
        lambda tmp_path: _run(tmp_path, "train.compile_objective=true", "train.compile_backend=aot_eagr"),
        ["train.compile_backend", "no backend 'aot_eagr'", "did you mean 'aot_eager'", "inductor"],
    ),
    "YAML syntax error": (yaml_syntax_error, ["broken.yaml is not valid YAML at line 4, column 1"]),
    "YAML alias bomb": (alias_bomb, ["c.yaml: more than 10000 values once its YAML aliases are expanded"]),
    "UTF-16 config file": (
        lambda tmp_path: _config_file(tmp_path, "train: {epochs: 1}\n".encode("utf-16")),
        ["c.yaml is not UTF-8 text", "save it as UTF-8"],
    ),
    "Latin-1 config file": (
        lambda tmp_path: _config_file(tmp_path, "train: {name: caf\u00e9}\n".encode("latin-1")),
        ["c.yaml is not UTF-8 text (byte 0xe9 at offset 17)", "save it as UTF-8"],
    ),
    "kwargs in an error are cut short": (
        huge_kwargs_in_error,
        ["cannot build student", "not_an_argument", "[0, 1, 2, 3, 4, 5, ...]"],
    ),
    "kwargs.checkpoint_path missing": (missing_checkpoint_path, ["student.kwargs.checkpoint_path: file not found"]),
    "train_limit=-1000": (bad_config("data.train_limit=-1000"), ["data.train_limit", "must be >= 1, got -1000"]),
    "train_limit=0": (bad_config("data.train_limit=0"), ["data.train_limit", "must be >= 1, got 0"]),
    "img_size=1": (bad_config("data.img_size=1"), ["data.img_size", "must be >= 8, got 1"]),
    "negative views": (bad_config("data.views=-2"), ["data.views", "must be >= 0"]),
    "negative num_workers": (bad_config("data.num_workers=-1"), ["data.num_workers", "must be >= 0"]),
    "NaN learning rate": (bad_config("optim.lr=.nan"), ["optim.lr", "must be a finite number, got nan"]),
    "infinite learning rate": (bad_config("optim.lr=.inf"), ["optim.lr", "finite number"]),
    "negative momentum": (bad_config("optim.momentum=-0.9"), ["optim.momentum", "must be in [0, 1)"]),
    "negative weight decay": (bad_config("optim.weight_decay=-1e-4"), ["optim.weight_decay", "must be >= 0"]),
    "log_every=0": (bad_config("train.log_every=0"), ["train.log_every", "must be > 0, got 0"]),
    "negative kd_weight": (bad_config("kd.kd_weight=-0.9"), ["kd.kd_weight", "must be >= 0, got -0.9"]),
    "zero temperature": (bad_config("kd.temperature=0"), ["kd.temperature", "must be > 0"]),
    **{
        f"train.name={name}": (bad_config(f"train.name={name}"), ["train.name", "single folder name"])
        for name in ("../escaped", "/tmp/kdzoo-escaped", "a/b", "..")
    },
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
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output[:2000]
    assert len(lines[0]) < 1000, f"an error line of {len(lines[0])} characters: {lines[0][:300]}"
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not os.path.exists(tmp_path / "runs" / "kd-test_resnet-seed0" / "summary.json")
