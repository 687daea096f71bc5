"""CRD: Tian, Krishnan, Isola. "Contrastive Representation Distillation". ICLR 2020.
https://arxiv.org/abs/1910.10699

Both models' pooled embeddings go through a trainable linear embedding (128-d) and are
L2-normalised. Each side keeps a memory bank of one embedding per training sample (momentum 0.5);
the student's embedding of sample i is contrasted with the teacher's memory of i (the positive)
and of K = 16,384 negatives drawn from other classes, and the teacher's embedding likewise with the
student's memory, by noise-contrastive estimation (temperature 0.07, the normaliser Z estimated on
the first batch). Defaults: RepDistiller's ``train_student.py`` (``--nce_k 16384 --nce_t 0.07
--nce_m 0.5 --feat_dim 128 --mode exact``) and its CIFAR-100 command for CRD (``-r 1 -a 0 -b 0.8``:
CE 1 + CRD 0.8, no KD term; stack ``kd`` for CRD+KD). Equal to torchdistill's ``CRDLoss`` given the
same negatives (``tests/methods/test_crd.py``).

Where RepDistiller draws the negatives in its data loader's workers (numpy's global RNG), kdzoo
draws them for the global batch from a generator seeded by (run seed, step), on the device: a
resumed run draws the same ones, and N processes draw what one process draws. ``memory: queue``
replaces the banks by MoCo-style queues of the last K embeddings of each side (memory K x 128,
not N x 128, for datasets whose bank would not fit): the positive is then the other model's current
embedding of the sample, and the negatives are shared by the batch (no class is excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from kdzoo import KdzooError, MethodInfo, Taps, TrainingSet, hookimpl, registering
from kdzoo.losses.crd import contrast_scores, nce_loss, other_class_draws
from kdzoo.toolkit import (
    EmbeddingQueue,
    ReplicatedState,
    SampleMemory,
    check_fits,
    gather_rows,
    local_rows,
    mean_across,
)

FLOAT_BYTES, INDEX_BYTES = 4, 8


@dataclass
class CRDConfig:
    weight: float = 0.8
    ce_weight: float = 1.0
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    negatives: Literal["other_classes", "any"] = "other_classes"
    memory: Literal["bank", "queue"] = "bank"

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import between, non_negative, positive

        non_negative(self, where, "weight", "ce_weight")
        positive(self, where, "feat_dim", "nce_k", "nce_t")
        between(self, where, 0, 1, "nce_m")  # the memory's momentum


class Embed(nn.Module):
    """A linear map to the contrast space, then L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x.flatten(1))
        return z / z.pow(2).sum(1, keepdim=True).pow(0.5)


class Contrast(ReplicatedState):
    """What both memory forms share: the normaliser Z of each side, estimated once on the first batch
    (averaged over processes), then kept, and the NCE loss of both sides."""

    def __init__(self, num_samples: int, temperature: float):
        super().__init__()
        self.num_samples, self.temperature = num_samples, temperature
        self.register_buffer("z", torch.full((2,), -1.0))  # (student side, teacher side); < 0: not yet
        self._z_known = False  # a Python flag: reading the buffer each step would sync the host

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = False

    def loss(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        if not self._z_known:
            if bool((self.z < 0).any()):
                means = torch.stack([student_scores.detach().mean(), teacher_scores.detach().mean()])
                self.z.copy_(mean_across(means) * self.num_samples)
            self._z_known = True
        return nce_loss(student_scores / self.z[0], self.num_samples) + nce_loss(
            teacher_scores / self.z[1], self.num_samples
        )


class ContrastMemory(Contrast):
    """Per-sample memory banks of both sides, and the draw of each batch's negatives."""

    def __init__(self, config: CRDConfig, train_set: TrainingSet):
        super().__init__(train_set.num_samples, config.nce_t)
        self.k, self.any_class = config.nce_k, config.negatives == "any"
        self.student_memory = SampleMemory(train_set.num_samples, config.feat_dim, config.nce_m)
        self.teacher_memory = SampleMemory(train_set.num_samples, config.feat_dim, config.nce_m)
        # Python ints (saved as the module's extra state): a buffer would live on the GPU and seeding
        # from it would make the host wait each step
        self.seed, self.step = torch.initial_seed() % 2**31, 0
        labels = torch.zeros(train_set.num_samples, dtype=torch.long) if self.any_class else train_set.labels.long()
        counts = torch.bincount(labels)
        # derived from the labels at build time, not saved: the data says them again on resume
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)

    def get_extra_state(self) -> Tensor:
        return torch.tensor([self.seed, self.step], dtype=torch.long)

    def set_extra_state(self, state: Tensor) -> None:
        self.seed, self.step = (int(v) for v in state)

    def draw(self, indices: Tensor) -> Tensor:
        """(B, K + 1) sample indices per anchor: its own first, then K negatives. Drawn for the
        global batch from (seed, step), so every process draws the same and a resume redraws them."""
        every = gather_rows(indices)
        generator = torch.Generator(device=indices.device)
        generator.manual_seed(self.seed * 1_000_003 + self.step)
        uniform = torch.rand(len(every), self.k, generator=generator, dtype=torch.float64, device=indices.device)
        if self.any_class:
            negatives = (uniform * self.num_samples).long()
        else:
            negatives = other_class_draws(
                uniform, self.labels[every], self.by_class, self.class_start, self.class_count
            )
        return torch.cat([indices.unsqueeze(1), local_rows(negatives, len(indices))], dim=1)

    def scores(self, anchor: Tensor, memory: SampleMemory, keys: Tensor) -> Tensor:
        """``exp(memory[keys] . anchor / T)``, (B, K + 1)."""
        if scores_every_row(memory.bank.shape[0], self.k):
            # one (B, N) product, then the keys' columns: no (B, K + 1, D) copy of the bank's rows; the
            # product's backward needs the bank as it is now, and this step's update changes it in place
            logits = (anchor @ memory.bank.clone().T).gather(1, keys)
            return torch.exp(logits / self.temperature)
        return contrast_scores(anchor, memory.rows(keys), self.temperature)

    # Runs eagerly under train.compile_objective: a compiled graph may drop the bank's clone and save the
    # bank itself for backward, which this step's in-place update then invalidates.
    @torch.compiler.disable
    def forward(self, student: Tensor, teacher: Tensor, indices: Tensor) -> Tensor:
        keys = self.draw(indices)
        student_scores = self.scores(student, self.teacher_memory, keys)
        teacher_scores = self.scores(teacher, self.student_memory, keys)
        loss = self.loss(student_scores, teacher_scores)
        self.student_memory.update(indices, student)
        self.teacher_memory.update(indices, teacher)
        self.step += 1
        return loss


class ContrastQueue(Contrast):
    """MoCo-style queues of both sides' recent embeddings: the negatives of every anchor in a batch."""

    def __init__(self, config: CRDConfig, train_set: TrainingSet):
        super().__init__(train_set.num_samples, config.nce_t)
        self.student_queue = EmbeddingQueue(config.nce_k, config.feat_dim)
        self.teacher_queue = EmbeddingQueue(config.nce_k, config.feat_dim)

    def _scores(self, anchor: Tensor, positive: Tensor, queue: EmbeddingQueue) -> Tensor:
        logits = torch.cat([(anchor * positive.detach()).sum(1, keepdim=True), anchor @ queue.items.T], dim=1)
        return torch.exp(logits / self.temperature)

    def forward(self, student: Tensor, teacher: Tensor, indices: Tensor | None = None) -> Tensor:
        loss = self.loss(
            self._scores(student, teacher, self.teacher_queue), self._scores(teacher, student, self.student_queue)
        )
        self.student_queue.push(student)
        self.teacher_queue.push(teacher)
        return loss


class ContrastiveRepresentationDistillation:
    def __init__(self, config: CRDConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, train_set):
        c = self.config
        if train_set is None:
            raise KdzooError(
                "crd keeps state per training sample: pass train_set=kdzoo.TrainingSet(num_samples, labels) "
                "to kdzoo.get_method and each batch's sample indices to the objective"
            )
        if c.memory == "bank" and c.negatives == "other_classes":
            _check_labels(train_set)
        check_fits(
            _bytes_needed(c, train_set, c.nce_k),
            train_set.device,
            f"crd (memory={c.memory}, nce_k={c.nce_k}, {train_set.num_samples} samples)",
            lambda budget: _advice(c, train_set, budget),
        )
        return {
            "student_embed": Embed(student.embedding_dim, c.feat_dim),
            "teacher_embed": Embed(teacher.embedding_dim, c.feat_dim),
            "contrast": (ContrastMemory if c.memory == "bank" else ContrastQueue)(c, train_set),
        }

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, indices, modules):
        if indices is None and self.config.memory == "bank":
            raise KdzooError(
                "crd's memory bank needs each batch's sample indices, and this data gives none: yield "
                "(images, labels, indices) batches, or set crd.memory=queue"
            )
        s, t = modules["student_embed"](student.embedding), modules["teacher_embed"](teacher.embedding)
        return {"crd": modules["contrast"](s, t, indices)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "crd": self.config.weight}


def scores_every_row(num_samples: int, negatives: int) -> bool:
    """Whether scoring every row of a bank (one GEMM) beats gathering the K + 1 keyed rows per anchor:
    when the bank has at most 4 (K + 1) rows (CIFAR's 50,000 against 16,385 keys), the product costs
    at most 4x the multiply-adds of the gathered route and none of its (B, K + 1, D) copy, which
    dominates CRD's step (1 GiB at batch 64, K = 16384, D = 128)."""
    return num_samples <= 4 * (negatives + 1)


def _check_labels(train_set: TrainingSet) -> None:
    if train_set.labels is None or len(train_set.labels) != train_set.num_samples:
        raise KdzooError(
            "crd draws its negatives from other classes and needs every training sample's label "
            "(TrainingSet.labels, or a dataset with .targets); set crd.negatives=any to draw from all samples"
        )
    if torch.unique(train_set.labels).numel() < 2:
        raise KdzooError("crd draws negatives from other classes, but the training data has one class only")


def _bytes_needed(c: CRDConfig, train_set: TrainingSet, k: int) -> int:
    """Both sides' memory plus what one step holds: for a bank, the gathered (B, K + 1, D) keys kept
    for backward (or, scoring every row, the (B, N) scores) and the keys' indices; for a queue, the
    (B, K + 1) scores."""
    batch = train_set.batch_size or 1
    if c.memory == "queue":
        return 2 * (k * c.feat_dim * FLOAT_BYTES + batch * (k + 1) * FLOAT_BYTES)
    n = train_set.num_samples
    bank = 2 * n * c.feat_dim * FLOAT_BYTES
    per_row = (n if scores_every_row(n, k) else (k + 1) * c.feat_dim) * FLOAT_BYTES
    return bank + 2 * batch * (per_row + (k + 1) * INDEX_BYTES)


def _advice(c: CRDConfig, train_set: TrainingSet, budget: int) -> str:
    if _bytes_needed(c, train_set, 1) > budget:
        return "set crd.memory=queue: its memory grows with nce_k, not with the dataset"
    low, high = 1, c.nce_k  # the most negatives that fit: the need grows with nce_k
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if _bytes_needed(c, train_set, middle) <= budget else (low, middle - 1)
    return f"set crd.nce_k={low} or lower (the paper's 16384 negatives need more memory)"


kdzoo_register_methods = registering(
    MethodInfo(
        name="crd",
        factory=ContrastiveRepresentationDistillation,
        config_class=CRDConfig,
        paper="Tian et al. Contrastive Representation Distillation. ICLR 2020. arXiv:1910.10699",
        summary="contrast embedded features against per-sample memory banks of both models (NCE, 16384 negatives)",
        kind="relation",
        batch="local",  # per-sample contrasts; the memory banks gather every process's updates themselves
        terms=("crd",),
    )
)
