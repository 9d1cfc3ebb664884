"""Episode storage and distributed rollouts (`worldcache.rollouts`).

- `store.EpisodeStore`: the Zarr v3 episode store (numpy, zarr, fsspec), local or at a URL, with its lease.
- `config.RolloutConfig`: rollout settings; episode names and seeds.
- `identity`: the model's files and hash, the store's rollout attrs and the resume check.
- `actor.RolloutWorker`: the Ray actor (model replica, vector env, background writer).
- `driver.run_rollouts`: schedules the missing episodes on the actors, under the store's lease.
- `benchmark.bench_rollouts`: episodes/s with 1 and 2 workers, and the store's share of the time.
- `policies.make_policy`: batched action policies (random, zero, sinusoid, module:function, torch module file).
- `reader`: `open_store`, `WindowDataset` (torch), `inspect_store` (summary and plots); `video`: MP4s.

Names are imported lazily, so importing the package (or the store) pulls in neither Ray nor torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EpisodeStore": "store", "StoreFormatError": "store", "FORMAT_VERSION": "store", "LeaseError": "store",
    "acquire_lease": "store", "release_lease": "store",
    "RolloutConfig": "config", "episode_id": "config", "episode_seed": "config", "policy_rng": "config",
    "model_sha256": "identity", "RolloutFormatError": "identity", "ROLLOUT_FORMAT": "identity",
    "run_rollouts": "driver", "rollout_main": "driver", "bench_rollouts": "benchmark",
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
