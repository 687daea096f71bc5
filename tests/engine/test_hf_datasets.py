"""Hugging Face datasets through timm's reader (data.name=hfds/NAME, issue 32 item 1): a dataset saved
locally by the test (its parquet files, as `datasets` writes them) trains one epoch under kd and crd; a
source that cannot be read is one line. The run reads nothing from the network (HF_HUB_OFFLINE=1)."""

import numpy as np
import pytest

from kdzoo.config import DataConfig, load_config
from kdzoo.data import load_data
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.registry import registry
from tests.helpers import coloured_image, teacher_weights

datasets = pytest.importorskip("datasets")  # kdzoo[hf], part of kdzoo[test]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-class image dataset in a folder of parquet files (train and validation splits), and a
    teacher's weights for it."""
    root = tmp_path_factory.mktemp("hfds")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])})
    rng = np.random.default_rng(0)
    (root / "squares" / "data").mkdir(parents=True)
    for split, count in (("train", 24), ("validation", 9)):
        labels = [i % 3 for i in range(count)]
        images = [coloured_image(label, rng) for label in labels]
        rows = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        rows.to_parquet(str(root / "squares" / "data" / f"{split}.parquet"))
    teacher_weights(root / "teacher.safetensors", 3)
    return root


@pytest.mark.parametrize("method", ["kd", "crd"])
def test_a_local_hugging_face_dataset_trains_an_epoch(method, saved, tmp_path):
    sets = [
        f"data.name=hfds/{saved / 'squares'}",
        f"data.root={tmp_path / 'hf-cache'}",  # the datasets library's cache for this run
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=1",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={saved / 'teacher.safetensors'}",
        "student.model=test_resnet",
        "train.epochs=1",
    ]
    config = load_config([], sets, [method], registry().config_classes())
    trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    assert trainer.data.num_classes == 3 and trainer.data.train.num_samples == 24
    assert trainer.data.train.class_labels().tolist() == [i % 3 for i in range(24)]  # read without decoding
    assert trainer.data.contents is not None  # the datasets library's fingerprints key the caches
    trainer.fit()
    record = trainer.history[-1]
    assert np.isfinite(record["train"]["loss"]) and method in record["train"]


def test_a_dataset_that_cannot_be_read_is_one_line(tmp_path):
    with pytest.raises(KdzooError, match=r"data.name 'hfds/.*nothing': cannot read split 'train'"):
        load_data(DataConfig(name=f"hfds/{tmp_path / 'nothing'}", root=str(tmp_path / "cache")), seed=0)
    with pytest.raises(KdzooError, match=r"data.name 'wds/.*nothing': no webdataset shards for split 'train'"):
        load_data(DataConfig(name=f"wds/{tmp_path / 'nothing'}"), seed=0)
