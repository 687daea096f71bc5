"""A run on file-backed data (an image folder, or a streamed dataset) that records every image its
processes decode, in this process or under torchrun.

usage: python tests/engine/scale_data_worker.py OUT_DIR [CRASH_AT] -- KEY=VALUE ...

Trains the config of the KEY=VALUE settings uninterrupted in OUT_DIR/whole. With CRASH_AT, trains it
again in OUT_DIR/crashed, failing in the CRASH_AT-th step (after the checkpoint of the step before),
then resumes it there from that checkpoint. Every decoded image is a line ``PID PATH`` in
OUT_DIR/decoded-PHASE-rankR.txt (PHASE: whole, crashed, resumed), written by the loader worker that
decoded it; a streamed sample's PATH is ``/SPLIT/`` and its image bytes' digest.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

import kdzoo
import kdzoo.data.datasets as datasets
import kdzoo.data.stream_batches as stream_batches
from kdzoo.config import load_config
from kdzoo.engine import RunState, build_trainer
from kdzoo.registry import registry
from tests.helpers import Crash, _CrashOnCall

OUT = Path()  # where the records go (the first argument)
phase = "whole"  # read by the loader workers, which inherit it when their loader starts them


def _recording(decode):
    def decode_image(path: str):
        _record(path)
        return decode(path)

    return decode_image


def _recording_streamed(decode):
    def decode_sample(raw, where: str):
        split = where.rsplit(":", 1)[-1]
        _record(f"/{split}/{hashlib.sha1(raw.read()).hexdigest()[:16]}")
        return decode(raw, where)

    return decode_sample


def _record(path: str) -> None:
    rank = os.environ.get("RANK", "0")
    with open(OUT / f"decoded-{phase}-rank{rank}.txt", "a") as log:
        log.write(f"{os.getpid()} {path}\n")


def main(crash_at: int | None, sets: list[str]) -> None:
    global phase
    reg = registry()
    config = load_config([], sets, ["kd"], reg.config_classes())
    build_trainer(config, reg, OUT / "whole", show_progress=False).fit()
    if crash_at is not None:
        phase = "crashed"
        crashed = build_trainer(config, reg, OUT / "crashed", show_progress=False)
        crashed.pm.register(_CrashOnCall(crash_at))  # one loss computation a step
        try:
            crashed.fit()
        except kdzoo.KdzooError as exc:
            assert isinstance(exc.__cause__, Crash) or "Crash" in str(exc), exc
        else:
            raise AssertionError("the run did not crash")
        phase = "resumed"  # what the crashed run's workers still decode is logged under their own phase
        state = RunState.load(OUT / "crashed" / "last.pt")
        build_trainer(config, reg, OUT / "crashed", show_progress=False).fit(resume=state)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    OUT = Path(sys.argv[1])  # the module's setting: the loader workers read it too
    split = sys.argv.index("--")
    datasets.decode_image = _recording(datasets.decode_image)
    stream_batches.decode = _recording_streamed(stream_batches.decode)
    main(int(sys.argv[2]) if split > 2 else None, sys.argv[split + 1 :])
