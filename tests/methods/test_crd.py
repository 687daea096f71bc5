"""CRD (issue 14, per-sample state): equal to torchdistill's CRDLoss on the same negatives; negatives of
other classes; the memory bank and queue by hand; bit-exact resume mid-epoch; the memory check; the
one-line errors where the data gives no indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo import KdzooError, TrainingSet
from kdzoo.losses.crd import nce_loss, other_class_draws
from kdzoo.toolkit import EmbeddingQueue, SampleMemory
from kdzoo_plugins.crd import ContrastMemory, ContrastQueue, CRDConfig
from tests.helpers import tiny_config, whole_and_resumed_after_crash

N, D, K, B = 256, 16, 20, 8  # N a power of two: torchdistill's alias table then builds (see below)


def _embeddings(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(F.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_() for _ in range(2))


def test_crd_equals_torchdistill_crdloss_on_the_same_negatives_over_two_steps():
    from torchdistill.losses.mid_level import CRDLoss

    torch.manual_seed(0)
    # torchdistill's alias-table set-up fails (`self.prob`) unless N * (1/N) == 1 exactly in float32
    reference = CRDLoss("s", "e", "t", input_size=D, output_size=N, num_negative_samples=K, num_samples=N)
    ours = ContrastMemory(CRDConfig(feat_dim=D, nce_k=K), TrainingSet(N, torch.arange(N) % 10))
    ours.student_memory.bank.copy_(reference.memory_v1)  # memory_v1 holds the student's embeddings
    ours.teacher_memory.bank.copy_(reference.memory_v2)
    g = torch.Generator().manual_seed(1)
    for step in range(2):  # the first step also sets the normalisers Z, the second uses them
        idx = torch.randperm(N, generator=g)[:B]
        keys = torch.cat([idx[:, None], torch.randint(0, N, (B, K), generator=g)], dim=1)
        ours.draw = lambda indices, keys=keys: keys
        s1, t1 = _embeddings(10 + step)
        s2, t2 = (v.detach().clone().requires_grad_() for v in (s1, t1))
        mine = ours(s1, t1, idx)
        io_s = {"s": {"output": s2}, "e": {"input": {"pos_idx": idx, "contrast_idx": keys}}}
        theirs = reference(io_s, {"t": {"output": t2}}).squeeze()
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=0)
        mine.backward()
        theirs.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.student_memory.bank, reference.memory_v1, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.teacher_memory.bank, reference.memory_v2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.z, reference.params[2:4], rtol=1e-6, atol=0)


def test_nce_loss_by_hand():
    scores = torch.tensor([[0.9, 0.2, 0.05], [0.3, 0.6, 0.1]])
    n, eps = 10, 1e-7
    noise = 2 / n
    by_hand = 0.0
    for row in scores.tolist():
        by_hand -= torch.log(torch.tensor(row[0] / (row[0] + noise + eps))).item()
        by_hand -= sum(torch.log(torch.tensor(noise / (p + noise + eps))).item() for p in row[1:])
    assert nce_loss(scores, n).item() == pytest.approx(by_hand / 2, rel=1e-6)


def test_negatives_come_from_other_classes_uniformly():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 1, 0])
    counts = torch.bincount(labels)
    by_class, start = torch.argsort(labels, stable=True), torch.cumsum(counts, 0) - counts
    positives = torch.arange(len(labels)).repeat_interleave(2000)
    uniform = torch.rand(len(positives), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    drawn = other_class_draws(uniform, labels[positives], by_class, start, counts)
    assert (labels[drawn] != labels[positives, None]).all()
    for c in range(3):  # every sample of the other classes, about equally often
        rows = labels[positives] == c
        seen = torch.bincount(drawn[rows].flatten(), minlength=len(labels)).float()
        others = seen[labels != c]
        assert (seen[labels == c] == 0).all() and (others > 0).all()
        assert (others.max() / others.min()).item() < 1.25


def test_the_draw_is_seeded_by_the_step_and_excludes_the_positives_class():
    labels = torch.arange(N) % 4
    memory = ContrastMemory(CRDConfig(feat_dim=D, nce_k=K), TrainingSet(N, labels))
    idx = torch.arange(B) * 3
    first = memory.draw(idx)
    assert torch.equal(first[:, 0], idx) and first.shape == (B, K + 1)
    assert (labels[first[:, 1:]] != labels[idx, None]).all()
    assert torch.equal(memory.draw(idx), first)  # the same step draws the same negatives
    memory.step += 1
    assert not torch.equal(memory.draw(idx), first)
    again = ContrastMemory(CRDConfig(feat_dim=D, nce_k=K), TrainingSet(N, labels))
    again.load_state_dict(memory.state_dict())  # the seed and step travel in the checkpoint
    assert torch.equal(again.draw(idx), memory.draw(idx))


def test_memory_bank_update_by_hand():
    memory = SampleMemory(5, 3, momentum=0.5)
    before = memory.bank.clone()
    values = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    memory.update(torch.tensor([4, 1]), values)
    for row, i in enumerate([4, 1]):
        mixed = 0.5 * before[i] + 0.5 * values[row]
        torch.testing.assert_close(memory.bank[i], mixed / mixed.norm())
    assert torch.equal(memory.bank[[0, 2, 3]], before[[0, 2, 3]])


def test_queue_overwrites_its_oldest_entries_first():
    queue = EmbeddingQueue(5, 2)
    for start in (0, 3):  # 3 + 3 values: the sixth wraps around to slot 0
        queue.push(torch.arange(start * 2, start * 2 + 6, dtype=torch.float).view(3, 2))
    assert queue.items[:, 0].tolist() == [10.0, 2.0, 4.0, 6.0, 8.0] and int(queue.pointer) == 1
    queue.push(torch.ones(7, 2))  # more than it holds: the last five
    assert torch.equal(queue.items, torch.ones(5, 2)) and int(queue.pointer) == 0


def test_queue_contrasts_the_other_models_current_embedding_with_its_queue():
    torch.manual_seed(0)
    contrast = ContrastQueue(CRDConfig(feat_dim=D, nce_k=K), TrainingSet(N))
    student, teacher = _embeddings(3)
    queue_t = contrast.teacher_queue.items.clone()
    loss = contrast(student, teacher)
    scores = torch.exp(torch.cat([(student * teacher).sum(1, keepdim=True), student @ queue_t.T], 1) / 0.07)
    assert contrast.z[0].item() == pytest.approx(scores.mean().item() * N, rel=1e-6)
    assert torch.isfinite(loss) and loss.requires_grad
    assert torch.equal(contrast.teacher_queue.items[:B], teacher.detach())  # pushed after the loss


def _cfg(tmp_path, *extra):
    return tiny_config(
        ["crd"], "crd.nce_k=40", "train.epochs=2", "train.checkpoint_every=1", *extra, out_dir=str(tmp_path)
    )


def test_a_run_killed_mid_epoch_resumes_its_memory_banks_bit_exactly(tmp_path):
    # the 4th loss computation is epoch 2's step 2 of 2: the run resumes from the checkpoint after its step 1
    whole, resumed, state = whole_and_resumed_after_crash(_cfg(tmp_path), tmp_path, calls=4)
    assert (state.position.epoch, state.position.step) == (1, 1)
    for part in ("student", "modules"):
        expected, got = getattr(whole, part).state_dict(), getattr(resumed, part).state_dict()
        assert expected.keys() == got.keys()
        for name, value in expected.items():
            assert torch.equal(value, got[name]), f"{part}.{name}"
    assert "contrast.student_memory.bank" in "|".join(whole.modules.state_dict())


def test_memory_check_names_the_nce_k_that_fits_or_the_queue(monkeypatch):
    import kdzoo.toolkit.memory

    teacher, student = (__import__("timm").create_model(m, num_classes=10) for m in ("resnet10t", "test_resnet"))
    # more samples than 4 x 16385 keys: each anchor's keyed rows are gathered, 1 GiB for 2 x 64 x 16385 x 128
    train_set = TrainingSet(200_000, torch.arange(200_000) % 10, batch_size=64)
    monkeypatch.setattr(kdzoo.toolkit.memory, "free_bytes", lambda device: 2 * 2**30)  # 2 GiB free: 1 GiB budget
    with pytest.raises(KdzooError, match=r"crd \(memory=bank, nce_k=16384, 200000 samples\) needs 1\.") as error:
        kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32, train_set=train_set)
    message = str(error.value)
    assert "\n" not in message
    suggested = int(message.split("crd.nce_k=")[1].split()[0])
    assert 10_000 < suggested < 16384
    kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32, train_set=train_set, nce_k=suggested)
    huge = TrainingSet(20_000_000, batch_size=64)  # a bank of 19 GiB: no nce_k makes it fit
    with pytest.raises(KdzooError, match="set crd.memory=queue"):
        kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32, train_set=huge, negatives="any")
    kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32, train_set=huge, memory="queue")


def test_without_a_training_set_or_indices_crd_says_what_to_give(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(KdzooError, match="pass train_set=kdzoo.TrainingSet"):
        kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32)
    objective = kdzoo.get_method(
        "crd", teacher=teacher, student=student, img_size=32, train_set=TrainingSet(64, torch.arange(64) % 4), nce_k=8
    )
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with pytest.raises(KdzooError, match="needs each batch's sample indices"):
        objective(x, y)
    objective(x, y, indices=torch.arange(4)).backward()
    queue = kdzoo.get_method(
        "crd", teacher=teacher, student=student, img_size=32, train_set=TrainingSet(64), nce_k=8, memory="queue"
    )
    queue(x, y).backward()  # a queue needs no indices, nor labels
    with pytest.raises(KdzooError, match="needs every training sample's label"):
        kdzoo.get_method("crd", teacher=teacher, student=student, img_size=32, train_set=TrainingSet(64))


@pytest.fixture
def tiny_pair():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=4), timm.create_model("test_resnet", num_classes=4)


def test_every_kind_of_batch_source_hands_over_sample_indices():
    from kdzoo.data import IterableBatches, LoaderBatches

    class Images:
        targets = [3, 1, 2, 0, 1, 3]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return torch.full((1, 4, 4), float(i)), self.targets[i]

    loader = LoaderBatches(Images(), batch_size=3, train=True, num_workers=1, seed=0)
    seen = []
    for x, y, idx in loader.epoch(0, with_index=True):
        assert torch.equal(x[:, 0, 0, 0].long(), idx) and torch.equal(y, torch.tensor(Images.targets)[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(6)) and loader.class_labels().tolist() == Images.targets
    batches = [(torch.zeros(2, 1), torch.zeros(2), torch.tensor([4, 5])), (torch.zeros(2, 1), torch.zeros(2))]
    handed = [rest for _, _, rest in IterableBatches(batches).epoch(0, with_index=True)]
    assert handed[0].tolist() == [4, 5] and handed[1] is None  # a user's (images, labels) batch: no indices


def test_ddp_leaves_the_memory_banks_to_their_gathered_updates(tiny_pair):
    from kdzoo.engine.distributed import TrainingStep, replicated_buffers

    teacher, student = tiny_pair
    objective = kdzoo.get_method(
        "crd", teacher=teacher, student=student, img_size=32, train_set=TrainingSet(64, torch.arange(64) % 4), nce_k=8
    )
    names = replicated_buffers(TrainingStep(student, objective))
    prefix = "objective.method_modules.crd.contrast."
    assert {prefix + "z", prefix + "student_memory.bank", prefix + "teacher_memory.bank"} <= set(names)
    assert all(n.startswith(prefix) for n in names)  # labels by class too: the same data on every process
    assert not any("bn" in n or "running" in n for n in names)  # BatchNorm statistics are still broadcast


def test_scoring_every_row_of_a_small_bank_equals_gathering_the_keyed_rows(monkeypatch):
    import kdzoo_plugins.crd as crd

    assert crd.scores_every_row(50_000, 16384) and not crd.scores_every_row(1_281_167, 16384)  # CIFAR; ImageNet
    torch.manual_seed(0)
    memory = ContrastMemory(CRDConfig(feat_dim=D, nce_k=K), TrainingSet(N, torch.arange(N) % 10))
    keys = memory.draw(torch.arange(B))
    student, _ = _embeddings(5)
    routes = {}
    for every_row in (False, True):
        monkeypatch.setattr(crd, "scores_every_row", lambda n, k, every_row=every_row: every_row)
        anchor = student.detach().clone().requires_grad_()
        scores = memory.scores(anchor, memory.teacher_memory, keys)
        scores.sum().backward()
        routes[every_row] = (scores.detach(), anchor.grad)
    torch.testing.assert_close(routes[True][0], routes[False][0], rtol=1e-5, atol=0)
    # gradients of scores up to exp(1 / 0.07) = 1.6e6, summed in another order: float32 rounding
    torch.testing.assert_close(routes[True][1], routes[False][1], rtol=1e-4, atol=1e-6)
