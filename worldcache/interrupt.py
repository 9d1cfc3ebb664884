"""`sigterm_as_interrupt`: SIGTERM stops a command as Ctrl-C does.

A timeout, a batch scheduler's preemption or `docker stop` sends SIGTERM, whose default kills the process without
running `finally` blocks: a store's lease would stay behind and the next run be refused. Raised as `Terminated` (a
KeyboardInterrupt) instead, the command cleans up as on Ctrl-C (finished episodes stay, the lease is given back)."""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """A stop by a signal other than Ctrl-C's; `signum` gives the exit status 128 + signum, as the shell's."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


_received: int | None = None  # the signal `_terminate` turned into `Terminated` inside the current block


def _terminate(signum, frame):
    global _received
    _received = signum
    raise Terminated(signum)


_depth = 0  # how many `sigterm_as_interrupt` blocks the main thread is in


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only the main thread may set handlers


def _restore(signum: int, handler) -> None:
    signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: a handler set from C


@contextlib.contextmanager
def sigterm_as_interrupt():
    global _depth, _received
    main = _main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if main else None
    outer = _received
    _depth += main
    try:
        yield
    except KeyboardInterrupt as e:
        # a library that caught our Terminated (Ray, in a blocking call) raises a plain KeyboardInterrupt in its
        # place: the stop is still the signal's, so its exit status is too
        if main and _received is not None and not isinstance(e, Terminated):
            raise Terminated(_received) from e
        raise
    finally:
        if main:
            _depth -= 1
            _restore(signal.SIGTERM, before)
            _received = outer  # a later, unrelated Ctrl-C is not taken for this block's signal


def reclaim_sigterm() -> None:
    """Inside `sigterm_as_interrupt`, take SIGTERM back from a library that set its own (Ray's init: it exits)."""
    if _depth and _main_thread():
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them as they would have been (a second one at
    once). Around a store write: zarr writes on its own IO thread, and a process stopped mid-write exits with that
    thread still busy (zarr's exit hook then prints a traceback of its own, "Cannot close a running event loop");
    around a training step, so that a stop lands where the state is whole."""
    if not _main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)
        if len(held) > 1:  # a second stop does not wait for the block (a long training step, a hung write)
            for s, handler in before.items():
                _restore(s, handler)
            signal.raise_signal(signum)

    before = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            _restore(s, handler)
        if len(held) == 1:  # (a second one was delivered at once)
            signal.raise_signal(held[0])  # to the handler the block found: KeyboardInterrupt, Terminated, or default


class StepSaver:
    """The steps of a training loop, each held against Ctrl-C and SIGTERM (`deferred_interrupts`), and its state
    saved once more where a stop lands between two steps: the steps since the last save are not lost. A stop raised
    inside a step (not a held signal) saves nothing: the step is half done. `save()` saves the state as it is."""

    def __init__(self, save):
        self._save, self._unsaved, self._in_step = save, False, False

    def save(self) -> None:
        self._save()
        self._unsaved = False

    @contextlib.contextmanager
    def step(self):
        with deferred_interrupts():
            self._in_step = True
            yield
            self._in_step, self._unsaved = False, True

    @contextlib.contextmanager
    def loop(self):
        try:
            yield
        except KeyboardInterrupt:
            if self._unsaved and not self._in_step:
                with deferred_interrupts():
                    self.save()
            raise
