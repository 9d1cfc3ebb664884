"""Episode storage and distributed rollouts (`worldcache.rollouts`).

- `store.EpisodeStore`: the Zarr v3 episode store (numpy + zarr only).
- `runner.run_rollouts`: Ray actors roll out the world-model env into a store, with per-step cache statistics.
- `policies.make_policy`: batched action policies (random, zero, sinusoid, module:function, torch module file).
- `reader`: `open_store`, `WindowDataset` (torch), `inspect_store` (summary and plots).

Names are imported lazily, so importing the package (or the store) pulls in neither Ray nor torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EpisodeStore": "store", "StoreFormatError": "store", "FORMAT_VERSION": "store",
    "RolloutConfig": "runner", "run_rollouts": "runner", "rollout_main": "runner", "bench_rollouts": "runner",
    "episode_id": "runner", "episode_seed": "runner",
    "make_policy": "policies", "POLICIES": "policies",
    "open_store": "reader", "WindowDataset": "reader", "inspect_store": "reader", "inspect_main": "reader",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
