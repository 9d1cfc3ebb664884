"""Ray-distributed rollouts of the world-model env into a Zarr `EpisodeStore`, with per-step cache statistics.

`run_rollouts(config)` starts ``workers`` Ray actors. Each actor loads one model replica and steps
``num_envs`` episodes at a time in one `CosmosWorldVectorEnv` (one batched prediction per step); it writes each
finished episode straight into the store, one group per episode, so writers never share a chunk.

Episodes are named by (base seed, index): ``ep{index:06d}_s{seed}``, and episode ``index`` resets its env with
``episode_seed(seed, index)`` (start frame and noise). The driver lists the complete episodes in the store and
schedules only the missing ones, so re-running a config resumes, and asking for more episodes adds only those.

Fault tolerance is Ray's: actors have ``max_restarts`` and their tasks ``max_task_retries``. An actor that dies
mid-batch is restarted (its model reloaded) and the batch re-run; an episode becomes visible only when the store
writes its ``complete`` marker last, and a retry overwrites an incomplete leftover group and skips episodes that
are already complete, so a crash leaves neither duplicates nor partial episodes.

Per episode (T env steps of ``chunk`` frames, n model calls per step), besides obs (T+1, H, W, 3) (reset frame,
then the last frame of each step), rewards, terminated, truncated:

    actions          (T, chunk * A) float32   the clipped chunk actions, flattened (the store's actions are 2-D);
                                              ``actions.reshape(T, chunk, A)`` (root attrs: rollout.action_shape)
    frames           (T, chunk, H, W, 3) uint8   every predicted frame (the video), if save_chunk_frames
    cache/computed   (T, n) bool              per model call: block stack run (False: approximated from cache)
    cache/drift, cache/threshold, cache/motion  (T, n) float32   NaN where the cache policy does not measure it
    model_ms, denoise_ms  (T,) float32        wall time of the step's batched prediction / of its DiT calls
                                              (shared by the num_envs episodes of the batch)
    noise_seed       (T,) int64               the prediction's noise seed
    attrs: index, seed, start_index (row of the checkpoint's start_frames.npy), batch_size (episodes stepped
           together: a caching policy decides per batch, so it is part of what made the episode)

Root attrs ``rollout``: model_sha256 (of the transformer's safetensors), checkpoint, cache (resolved policy
config), env, policy, policy_kwargs, seed, num_envs. A store whose ``rollout`` attrs differ from the config (other
than checkpoint path and num_envs) is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..cache.config import CONFIG_DIR
from .store import FORMAT_VERSION, EpisodeStore

# rollout attrs that may differ between runs into one store (the rest must match to resume)
_FREE_ATTRS = ("checkpoint", "num_envs")


@dataclass
class RolloutConfig:
    out: str = "runs/rollouts.zarr"
    checkpoint: str | None = None        # model folder; None: the bundled model
    cache: str = "worldcache"            # cache policy name or YAML (configs/cache/)
    cache_config: dict = field(default_factory=dict)  # overrides of the cache policy's fields
    num_steps: int | None = None         # denoising steps per prediction; None: the model's default
    episodes: int = 8
    steps: int = 12                      # env steps (chunks) per episode
    seed: int = 0                        # base seed: episode i uses episode_seed(seed, i)
    policy: str = "sinusoid"             # see rollouts.policies.make_policy (in Python also a policy object)
    policy_kwargs: dict = field(default_factory=dict)
    workers: int = 1                     # Ray actors, one model replica each
    num_envs: int = 2                    # episodes stepped together by one actor (one batched prediction)
    num_cpus: float = 1                  # per actor
    num_gpus: float = 0.5                # per actor, only when the model runs on a GPU (fractional: share it)
    device: str = "auto"                 # auto: cuda when the Ray cluster has GPUs, else cpu
    dtype: str = "fp32"                  # model weights: bf16, fp16 or fp32 (latents stay fp32)
    torch_threads: int | None = None     # per actor; None: max(1, int(num_cpus))
    save_chunk_frames: bool = True       # store every predicted frame (T, chunk, H, W, 3), the video
    max_restarts: int = 2                # Ray actor restarts after a crash
    max_task_retries: int = 2            # Ray retries of a batch whose actor died

    @classmethod
    def load(cls, config: "dict | str | Path | RolloutConfig") -> "RolloutConfig":
        """From a dict, a YAML path, or a name under configs/ (``rollout_smoke``). Unknown keys are errors."""
        if isinstance(config, RolloutConfig):
            return config
        if not isinstance(config, dict):
            import yaml

            path = Path(config)
            if not path.is_file() and (CONFIG_DIR / f"{config}.yaml").is_file():
                path = CONFIG_DIR / f"{config}.yaml"
            config = yaml.safe_load(path.read_text()) or {}
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown rollout config key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        cfg = cls(**config)
        for key in ("episodes", "steps", "workers", "num_envs"):
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
                raise ValueError(f"rollout config {key}={getattr(cfg, key)!r}: must be an integer >= 1")
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rollout config device={cfg.device!r}: must be auto, cpu or cuda")
        return cfg


def episode_id(index: int, seed: int) -> str:
    return f"ep{index:06d}_s{seed}"


def episode_seed(seed: int, index: int) -> int:
    """Env seed of episode `index`: hashed from (base seed, index), so nearby base seeds share no episodes."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def model_sha256(folder: str | Path) -> str:
    """sha256 over the transformer's weight files (sorted; one file unless sharded): the model's identity."""
    files = sorted((Path(folder) / "transformer").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}/transformer: no *.safetensors weights")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _folder(cfg: RolloutConfig) -> Path:
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    from worldcache.world_model import BUNDLED

    return BUNDLED


def _qualname(obj) -> str:
    """A stable name for an in-process policy object (a repr would hold its address and never match again)."""
    f = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{f.__module__}:{f.__qualname__}"


def _rollout_attrs(cfg: RolloutConfig, folder: Path) -> dict:
    from worldcache.cache import load_policy

    spec = json.loads((folder / "model.json").read_text())
    cache = load_policy(cfg.cache, **cfg.cache_config)  # validates the cache config before any actor starts
    attrs = {
        "model_sha256": model_sha256(folder),
        "checkpoint": str(folder),
        "cache": {"policy": cache.name, **cache.config.as_dict()},
        "env": {"steps": cfg.steps, "num_steps": cfg.num_steps or spec.get("num_steps", 35),
                "chunk": spec.get("chunk", 8), "action_shape": [spec.get("chunk", 8), spec.get("action_dim", 7)],
                "frame_shape": [spec.get("height", 64), spec.get("width", 80), 3],
                "save_chunk_frames": cfg.save_chunk_frames},
        "num_envs": cfg.num_envs,
        "policy": cfg.policy if isinstance(cfg.policy, str) else _qualname(cfg.policy),
        "policy_kwargs": cfg.policy_kwargs,
        "seed": cfg.seed,
        "format_version": FORMAT_VERSION,
    }
    return json.loads(json.dumps(attrs, default=str))  # as stored (tuples -> lists), so comparisons are exact


def _open_store(path: str, attrs: dict) -> EpisodeStore:
    """Create the store, or check that an existing one was written with the same settings (resume)."""
    store = EpisodeStore(path, mode="a")
    old = store.attrs.get("rollout")
    if old is None:
        if len(store):
            raise ValueError(f"{path}: holds episodes that are not rollouts of this runner (no 'rollout' attrs)")
        store.attrs.update({"rollout": attrs, "frame_shape": attrs["env"]["frame_shape"]})
        return store
    diff = sorted(k for k in set(old) | set(attrs) if k not in _FREE_ATTRS and old.get(k) != attrs.get(k))
    if diff:
        raise ValueError(f"{path}: was written with different {diff} (stored {[old.get(k) for k in diff]}, "
                         f"config {[attrs.get(k) for k in diff]}); use another --out")
    return store


class RolloutWorker:
    """Ray actor body: one model replica, vector envs of up to `num_envs`, writes finished episodes."""

    def __init__(self, cfg: dict, store_path: str, folder: str, device: str):
        import torch

        from worldcache.world_model import WorldModel

        self.cfg = RolloutConfig(**cfg)
        torch.set_num_threads(self.cfg.torch_threads or max(1, int(self.cfg.num_cpus)))
        self.folder, self.device = folder, device
        self.model = WorldModel.from_pretrained(folder, device=device, dtype=self.cfg.dtype)
        self.store = EpisodeStore(store_path, mode="a")
        self.policy = None

    def ready(self) -> bool:
        return True

    def run(self, indices: list[int]) -> dict:
        """Roll out episodes `indices` together; write each one not in the store yet. Returns counts/times."""
        from worldcache.envs.cosmos_env import record_arrays
        from worldcache.envs.vector_env import CosmosWorldVectorEnv

        from .policies import make_policy

        cfg, n, t0 = self.cfg, len(indices), time.perf_counter()
        env = CosmosWorldVectorEnv(n, max_episode_steps=cfg.steps, checkpoint=self.folder, cache=cfg.cache,
                                   cache_config=cfg.cache_config, device=self.device, num_steps=cfg.num_steps,
                                   model=self.model, timings=True)
        try:
            if self.policy is None:
                self.policy = make_policy(cfg.policy, env.single_action_space, **cfg.policy_kwargs)
            seeds = [episode_seed(cfg.seed, i) for i in indices]
            rng = np.random.default_rng(seeds)  # policy randomness: fixed by the batch's episode seeds
            obs, info = env.reset(seed=seeds)
            if hasattr(self.policy, "reset"):
                self.policy.reset(n, rng)
            low, high = env.sim.low, env.sim.high
            eps = [{"obs": [obs[i]], "steps": []} for i in range(n)]
            done = np.zeros(n, bool)
            for _ in range(cfg.steps):  # the time limit truncates every episode at `steps`
                act = np.clip(np.asarray(self.policy(obs, rng), np.float32), low, high)
                obs, rew, term, trunc, inf = env.step(act)
                stats = record_arrays(env.sim.records)  # with NaN where not measured: fine in the store
                for i in np.flatnonzero(~done):
                    eps[i]["obs"].append(obs[i])
                    eps[i]["steps"].append((act[i], rew[i], term[i], trunc[i],
                                            {**stats, **{k: inf[k][i] for k in ("frames", "computed", "model_ms",
                                                                               "denoise_ms", "noise_seed")}}))
                done |= term | trunc
                if done.all():
                    break
        finally:
            env.close()
        write_s, written, skipped, steps, calls, computed = 0.0, [], [], 0, 0, 0
        for i, ep in enumerate(eps):
            eid = episode_id(indices[i], cfg.seed)
            if self.store.exists(eid):  # written by an earlier attempt of this task that died afterwards
                skipped.append(eid)
                continue
            arrays = self._arrays(ep)
            w0 = time.perf_counter()
            self.store.write_episode(eid, **arrays, attrs={"index": int(indices[i]), "seed": seeds[i],
                                                           "start_index": int(info["start_index"][i]),
                                                           "batch_size": n})
            write_s += time.perf_counter() - w0
            written.append(eid)
            steps += len(ep["steps"])
            calls += arrays["extras"]["cache/computed"].size
            computed += int(arrays["extras"]["cache/computed"].sum())
        return {"written": written, "skipped": skipped, "steps": steps, "calls": calls, "computed": computed,
                "task_s": time.perf_counter() - t0, "write_s": write_s, "pid": os.getpid()}

    def _arrays(self, ep: dict) -> dict:
        act, rew, term, trunc, st = zip(*ep["steps"])
        extras = {f"cache/{k}": np.stack([s[k] for s in st]).astype(bool if k == "computed" else np.float32)
                  for k in ("computed", "drift", "threshold", "motion")}
        extras.update(model_ms=np.array([s["model_ms"] for s in st], np.float32),
                      denoise_ms=np.array([s["denoise_ms"] for s in st], np.float32),
                      noise_seed=np.array([s["noise_seed"] for s in st], np.int64))
        if self.cfg.save_chunk_frames:
            extras["frames"] = np.stack([s["frames"] for s in st])
        return dict(obs=np.stack(ep["obs"]), actions=np.stack([a.reshape(-1) for a in act]),
                    rewards=np.array(rew, np.float32), terminated=np.array(term, bool),
                    truncated=np.array(trunc, bool), extras=extras)


def _init_ray(address: str | None) -> bool:
    """Use the caller's Ray, join `address` ("auto": a running cluster), or start a local one. True if started."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False)
    return True


def run_rollouts(config, out: str | None = None, episodes: int | None = None, workers: int | None = None,
                 address: str | None = None, progress: bool = True) -> dict:
    """Roll out the missing episodes of `config` (dict, YAML path or configs/ name) into its store.

    `out`, `episodes`, `workers` override the config. Returns a summary: episodes written/skipped (already in
    the store), steps, rollout seconds (actors ready -> last episode written), steps/s, episodes/s, mean skip
    rate (1 - computed fraction of the model calls), and write_share (time in Zarr writes / actor task time).
    """
    import ray
    from ray.util import ActorPool

    cfg = RolloutConfig.load(config)
    cfg = RolloutConfig(**{**asdict(cfg), **{k: v for k, v in (("out", out), ("episodes", episodes),
                                                                ("workers", workers)) if v is not None}})
    RolloutConfig.load(asdict(cfg))  # re-check the overrides
    folder = _folder(cfg)
    store = _open_store(cfg.out, _rollout_attrs(cfg, folder))
    todo = [i for i in range(cfg.episodes) if not store.exists(episode_id(i, cfg.seed))]
    summary = {"store": cfg.out, "episodes_written": 0, "episodes_skipped": cfg.episodes - len(todo), "steps": 0,
               "rollout_s": 0.0, "steps_per_s": 0.0, "episodes_per_s": 0.0, "mean_skip_rate": float("nan"),
               "write_s": 0.0, "write_share": 0.0, "workers": 0}
    if not todo:
        return summary
    batches = [todo[k:k + cfg.num_envs] for k in range(0, len(todo), cfg.num_envs)]
    started = _init_ray(address)
    actors = []
    try:
        gpu = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        need = {"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if gpu else {})}
        have = ray.cluster_resources()
        n_workers = min(cfg.workers, len(batches))
        short = [k for k, v in need.items() if v * n_workers > have.get(k, 0)]
        if short and address is None:  # a fixed local cluster never grows: the actors would wait forever
            raise ValueError(f"{n_workers} workers need {need} each but Ray has {have.get('CPU')} CPUs / "
                             f"{have.get('GPU', 0)} GPUs; lower workers, num_cpus or num_gpus")
        Worker = ray.remote(RolloutWorker).options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus if gpu else 0, max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_task_retries)
        actors = [Worker.remote(asdict(cfg), os.path.abspath(cfg.out), str(folder.resolve()),
                                "cuda" if gpu else "cpu") for _ in range(n_workers)]
        ray.get([a.ready.remote() for a in actors])  # model loading is not rollout time
        summary["workers"] = n_workers
        results = _collect(ActorPool(actors).map_unordered(lambda a, b: a.run.remote(b), batches),
                           len(todo), progress)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    summary.update(results)
    return summary


def _collect(results, total: int, progress: bool) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    tot = {"episodes_written": 0, "steps": 0, "calls": 0, "computed": 0, "write_s": 0.0, "task_s": 0.0}
    with tqdm(total=total, unit="ep", disable=not progress, desc="rollouts") as bar:
        for r in results:
            tot["episodes_written"] += len(r["written"])
            for k in ("steps", "calls", "computed", "write_s", "task_s"):
                tot[k] += r[k]
            dt = time.perf_counter() - t0
            bar.update(len(r["written"]) + len(r["skipped"]))
            bar.set_postfix(steps_s=f"{tot['steps'] / dt:.2f}", skip=f"{1 - tot['computed'] / max(tot['calls'], 1):.2f}")
    dt = time.perf_counter() - t0
    return {"episodes_written": tot["episodes_written"], "steps": tot["steps"], "rollout_s": dt,
            "steps_per_s": tot["steps"] / dt, "episodes_per_s": tot["episodes_written"] / dt,
            "mean_skip_rate": 1 - tot["computed"] / tot["calls"] if tot["calls"] else float("nan"),
            "write_s": tot["write_s"], "write_share": tot["write_s"] / tot["task_s"] if tot["task_s"] else 0.0}


def format_summary(s: dict) -> str:
    return (f"{s['store']}: {s['episodes_written']} episodes written, {s['episodes_skipped']} already there; "
            f"{s['steps']} steps in {s['rollout_s']:.1f} s ({s['steps_per_s']:.2f} steps/s, "
            f"{s['episodes_per_s']:.2f} episodes/s, {s['workers']} workers); mean skip rate "
            f"{s['mean_skip_rate']:.2f}; Zarr writes {s['write_s']:.2f} s = {100 * s['write_share']:.1f} % of "
            f"rollout time")


def rollout_main(config, out: str | None = None, episodes: int | None = None, workers: int | None = None) -> int:
    """`worldcache rollout CONFIG.yaml [--out STORE] [--episodes N] [--workers N]`: progress bar + summary."""
    print(format_summary(run_rollouts(config, out=out, episodes=episodes, workers=workers, progress=True)))
    return 0


def bench_rollouts(config="rollout_smoke", episodes: int | None = None, workers=(1, 2), out_dir: str = "runs/bench",
                   **overrides) -> list[dict]:
    """Episodes/s with 1 vs 2 (`workers`) actors and the share of rollout time spent writing Zarr (goal < 5 %).

    Each run writes a fresh store ``out_dir/bench_w{N}.zarr``; `overrides` change config keys (e.g.
    ``num_cpus=1`` so that 2 actors fit on 2 cores). Ray starts once for all runs, and model loading is not
    timed. Prints a table; returns the summaries."""
    import shutil

    import ray

    cfg = RolloutConfig.load(config)
    cfg = RolloutConfig.load({**asdict(cfg), **overrides, **({"episodes": episodes} if episodes else {})})
    started = _init_ray(None)
    rows = []
    try:
        for w in workers:
            out = os.path.join(out_dir, f"bench_w{w}.zarr")
            shutil.rmtree(out, ignore_errors=True)
            rows.append(run_rollouts(asdict(cfg), out=out, workers=w, progress=False))
    finally:
        if started:
            ray.shutdown()
    print(f"{cfg.episodes} episodes x {cfg.steps} steps, num_envs {cfg.num_envs}, cache {cfg.cache}, "
          f"{cfg.num_cpus} CPU per worker")
    print(f"  {'workers':>7} {'episodes/s':>10} {'steps/s':>8} {'skip':>5} {'zarr write %':>12}")
    for r in rows:
        print(f"  {r['workers']:>7} {r['episodes_per_s']:10.3f} {r['steps_per_s']:8.2f} {r['mean_skip_rate']:5.2f} "
              f"{100 * r['write_share']:12.2f}")
    if len(rows) > 1 and rows[0]["episodes_per_s"]:
        print(f"  scaling {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
              f"{rows[-1]['episodes_per_s'] / rows[0]['episodes_per_s']:.2f}x")
    return rows


__all__ = ["RolloutConfig", "RolloutWorker", "bench_rollouts", "episode_id", "episode_seed", "format_summary",
           "model_sha256", "rollout_main", "run_rollouts"]
