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
import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m kdzoo ARGV`` without
    the ``--nproc`` option itself."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*torchrun, "-m", "kdzoo", *args]


def run_under_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``argv`` (this command's arguments) under torchrun with ``nproc`` processes, forwarding
    SIGINT/SIGTERM; the exit status of torchrun (128 + the signal when a signal ended it)."""
    child = subprocess.Popen(torchrun_command(nproc, argv), preexec_fn=_die_with_parent)
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
