"""`sigterm_as_interrupt`: SIGTERM stops a command as Ctrl-C does.

A timeout, a batch scheduler's preemption or `docker stop` sends SIGTERM, whose default kills the process without
running `finally` blocks: a store's lease would stay behind and the next run be refused. Raised as
KeyboardInterrupt instead, the command cleans up as on Ctrl-C (finished episodes stay, the lease is given back)."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_as_interrupt():
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    before = signal.signal(signal.SIGTERM, interrupt) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)
