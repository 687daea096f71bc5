"""``kdzoo run --nproc N``: the same command again, under torchrun, as one job with the caller.

The launching process stays the job's face to whoever started it: SIGINT and SIGTERM it receives
(Ctrl-C, ``timeout``, a scheduler) go to torchrun, which hands them to every worker (each finishes its
step and checkpoints, :class:`~kdzoo.engine.signals.StopRequests`), and it waits until torchrun and
the workers have exited, returning their exit status. Killed outright (SIGKILL), it cannot forward
anything: torchrun is then told by the kernel (``PR_SET_PDEATHSIG``) and stops the workers itself, so
no process of the run is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

FORWARDED = (signal.SIGINT, signal.SIGTERM)


#: this command's own options that choose the launch, left out of the command each worker runs
LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts")


@dataclass(frozen=True)
class Launch:
    """How many processes, on how many machines: ``nproc`` per node, ``nnodes`` nodes meeting at
    ``endpoint`` (``HOST:PORT`` of one of them; ``None`` on one machine, where torchrun picks a free
    port, so two runs started together never collide), ``node_rank`` this node's place, and
    ``max_restarts``: how often torchrun restarts the workers after one fails (each resumes the
    run from its last checkpoint)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None
    max_restarts: int = 0

    @property
    def needed(self) -> bool:
        """Whether this command must run under torchrun rather than as it is."""
        return self.nproc > 1 or self.nnodes > 1 or self.endpoint is not None or self.max_restarts > 0


def torchrun_command(launch: Launch, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m kdzoo ARGV`` without this command's launch options."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            args.append(arg)
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc}"]
    if launch.endpoint is None and launch.nnodes == 1:
        torchrun.append("--standalone")
    elif not launch.max_restarts:  # every node runs this command with its own --node-rank: node 0 is the main
        host, _, port = (launch.endpoint or "").rpartition(":")
        torchrun += [f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}"]
        torchrun += [f"--master-addr={host}", f"--master-port={port}"]
    else:
        # restarting after a failure needs torchrun's elastic rendezvous, which numbers the nodes itself
        # (by host name, then by its agent's process id: the same order after every restart) and ignores
        # --node-rank; the node that gets rank 0 holds the run folder
        torchrun += [f"--nnodes={launch.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={launch.endpoint}"]
        torchrun += ["--rdzv-id=kdzoo"]
    if launch.max_restarts:
        torchrun.append(f"--max-restarts={launch.max_restarts}")
    return [*torchrun, "-m", "kdzoo", *args]


def torchrun_env(launch: Launch) -> dict[str, str]:
    """The environment torchrun runs in. With restarts, the workers of each attempt meet in a store of
    their own: in the rendezvous' shared store (torchrun's default) the keys of the attempt before
    are still there, and a restarted worker can read its dead peer's address before the peer's new
    worker writes its own, then wait on a connection refused until the group's timeout."""
    env = dict(os.environ)
    if launch.max_restarts:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env


def run_under_torchrun(launch: Launch, argv: Sequence[str]) -> int:
    """Run ``argv`` (this command's arguments) under torchrun as ``launch`` says, forwarding
    SIGINT/SIGTERM; the exit status of torchrun (128 + the signal when a signal ended it)."""
    child = subprocess.Popen(torchrun_command(launch, argv), env=torchrun_env(launch), preexec_fn=_die_with_parent)
    previous = {sig: signal.signal(sig, lambda signum, _frame: _forward(child, signum)) for sig in FORWARDED}
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting, torchrun has it
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _forward(child: subprocess.Popen, signum: int) -> None:
    if child.poll() is None:
        child.send_signal(signum)


def _die_with_parent() -> None:
    """In the child, before torchrun starts: SIGTERM when the launching process dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: the forwarding above is all there is
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
