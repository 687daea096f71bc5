"""``kdzoo`` commands with the collectives refusing what NCCL refuses (tests/engine/nccl_rules.py).

usage: python -m torch.distributed.run ... tests/engine/nccl_rules_worker.py OUT ARGS [-- ARGS ...]

Runs each ``kdzoo ARGS`` in turn in this process, in one process group, and writes the
collectives each one made to ``OUT.RANK`` (JSON, a list in command order).
"""

import faulthandler
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import nccl_rules  # noqa: E402

nccl_rules.install()
faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung run's stacks: kill -USR1 PID

import contextlib  # noqa: E402
import os  # noqa: E402

import torch.distributed as dist  # noqa: E402

from kdzoo.cli import main  # noqa: E402
from kdzoo.engine import distributed  # noqa: E402

# one process group for every command (a run joins the one that exists); left once, at the end
distributed.process_group_left_at_exit = contextlib.nullcontext

out, args, made = Path(sys.argv[1]), sys.argv[2:], []
commands = [[]]
for arg in args:
    if arg == "--":
        commands.append([])
    else:
        commands[-1].append(arg)
for command in commands:
    nccl_rules.COUNTS.clear()
    main(command, standalone_mode=False)
    made.append(dict(nccl_rules.COUNTS))
Path(f"{out}.{os.environ.get('RANK', '0')}").write_text(json.dumps(made))
dist.barrier()
dist.destroy_process_group()
