"""Scale check: write N synthetic episodes (no model) shaped like `configs/rollout.yaml`'s into a store and time
what large stores need: write rate, files per episode, opening, ``len(store)``, and reading 4 random frames.

`worldcache scale-check --out runs/scale.zarr --episodes 10000` prints the figures (README, Rollouts).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .actor import RECORD_ARRAYS
from .store import EpisodeStore

T, CHUNK, A, CALLS, HW = 12, 8, 7, 35, (64, 80)  # configs/rollout.yaml on the bundled model


def synthetic_episode(rng: np.random.Generator, start: np.ndarray) -> dict:
    """A rollout-shaped episode. Frames: a start frame drifting slowly, with +-1 grey level of noise on ~30 % of
    the pixels, which compresses about like the bundled model's predicted frames (2.8x against their 3.1x; without
    noise, frames repeat exactly and compress far better than real ones)."""
    n = 1 + T * CHUNK
    shift = np.cumsum(rng.integers(-1, 2, (n, 2)), axis=0)
    video = np.stack([np.roll(start, tuple(s), axis=(0, 1)) for s in shift]).astype(np.int16)
    noise = rng.integers(-1, 2, video.shape) * (rng.random(video.shape) < 0.3)
    video = np.clip(video + noise, 0, 255).astype(np.uint8)
    extras = {f"cache/{k}": rng.random((T, CALLS)).astype(dt) if dt is not bool else rng.random((T, CALLS)) < 0.3
              for k, dt in RECORD_ARRAYS.items()}
    extras.update(frames=video[1:].reshape(T, CHUNK, *video.shape[1:]), model_ms=rng.random(T, np.float32),
                  denoise_ms=rng.random(T, np.float32), noise_seed=rng.integers(0, 2**31, T))
    return dict(obs=video[::CHUNK], actions=rng.uniform(-2, 2, (T, CHUNK, A)).astype(np.float32),
                rewards=rng.random(T, np.float32), terminated=np.zeros(T, bool),
                truncated=np.r_[np.zeros(T - 1, bool), True], extras=extras)


def scale_check(out: str | Path, episodes: int = 10000, reads: int = 200, seed: int = 0) -> dict:
    from tqdm import tqdm

    from worldcache.world_model import BUNDLED

    out = str(out)
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    starts = np.load(BUNDLED / "start_frames.npy")
    store = EpisodeStore.create(out)
    pool = [synthetic_episode(rng, starts[i % len(starts)]) for i in range(8)]  # generating is not writing
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
        eid, step = ids[rng.integers(len(ids))], int(rng.integers(T))
        t0 = time.perf_counter()
        frames = reader.episode_array(eid, "frames")[step, :4]
        lat.append(time.perf_counter() - t0)
        assert frames.shape == (4, *HW, 3)
    res = {"episodes": n, "write_s": write_s, "episodes_per_s": episodes / write_s, "files": files,
           "files_per_episode": files / episodes, "mb_per_episode": size / episodes / 2**20, "open_s": open_s,
           "len_s": len_s, "read4_ms_median": 1e3 * float(np.median(lat)),
           "read4_ms_p90": 1e3 * float(np.quantile(lat, 0.9))}
    return res


def scale_main(out: str, episodes: int = 10000) -> int:
    r = scale_check(out, episodes)
    print(f"{r['episodes']} episodes of {T} steps x {CHUNK} frames ({HW[0]}x{HW[1]}), {CALLS} model calls per step")
    print(f"  write: {r['episodes_per_s']:.1f} episodes/s ({r['write_s']:.0f} s); {r['files_per_episode']:.1f} files "
          f"and {r['mb_per_episode']:.2f} MB per episode")
    print(f"  open: {1e3 * r['open_s']:.1f} ms; len(store): {1e3 * r['len_s']:.1f} ms; 4 random frames: "
          f"{r['read4_ms_median']:.2f} ms median, {r['read4_ms_p90']:.2f} ms p90")
    return 0


__all__ = ["scale_check", "scale_main", "synthetic_episode"]
