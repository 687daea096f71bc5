"""A package adds a dataset through the same entry-point door as methods (kdzoo_register_datasets):
listed by `kdzoo list --datasets`, selected by data.name, trained on, and checked by the conformance kit
(kdzoo.testing.check_dataset). Issue 32, item 2."""

import os
import subprocess
import sys

import pytest

from kdzoo.errors import KdzooError
from kdzoo.registry import load_registry, reset_registry
from kdzoo.testing import check_dataset
from tests.helpers import installed_distribution

# a third-party package: coloured squares, one colour per class, made on access (no files needed)
SQUARES = """
import numpy as np
from PIL import Image

import kdzoo


class Squares:
    def __init__(self, count, seed):
        self.labels = [i % 3 for i in range(count)]
        self.seed = seed

    @property
    def targets(self):
        return self.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        label = self.labels[index]
        rng = np.random.default_rng(self.seed * 1000 + index)
        colour = np.array([200 if c == label else 40 for c in range(3)])
        pixels = np.clip(colour + rng.normal(0, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels), label


def load(root):
    if root is not None and root.endswith("missing"):
        raise kdzoo.KdzooError(f"squares: {root} not found; give data.root a folder of squares")
    return kdzoo.DatasetSplits(train=Squares(24, 0), val=Squares(9, 1), num_classes=3)


@kdzoo.hookimpl
def kdzoo_register_datasets(register):
    register(kdzoo.DatasetInfo(name="squares", load=load, summary="coloured squares, 3 classes"))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    installed_distribution(site, "kdzoo_squares", "kdzoo_squares", SQUARES, {"squares": "kdzoo_squares"})
    clash = "import kdzoo\n\n@kdzoo.hookimpl\ndef kdzoo_register_datasets(register):\n"
    clash += "    register(kdzoo.DatasetInfo(name='squares', load=lambda root: None))\n"
    installed_distribution(site, "kdzoo_more_squares", "kdzoo_more_squares", clash, {"more": "kdzoo_more_squares"})
    monkeypatch.syspath_prepend(str(site))
    reset_registry()  # the process's registry, loaded again with the packages above
    yield site
    reset_registry()


def test_a_dataset_package_is_listed_trains_and_conforms(site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run(
        [sys.executable, "-m", "kdzoo", "list", "--datasets"], capture_output=True, text=True, env=env, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    assert "digits" in listed.stdout and "imagefolder" in listed.stdout
    assert "squares" in listed.stdout and "coloured squares, 3 classes" in listed.stdout
    assert "kdzoo_squares 0.3" in listed.stdout

    registry = load_registry()
    assert registry.datasets["squares"].distribution == "kdzoo_squares"
    # the second package's 'squares' is refused in one line, the first one's kept
    assert "dataset name 'squares' is already registered" in registry.failures["more"]

    check_dataset("squares", tmp_path / "conformance", method="kd")


def test_unknown_and_broken_datasets_are_one_line(site, tmp_path):
    from kdzoo.config import DataConfig
    from kdzoo.data import load_data

    with pytest.raises(KdzooError, match=r"unknown dataset 'squarez' \(did you mean 'squares'\?\).*squares"):
        load_data(DataConfig(name="squarez"), seed=0, plugins=load_registry().datasets)
    with pytest.raises(KdzooError, match="squares: .*missing not found"):
        load_data(DataConfig(name="squares", root=str(tmp_path / "missing")), seed=0, plugins=load_registry().datasets)
