"""Under torchrun, the main process trains the teacher while the others wait: longer than the process
group's timeout for collectives (3 s here instead of 30 minutes) must not end the run (see test_distributed).

usage: python tests/ddp_slow_teacher.py OUT_DIR
"""

import datetime
import sys
import time
from pathlib import Path

import torch.distributed as dist

import kdzoo.engine.build as build
from kdzoo.engine.distributed import process_group_left_at_exit
from kdzoo.registry import registry
from tests.helpers import tiny_config

GROUP_TIMEOUT_S = 3


def slower(train):
    def train_slowly(*args, **kwargs):
        time.sleep(2 * GROUP_TIMEOUT_S)  # a teacher that trains for longer than the group's timeout
        return train(*args, **kwargs)

    return train_slowly


if __name__ == "__main__":
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
    build._train_teacher = slower(build._train_teacher)
    out = Path(sys.argv[1])
    config = tiny_config(["kd"], "teacher.model=test_resnet", "student.model=test_resnet", out_dir=str(out))
    # the group ended before the interpreter is: one left to the interpreter's exit can abort it in its
    # teardown ("terminate called without an active exception"), as a CI run once did here
    with process_group_left_at_exit():
        build.build_trainer(config, registry(), out / "run", show_progress=False)  # the teacher is obtained here
        (out / f"built-{dist.get_rank()}").touch()
