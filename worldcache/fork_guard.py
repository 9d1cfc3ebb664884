"""`forked_after_torch`: whether this process was forked from one that had torch loaded.

torch's OpenMP thread pool does not survive fork: a forked child deadlocks at its first parallel region (gymnasium's
async vector env forks its workers after building one env in the parent, to read its spaces). The hook is
registered when worldcache is imported, so any fork after that is seen, whether or not the env was loaded yet."""
from __future__ import annotations

import os
import sys

_forked_after_torch = False


def _mark_fork() -> None:
    global _forked_after_torch
    _forked_after_torch = _forked_after_torch or "torch" in sys.modules


os.register_at_fork(after_in_child=_mark_fork)


def forked_after_torch() -> bool:
    """Whether this process is a fork (or a fork's fork) of one that had torch loaded."""
    return _forked_after_torch
