"""A run built with teacher.cache on (which fills the cache), in this process or under torchrun,
counting the teacher's batches each process computes for the fill.

usage: python tests/engine/cache_fill_worker.py OUT_DIR -- KEY=VALUE ...

The run's cache is OUT_DIR/cache; process R writes the number of batches it computed to
OUT_DIR/batches-rankR.txt. Process 1 reads the batches to do 2 s late, so a fill that let one
process mark batches before the other had read them fails here every time, not once in a while.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import kdzoo.engine.teacher_cache as teacher_cache
from kdzoo.config import load_config
from kdzoo.engine import build_trainer
from kdzoo.paths import using_cache
from kdzoo.registry import registry


def main(out: Path, sets: list[str]) -> None:
    named, computed = teacher_cache.TeacherOutputCache._named, []

    def counting(outputs, topk=None):
        computed.append(1)
        return named(outputs, topk)

    teacher_cache.TeacherOutputCache._named = staticmethod(counting)  # type: ignore[method-assign]
    if os.environ.get("RANK") == "1":
        to_do = teacher_cache.TeacherOutputCache.batches_to_do

        def late(self, batch_size):
            time.sleep(2.0)
            return to_do(self, batch_size)

        teacher_cache.TeacherOutputCache.batches_to_do = late  # type: ignore[method-assign]
    with using_cache(out / "cache"):
        config = load_config([], sets, ["kd"], registry().config_classes())
        build_trainer(config, registry(), out / "run", show_progress=False)
    (out / f"batches-rank{os.environ.get('RANK', '0')}.txt").write_text(str(len(computed)))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    split = sys.argv.index("--")
    main(Path(sys.argv[1]), sys.argv[split + 1 :])
