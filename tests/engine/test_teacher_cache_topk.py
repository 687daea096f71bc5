"""teacher.cache_topk (issue 32, item 3): each sample's K largest logits, their classes and one logit for
the rest, in place of every logit; with K = the number of classes the run equals the full cache's bit for
bit; with fewer, the probabilities at T = 1 are the teacher's top K and an even share of the rest."""

import torch

from kdzoo.engine import build_trainer
from kdzoo.engine.teacher_cache import full_logits, top_logits
from kdzoo.registry import registry
from tests.helpers import tiny_config

CACHED = ("teacher.cache=true", "data.augment=false", "train.epochs=2")


def _run(tmp_path, name, *sets):
    trainer = build_trainer(tiny_config(["kd"], *CACHED, *sets, out_dir=str(tmp_path)), registry(), tmp_path / name)
    trainer.fit()
    return trainer


def test_topk_of_every_class_equals_the_full_cache_bit_for_bit(tmp_path):
    full = _run(tmp_path, "full")
    topk = _run(tmp_path, "topk", "teacher.cache_topk=10")  # the synthetic data's 10 classes
    ignored = ("epoch_time_s", "images_per_s")  # what the clock says

    def measured(history):
        return [{k: v for k, v in {**r, **r["train"], "train": None}.items() if k not in ignored} for r in history]

    assert measured(full.history) == measured(topk.history)
    for key, value in full.student.state_dict().items():
        assert torch.equal(value, topk.student.state_dict()[key]), key
    assert topk.teacher_cache.folder != full.teacher_cache.folder  # two entries: their own keys
    assert "logits" in topk.teacher_cache.arrays  # K = every class: the logits themselves, the smaller form


def test_fewer_classes_keep_the_top_probabilities_and_share_the_rest(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(5, 10) * 3
    stored = top_logits(logits, 3)
    rebuilt = full_logits(stored["logits-topk"], stored["logits-index"].long(), stored["logits-rest"], 10)
    p, q = logits.softmax(1), rebuilt.softmax(1)
    top = logits.topk(3, dim=1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=1e-6)
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    shares = q[rest].view(5, 7)
    assert torch.allclose(shares, shares[:, :1].expand(5, 7), atol=1e-7)  # an even share
    assert torch.allclose(shares.sum(1), 1 - p.gather(1, top).sum(1), atol=1e-6)

    small = _run(tmp_path, "small", "teacher.cache_topk=3")
    full_bytes = 10 * 2  # per sample and view: every logit in float16
    stored_bytes = sum(a.nbytes for n, a in small.teacher_cache.arrays.items() if n.startswith("logits"))
    samples = small.data.train.num_samples
    assert stored_bytes == samples * (3 * 2 + 3 * 2 + 2) < samples * full_bytes  # float16 values, uint16 classes
