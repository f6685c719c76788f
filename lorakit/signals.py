"""Ctrl-C (SIGINT), SIGTERM and SIGHUP stop a run with the adapter and the state saved.

`docker stop`, Slurm preemption and spot reclaims send SIGTERM; a closed terminal sends SIGHUP.
While steps run, the first signal is held until the current step has finished (so the saved
state is exactly that step's: a KeyboardInterrupt raised between the optimizer's update and the
step's count would save the next step's weights under this step's name) and then raised as
:class:`Terminated`, a KeyboardInterrupt, which the loop answers by saving; a second signal, or one
outside the steps, is raised at once. The CLI exits with 128 + the signal's number: 130 for SIGINT,
143 for SIGTERM, 129 for SIGHUP. A SIGINT that the process was started ignoring (a shell's
background job without job control) stays ignored.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)

_pending: int | None = None
_deferring = False


class Terminated(KeyboardInterrupt):
    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        if signum == signal.SIGINT:  # a person at the terminal: say why nothing stops yet
            print("\nlorakit: stopping after the step in progress, then saving (Ctrl-C again: stop now)",
                  file=sys.stderr, flush=True)
        return
    raise Terminated(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block SIGINT, SIGTERM and SIGHUP raise Terminated (held to the end of a running step)."""
    global _pending, _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = SIGNALS + ((signal.SIGINT,) if signal.getsignal(signal.SIGINT) is signal.default_int_handler else ())
    old = {s: signal.signal(s, _handler) for s in ours}
    _pending, _deferring = None, False
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _pending, _deferring = None, False


def steps_begin() -> None:
    """From here a signal waits for the end of the step in progress (see raise_pending)."""
    global _deferring
    _deferring = True


def raise_pending() -> None:
    """At a step boundary: raise Terminated for a signal that came during the step."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Terminated(signum)
