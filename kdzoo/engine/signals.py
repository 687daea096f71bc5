"""SIGTERM and Ctrl-C during training: finish the step, write a checkpoint, stop with a message."""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """While entered (in the main thread), SIGTERM/SIGINT only set :attr:`signal`; the loop checks it
    after each step, so a stop never leaves a half-done step or a torn checkpoint."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        self.signal = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _request(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
