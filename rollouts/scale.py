"""Scale check: write N synthetic episodes (no model) shaped like `configs/rollout.yaml`'s into a store and time
what large stores need: write rate, files per episode, opening, ``len(store)``, and reading 4 random frames.

`worldcache scale-check --out runs/scale.zarr --episodes 10000` prints the figures (README, Rollouts).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .actor import RECORD_ARRAYS
from .config import RolloutConfig
from .store import EpisodeStore


def rollout_shape() -> dict:
    """The episode shape of `configs/rollout.yaml` on the bundled model: read from both, so it cannot go stale."""
    import json

    from worldcache.world_model import BUNDLED, SPEC_FILE

    spec = json.loads((BUNDLED / SPEC_FILE).read_text())
    cfg = RolloutConfig.load("rollout")
    return dict(T=cfg.steps, chunk=spec["chunk"], action_dim=spec["action_dim"],
                calls=cfg.num_steps or spec["num_steps"], hw=(spec["height"], spec["width"]))


def synthetic_episode(rng: np.random.Generator, start: np.ndarray, T: int, chunk: int, action_dim: int,
                      calls: int) -> dict:
    """A rollout-shaped episode. Frames: a start frame drifting slowly, with +-1 grey level of noise on ~30 % of
    the pixels, which compresses about like the bundled model's predicted frames (2.7x against their 3.3x in a
    `rollout_smoke` store; without noise, frames repeat exactly and compress far better than real ones)."""
    n = 1 + T * chunk
    shift = np.cumsum(rng.integers(-1, 2, (n, 2)), axis=0)
    video = np.stack([np.roll(start, tuple(s), axis=(0, 1)) for s in shift]).astype(np.int16)
    noise = rng.integers(-1, 2, video.shape) * (rng.random(video.shape) < 0.3)
    video = np.clip(video + noise, 0, 255).astype(np.uint8)
    extras = {f"cache/{k}": rng.random((T, calls)).astype(dt) if dt is not bool else rng.random((T, calls)) < 0.3
              for k, dt in RECORD_ARRAYS.items()}
    extras.update(frames=video[1:].reshape(T, chunk, *video.shape[1:]), model_ms=rng.random(T, np.float32),
                  denoise_ms=rng.random(T, np.float32), noise_seed=rng.integers(0, 2**31, T))
    return dict(obs=video[::chunk], actions=rng.uniform(-1, 1, (T, chunk, action_dim)).astype(np.float32),
                rewards=rng.random(T, np.float32), terminated=np.zeros(T, bool),
                truncated=np.r_[np.zeros(T - 1, bool), True], extras=extras)


def scale_check(out: str | Path, episodes: int = 10000, reads: int = 200, seed: int = 0) -> dict:
    from tqdm import tqdm

    from worldcache.world_model import BUNDLED

    out = str(out)
    if os.path.exists(out):  # never delete what is there: it may be a real store
        raise ValueError(f"{out} exists: scale-check writes a new store; remove it or give another --out")
    rng = np.random.default_rng(seed)
    shape = rollout_shape()
    starts = np.load(BUNDLED / "start_frames.npy")
    if starts.shape[1:3] != shape["hw"]:
        raise ValueError(f"the bundled start frames are {starts.shape[1:3]}, its model.json says {shape['hw']}")
    store = EpisodeStore.create(out)
    pool = [synthetic_episode(rng, starts[i % len(starts)], shape["T"], shape["chunk"], shape["action_dim"],
                              shape["calls"]) for i in range(8)]  # generating is not writing
    t0 = time.perf_counter()
    for i in tqdm(range(episodes), unit="ep", desc="write"):
        store.write_episode(f"ep{i:07d}", **pool[i % len(pool)])
    write_s = time.perf_counter() - t0
    if hasattr(store, "consolidate"):
        store.consolidate()
    files = sum(len(f) for _, _, f in os.walk(out))
    size = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(out) for x in fs)
    t0 = time.perf_counter()
    reader = EpisodeStore(out, mode="r")
    open_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = len(reader)
    len_s = time.perf_counter() - t0
    ids = reader.episode_ids()
    lat = []
    for _ in range(reads):
        eid, step = ids[rng.integers(len(ids))], int(rng.integers(shape["T"]))
        t0 = time.perf_counter()
        frames = reader.episode_array(eid, "frames")[step, :4]
        lat.append(time.perf_counter() - t0)
        if frames.shape != (4, *shape["hw"], 3):
            raise RuntimeError(f"read back frames of shape {frames.shape}, wrote (4, {shape['hw']}, 3)")
    res = {**shape, "episodes": n, "write_s": write_s, "episodes_per_s": episodes / write_s, "files": files,
           "files_per_episode": files / episodes, "mb_per_episode": size / episodes / 2**20, "open_s": open_s,
           "len_s": len_s, "read4_ms_median": 1e3 * float(np.median(lat)),
           "read4_ms_p90": 1e3 * float(np.quantile(lat, 0.9))}
    return res


def scale_main(out: str, episodes: int = 10000) -> int:
    r = scale_check(out, episodes)
    print(f"{r['episodes']} episodes of {r['T']} steps x {r['chunk']} frames ({r['hw'][0]}x{r['hw'][1]}), "
          f"{r['action_dim']}-D actions, {r['calls']} model calls per step")
    print(f"  write: {r['episodes_per_s']:.1f} episodes/s ({r['write_s']:.0f} s); {r['files_per_episode']:.1f} files "
          f"and {r['mb_per_episode']:.2f} MB per episode")
    print(f"  open: {1e3 * r['open_s']:.1f} ms; len(store): {1e3 * r['len_s']:.1f} ms; 4 random frames: "
          f"{r['read4_ms_median']:.2f} ms median, {r['read4_ms_p90']:.2f} ms p90")
    return 0


__all__ = ["rollout_shape", "scale_check", "scale_main", "synthetic_episode"]
