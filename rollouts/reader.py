"""Reading rollout stores: episodes as numpy, a torch Dataset of (frames, actions) windows, and `inspect_store`
(summary numbers, cache-statistics plots, videos); `inspect_data_store` summarises a make-data store. The layout
is described in the README (Rollouts)."""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .identity import check_format, is_make_data
from .store import EpisodeStore


def open_store(path: str | Path, storage_options: dict | None = None) -> EpisodeStore:
    """The rollout store, read-only: ``store.episode_ids()``, ``store[id]`` -> dict of numpy arrays + ``"attrs"``,
    ``store.episode_array(id, name)`` (lazy zarr; a packed per-step statistic such as ``cache/drift``: numpy),
    ``store.attrs["rollout"]`` (model, cache, env, policy, seeds).
    A store of an older rollout format raises `RolloutFormatError`."""
    store = EpisodeStore(path, mode="r", storage_options=storage_options)
    check_format(store)
    return store


def chunk_shape(store: EpisodeStore) -> tuple[int, int]:
    """(chunk, A): the shape of one env step's actions."""
    chunk, dim = store.attrs["rollout"]["env"]["action_shape"]
    return int(chunk), int(dim)


def episode_video(ep: dict, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """An episode dict with ``frames`` -> every frame (1 + T * chunk, H, W, 3) (the reset frame first) and the
    per-frame actions (T * chunk, A): action j leads from frame j to frame j + 1."""
    T = ep["actions"].shape[0]
    video = np.concatenate([ep["obs"][:1], ep["frames"].reshape(-1, *ep["obs"].shape[1:])])
    return video, ep["actions"].reshape(T * chunk, -1)


class WindowDataset(Dataset):
    """(frames, actions) windows over the episodes of a rollout store.

    With chunk frames stored (``frames``): per-frame windows, frames uint8 (window + 1, H, W, 3) and actions
    float32 (window, A); without them: per env step, obs (window + 1, H, W, 3) and chunk actions
    (window, chunk, A). Action k of a window leads from its frame k to frame k + 1. Windows start every
    `stride` (default `window`) frames/steps and lie inside one episode. Episodes are read lazily (a few kept in
    memory), so it works with DataLoader workers. `storage_options`: fsspec's, for a remote store (as
    `open_store` takes them)."""

    def __init__(self, path: str | Path, window: int = 8, stride: int | None = None, episodes: list[str] | None = None,
                 cached_episodes: int = 4, storage_options: dict | None = None):
        for name, v in (("window", window), ("stride", window if stride is None else stride),
                        ("cached_episodes", cached_episodes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.path, self.window, self.stride = str(path), window, window if stride is None else stride
        self.storage_options = storage_options
        store = open_store(path, storage_options)
        self.chunk = chunk_shape(store)[0]
        ids = store.episode_ids() if episodes is None else list(episodes)
        self.per_frame = bool(ids) and "frames" in store.load_episode(ids[0], keys=[])["attrs"]["extras"]
        self.index = []  # (episode id, start)
        for eid in ids:
            n = store.load_episode(eid, keys=[])["attrs"]["num_steps"] * (self.chunk if self.per_frame else 1)
            self.index += [(eid, s) for s in range(0, n - self.window + 1, self.stride)]
        if ids and not self.index:
            raise ValueError(f"{path}: no window of {window} {'frames' if self.per_frame else 'steps'} fits in any "
                             f"of its {len(ids)} episodes")
        self._store, self._cache, self._max = None, OrderedDict(), cached_episodes

    def _episode(self, eid: str) -> tuple[np.ndarray, np.ndarray]:
        """The episode's (frames, actions), the last `cached_episodes` used kept in memory."""
        if eid in self._cache:
            self._cache.move_to_end(eid)
        else:
            if self._store is None:  # opened per process: DataLoader workers do not share zarr handles
                self._store = open_store(self.path, self.storage_options)
            keys = ["obs", "actions", "frames"] if self.per_frame else ["obs", "actions"]
            ep = self._store.load_episode(eid, keys=keys)
            self._cache[eid] = episode_video(ep, self.chunk) if self.per_frame else (ep["obs"], ep["actions"])
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return self._cache[eid]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        eid, s = self.index[i]
        frames, actions = self._episode(eid)
        return (torch.from_numpy(frames[s:s + self.window + 1].copy()),
                torch.from_numpy(actions[s:s + self.window].astype(np.float32)))


def _stats(store: EpisodeStore, ids: list[str]) -> dict[str, list[np.ndarray]]:
    keys = ["cache/computed", "cache/drift", "cache/threshold", "model_ms", "denoise_ms"]
    eps = [store.load_episode(e, keys=keys) for e in ids]
    return {k: [ep[k] for ep in eps] for k in keys}


def _padded_mean(arrays: list[np.ndarray]) -> np.ndarray:
    """Mean over episodes of (T_e, n) arrays, step by step (episodes may differ in length)."""
    out = np.full((len(arrays), max(a.shape[0] for a in arrays), arrays[0].shape[1]), np.nan)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return np.nanmean(out, axis=0)


def inspect_store(path: str | Path, plots_dir: str | Path | None = None, episode: str | None = None,
                  storage_options: dict | None = None) -> dict:
    """Print a summary of a rollout store and, with `plots_dir`, save ``skip_heatmap.png`` (skip rate per env step
    x denoising call, averaged over episodes or for `episode`) and ``drift_threshold.png`` (drift vs threshold
    per denoising call: mean and 10-90 % band over all steps). Returns the numbers.

    speedup_estimate = model calls / computed calls: the DiT-loop speedup if a skipped call cost nothing and every
    computed call the same. An upper bound: probing blocks, embed/head and the VAE still run on skipped calls."""
    store = open_store(path, storage_options)
    ids = store.episode_ids()
    if not ids:
        raise ValueError(f"{path}: no complete episodes")
    if episode is not None and episode not in ids:  # before the summary is printed
        raise KeyError(f"no complete episode {episode!r} in {path} (it has {ids[0]} .. {ids[-1]})")
    st = _stats(store, ids)
    comp = np.concatenate(st["cache/computed"])
    res = {"episodes": len(ids), "steps": int(comp.shape[0]), "calls_per_step": int(comp.shape[1]),
           "mean_skip_rate": float(1 - comp.mean()), "speedup_estimate": float(comp.size / max(comp.sum(), 1)),
           "mean_model_ms": float(np.concatenate(st["model_ms"]).mean()),
           "mean_denoise_ms": float(np.concatenate(st["denoise_ms"]).mean())}
    ro = store.attrs.get("rollout", {})
    print(f"{path}: {res['episodes']} episodes, {res['steps']} steps, {res['calls_per_step']} model calls per step; "
          f"cache {ro.get('cache', {}).get('policy', '?')}, policy {ro.get('policy', '?')}, "
          f"model {str(ro.get('model_sha256', '?'))[:12]}")
    print(f"  mean skip rate {res['mean_skip_rate']:.3f}; speedup estimate {res['speedup_estimate']:.2f}x "
          f"(calls / computed calls: skipped calls assumed free); mean model_ms {res['mean_model_ms']:.1f} "
          f"(denoise {res['mean_denoise_ms']:.1f}) per batched prediction")
    if plots_dir is not None:
        res["plots"] = _plots(st if episode is None else _stats(store, [episode]), Path(plots_dir),
                              episode or f"mean of {len(ids)} episodes")
        print(f"  plots: {', '.join(res['plots'])}")
    return res


def _plots(st: dict, out: Path, label: str) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    skip = 1 - _padded_mean([c.astype(np.float32) for c in st["cache/computed"]])  # (T, calls)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(skip, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set(xlabel="denoising call", ylabel="env step", title=f"skip rate ({label})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label="skipped")
    heat = out / "skip_heatmap.png"
    fig.savefig(heat, dpi=100)

    drift, thr = np.concatenate(st["cache/drift"]), np.concatenate(st["cache/threshold"])
    calls = np.arange(drift.shape[1])
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if np.isfinite(drift).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN calls: warm-up calls measure no drift
            ax.fill_between(calls, np.nanpercentile(drift, 10, axis=0), np.nanpercentile(drift, 90, axis=0),
                            alpha=0.3, label="drift 10-90 %")
            ax.plot(calls, np.nanmean(drift, axis=0), marker="o", label="drift (mean)")
            ax.plot(calls, np.nanmean(thr, axis=0), ls="--", marker="x", color="k", label="threshold (mean)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "drift not measured by this cache policy", ha="center", transform=ax.transAxes)
    ax.set(xlabel="denoising call", ylabel="accumulated drift", title=f"drift vs threshold ({label})")
    dt = out / "drift_threshold.png"
    fig.savefig(dt, dpi=100)
    return [str(heat), str(dt)]


def inspect_data_store(path: str | Path, storage_options: dict | None = None) -> dict:
    """Print a summary of a make-data store (simulator episodes: no cache statistics) and return its numbers:
    episodes, steps, frame size, scene, the runs (seed, control policy, episodes) and the returns."""
    from worldcache.scene import scene_name

    store = EpisodeStore(path, mode="r", storage_options=storage_options)
    gen, ids = store.attrs["generator"], store.episode_ids()
    if not ids:
        raise ValueError(f"{path}: no complete episodes")
    returns, kinds = [], {}
    for i in ids:
        ep = store.load_episode(i, keys=["rewards"])
        returns.append(float(ep["rewards"].sum()))
        kind = ep["attrs"].get("kind", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
    returns = np.array(returns)
    scene = scene_name(gen) or "custom"
    res = {"episodes": len(ids), "steps": int(gen["steps"]), "frame": [int(gen["height"]), int(gen["width"])],
           "scene": scene, "runs": store.attrs.get("runs", {}), "kinds": kinds,
           "mean_return": float(returns.mean()), "min_return": float(returns.min()),
           "max_return": float(returns.max())}
    print(f"{path}: make-data store, {res['episodes']} episodes of {res['steps']} steps, {gen['height']}x{gen['width']} "
          f"frames at {gen['fps']:g} fps; scene {scene}; MuJoCo {gen.get('mujoco', '?')} ({gen.get('gl', '?')})")
    runs = ", ".join(f"seed {r['seed']} {r['policy']} ({r['episodes']})" for r in res["runs"].values())
    print(f"  runs: {runs or 'none recorded'}; episode kinds: "
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"  return per episode: mean {res['mean_return']:.2f}, min {res['min_return']:.2f}, "
          f"max {res['max_return']:.2f}")
    return res


def inspect_main(store: str, plots: str | None = None, video: str | None = None, side_by_side: bool = False,
                 storage_options: dict | None = None) -> int:
    """`worldcache inspect STORE [--plots DIR] [--video DIR [--side-by-side]] [--storage-options JSON]`: a rollout
    store, or a make-data store (its summary and videos: it holds no cache statistics to plot)."""
    if is_make_data(EpisodeStore(store, mode="r", storage_options=storage_options)):
        if plots is not None or side_by_side:
            raise ValueError(f"{store}: a make-data store holds no cache statistics: --plots and --side-by-side "
                             f"are for rollout stores (its summary and --video work)")
        inspect_data_store(store, storage_options)
    else:
        inspect_store(store, plots_dir=plots, storage_options=storage_options)
    if video is not None:
        from .video import write_videos

        paths = write_videos(store, video, side_by_side=side_by_side, storage_options=storage_options)
        print(f"  videos: {len(paths)} in {video}")
    return 0


__all__ = ["WindowDataset", "chunk_shape", "episode_video", "inspect_data_store", "inspect_main", "inspect_store",
           "open_store"]
