"""Stops that lose nothing (docs/runs.md): inside :func:`stop_on_signals` (the CLI's ``run``, ``train-guidance``) a
first SIGINT/SIGTERM sets a flag the loop reads after each step (:func:`pending`), saving and raising
:class:`~modzoo.errors.RunStopped`; outside the loop, or a second signal, stops at once. Library calls install none.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from ..errors import RunStopped

#: the signals a run saves and stops on
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    signum: int | None = None   # the first signal received, until the loop acts on it
    deferring: int = 0          # > 0 while a training loop will act on it at its next step boundary
    installed: bool = False


_state = _State()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: Any) -> None:
    if _state.signum is not None or not _state.deferring:
        _state.signum = signum
        # a second signal, or none of the loop to wait for: stop now (a save being written is atomic)
        raise RunStopped(signum, f"stopped by {signal_name(signum)}", saved=_state.deferring == 0)
    _state.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM save and stop the run trained inside (see the module docstring); the previous handlers
    are put back on exit. Only the main thread can own signal handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.signum, _state.installed = None, True
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.signum, _state.installed = None, False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While the training loop runs: a first signal waits for the step boundary, where the loop saves."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def pending() -> int | None:
    """The signal the loop must stop for at this step boundary (None: go on)."""
    return _state.signum
