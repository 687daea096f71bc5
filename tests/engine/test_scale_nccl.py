"""NCCL-correct by construction, checked on a CPU machine: every collective of a run takes only tensors
placed on the group's device (tests/engine/nccl_rules.py says how a CPU run tells them apart)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY, subprocess_env

WORKER = Path(__file__).with_name("nccl_rules_worker.py")

#: every family of built-in method: logits, features with a connector (two stages), memory banks and
#: sampled negatives, views drawn every step, a self-supervised head, a teacher the run trains itself
FAMILIES = {
    "kd": ("kd", ()),
    "fitnets": ("fitnets", ("fitnets.schedule=two_stage", "fitnets.hint_epochs=1")),
    "crd": ("crd", ("crd.nce_k=16",)),
    "mlkd": ("mlkd", ()),
    "sskd": ("sskd", ("sskd.head_epochs=1",)),
    "born-again": ("self-distill", ("self-distill.generations=1",)),
}
#: the families whose teacher can come from the teacher-output cache (the others draw views every step);
#: one cache entry: fitnets and crd find kd's entry (the teacher's accuracy known) without their taps, so
#: every process loads the teacher together before the main process fills them (this hung before)
CACHED = ("kd", "fitnets", "crd")
CASES = [(family, False) for family in FAMILIES] + [(family, True) for family in CACHED]


def _command(tmp_path: Path, family: str, cache: bool) -> list[str]:
    method, settings = FAMILIES[family]
    sets = [
        *TINY,
        "data.batch_size=16",
        "data.train_limit=32",
        "teacher.train.train_limit=32",
        "teacher.model=test_resnet",
        "student.model=test_resnet",
        "train.epochs=2",
        "train.checkpoint_every=1",
        f"teacher.cache={str(cache).lower()}",
        *(("data.views=2",) if cache else ()),  # a cache holds fixed views of each sample
        f"train.out_dir={tmp_path / 'runs' / f'{family}-{cache}'}",
        *settings,
    ]
    return ["run", "--method", method, "--quiet", *[a for s in sets for a in ("--set", s)]]


def test_every_collective_of_every_family_takes_tensors_on_the_groups_device(tmp_path):
    """Two processes train two epochs of each family, with and without the teacher-output cache
    (checkpoints every step, evaluation, the global batch where a method sees it), every tensor
    collective refusing what NCCL refuses; the stop flag and the epoch's means went through the check."""
    out = tmp_path / "collectives"
    commands = [arg for family, cache in CASES for arg in ("--", *_command(tmp_path, family, cache))][1:]
    env = {**subprocess_env(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}  # one cache for all
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*torchrun, str(WORKER), str(out), *commands], env=env, capture_output=True, text=True, timeout=600
    )
    refused = done.stderr.find("refused by")  # the stack of the first refusal, else the end
    assert done.returncode == 0, done.stderr[refused : refused + 4000] if refused >= 0 else done.stderr[-4000:]
    per_rank = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert per_rank[0] == per_rank[1], per_rank  # every process made the same collectives
    for (family, cache), counts in zip(CASES, per_rank[0], strict=True):
        assert counts.get("torch.distributed.all_reduce", 0) >= 4, (family, cache, counts)


def test_the_rules_refuse_a_host_tensor_and_pass_the_engines_collectives(tmp_path, monkeypatch):
    """The check itself: ``torch.tensor([1.0])`` all-reduced (what ``any_across`` did) is refused; the
    engine's own exchange passes."""
    monkeypatch.syspath_prepend(str(WORKER.parent))
    import nccl_rules

    from kdzoo.data.batches import DistInfo
    from kdzoo.engine.distributed import any_across, mean_across

    for module, names in nccl_rules.COLLECTIVES.items():  # put back after the test
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    mode = nccl_rules.install()
    try:
        with pytest.raises(RuntimeError, match="host by construction"):
            torch.distributed.all_reduce(torch.tensor([1.0]))
        with pytest.raises(RuntimeError, match="host by construction"):
            torch.distributed.all_reduce(torch.ones(2, device=torch.device("cpu")).cpu())
        info = DistInfo(0, 1, 0, grouped=True)
        assert any_across(True, info) is True
        assert float(mean_across({"ce": torch.tensor(2.0)}, info)["ce"]) == 2.0
    finally:
        mode.__exit__(None, None, None)
        torch.distributed.destroy_process_group()
