"""The Ray actor: one model replica rolls out batches of episodes; a background thread writes them.

`RolloutWorker.run(indices)` steps the episodes `indices` together in one `CosmosWorldVectorEnv` (one batched
prediction per env step). Each episode has its own env seed and policy generator (`config.episode_seed`,
`config.policy_rng`) and the cache decides per sample, so the batch it ran in does not change it (up to batched
floating point, see the README). Finished episodes go to an `EpisodeWriter`, whose thread writes episode k while
the model predicts the next batch.

Nothing is lost: the driver calls `flush` before it stops an actor, after a failed batch too. An actor that dies
with episodes still queued loses them for this run only: they never got their ``complete`` marker, the driver sees
them missing and runs them again (and a later run would too).
"""
from __future__ import annotations

import os
import pickle
import queue
import tempfile
import threading
import time

import numpy as np

from .config import RolloutConfig, episode_id, episode_seed, policy_rng
from .identity import write_files
from .store import EpisodeStore, holds_lease

# CallRecord fields stored per episode as (T, n) arrays, and their dtype; step and branch are the same at every
# env step (episode attrs ``cache_calls``); sample (a position in the batch) is not part of the episode.
RECORD_ARRAYS = {"sigma": np.float32, "computed": bool, "drift": np.float32, "threshold": np.float32,
                 "motion": np.float32, "saliency": np.float32, "gamma": np.float32, "warped": np.float32,
                 "blocks_run": np.int16, "policy_ms": np.float32, "wall_ms": np.float32}


class EpisodeWriter:
    """A background thread writing queued episodes into the store, in order. The queue is bounded: `put` waits
    while it is full (a rollout faster than its writes slows down rather than filling memory)."""

    def __init__(self, store: EpisodeStore, maxsize: int):
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.written: list[str] = []
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.write_s = 0.0  # time the thread spent writing (overlapped with the rollout)
        threading.Thread(target=self._loop, daemon=True, name="episode-writer").start()

    def put(self, eid: str, arrays: dict, attrs: dict) -> float:
        """Queue one episode; returns the seconds the caller waited for room."""
        t0 = time.perf_counter()
        self.queue.put((eid, arrays, attrs))
        return time.perf_counter() - t0

    def flush(self) -> float:
        """Wait until every queued episode is written; returns the seconds waited."""
        t0 = time.perf_counter()
        self.queue.join()
        return time.perf_counter() - t0

    def _loop(self) -> None:
        while True:
            eid, arrays, attrs = self.queue.get()
            try:
                if self.store.exists(eid):  # written by an earlier attempt that died afterwards
                    self.skipped.append(eid)
                else:
                    t0 = time.perf_counter()
                    self.store.write_episode(eid, **arrays, attrs=attrs)
                    self.write_s += time.perf_counter() - t0
                    self.written.append(eid)
            except Exception as e:  # reported by flush; the episode stays incomplete and is run again
                self.errors.append(f"{eid}: {type(e).__name__}: {e}")
            finally:
                self.queue.task_done()


class RolloutWorker:
    """Ray actor body: one model replica (loaded from the checkpoint files shipped through Ray's object store),
    vector envs of up to `num_envs` episodes, and a background `EpisodeWriter`."""

    def __init__(self, cfg: dict, files: dict[str, bytes], device: str, lease: str | None,
                 policy_file: tuple[str, bytes] | None = None):
        import torch

        from worldcache.world_model import WorldModel

        self.cfg = RolloutConfig(**cfg)
        if lease is not None and not holds_lease(self.cfg.out, lease, self.cfg.storage_options):
            import socket

            raise ValueError(f"{self.cfg.out}: this worker (host {socket.gethostname()}) does not see the driver's "
                             f"lease there: a local path that is not shared between the nodes? Use a shared file "
                             f"system or an object store URL (s3://, gs://) on a multi-node cluster")
        torch.set_num_threads(self.cfg.torch_threads or max(1, int(self.cfg.num_cpus)))
        self._tmp = tempfile.TemporaryDirectory(prefix="worldcache-ckpt-")  # removed with the actor
        self.folder = write_files(files, self._tmp.name)
        if policy_file is not None:  # a torch policy file from the driver: a local copy here too
            name, data = policy_file
            self.cfg.policy = str(write_files({f"policy/{name}": data}, self._tmp.name) / "policy" / name)
        self.device = device
        self.model = WorldModel.from_pretrained(self.folder, device=device, dtype=self.cfg.dtype,
                                                compile=self.cfg.compile)
        store = EpisodeStore(self.cfg.out, mode="a", storage_options=self.cfg.storage_options, lease=lease)
        self.writer = EpisodeWriter(store, self.cfg.write_queue)
        # a policy object, as each batch copies it: cloudpickle (as Ray ships it) takes what deepcopy cannot, such
        # as a module held in an attribute
        from ray import cloudpickle

        self._policy = None if isinstance(self.cfg.policy, str) else cloudpickle.dumps(self.cfg.policy)

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, indices: list[int]) -> dict:
        """Roll out episodes `indices` together and queue each for writing. Returns counts and times."""
        from worldcache.envs.vector_env import CosmosWorldVectorEnv

        from .policies import make_policy

        cfg, n, t0 = self.cfg, len(indices), time.perf_counter()
        env = CosmosWorldVectorEnv(n, max_episode_steps=cfg.steps, checkpoint=self.folder, cache=cfg.cache,
                                   cache_config=cfg.cache_config, device=self.device, num_steps=cfg.num_steps,
                                   model=self.model, timings=True, dtype=cfg.dtype)
        try:
            # built afresh for every batch (a policy object: a copy of the config's), so nothing a policy keeps
            # crosses batches: an episode is the same whichever worker, batch or resumed run makes it
            spec = pickle.loads(self._policy) if self._policy is not None else cfg.policy  # cloudpickle's is pickle's
            policy = make_policy(spec, env.single_action_space, **cfg.policy_kwargs)
            rngs = [policy_rng(cfg.seed, i) for i in indices]  # one generator per episode
            obs, info = env.reset(seed=[episode_seed(cfg.seed, i) for i in indices])
            if hasattr(policy, "reset"):
                policy.reset(rngs)
            low, high = env.sim.low, env.sim.high
            eps = [{"obs": [obs[i]], "steps": []} for i in range(n)]
            done = np.zeros(n, bool)
            for _ in range(cfg.steps):  # the time limit truncates every episode at `steps`
                act = np.clip(np.asarray(policy(obs, rngs), np.float32), low, high)
                obs, rew, term, trunc, inf = env.step(act)
                for i in np.flatnonzero(~done):
                    eps[i]["obs"].append(obs[i])
                    eps[i]["steps"].append((act[i], rew[i], term[i], trunc[i],
                                            {"records": env.records[i], **{k: inf[k][i] for k in (
                                                "frames", "model_ms", "denoise_ms", "noise_seed")}}))
                done |= term | trunc
                if done.all():
                    break
        finally:
            env.close()
        blocked, steps, calls, computed = 0.0, 0, 0, 0
        for i, ep in enumerate(eps):
            arrays, attrs = self._episode(ep)
            # device: a store resumed on another cluster (device auto) may mix CPU and GPU episodes, which differ by
            # more than float rounding (TF32 convolutions): each says where it was made
            attrs.update(index=int(indices[i]), seed=episode_seed(cfg.seed, indices[i]),
                         start_index=int(info["start_index"][i]), device=str(self.device))
            blocked += self.writer.put(episode_id(indices[i], cfg.seed), arrays, attrs)
            steps += len(ep["steps"])
            calls += arrays["extras"]["cache/computed"].size
            computed += int(arrays["extras"]["cache/computed"].sum())
        return {"queued": [episode_id(i, cfg.seed) for i in indices], "steps": steps, "calls": calls,
                "computed": computed, "task_s": time.perf_counter() - t0, "blocked_s": blocked, "pid": os.getpid()}

    def flush(self) -> dict:
        """Wait for the writer; what it wrote, skipped (already complete) and failed, and its times."""
        waited = self.writer.flush()
        w = self.writer
        out = {"written": list(w.written), "skipped": list(w.skipped), "errors": list(w.errors),
               "write_s": w.write_s, "flush_s": waited}
        w.written, w.skipped, w.errors, w.write_s = [], [], [], 0.0
        return out

    def _episode(self, ep: dict) -> tuple[dict, dict]:
        act, rew, term, trunc, st = zip(*ep["steps"])
        recs = [s["records"] for s in st]  # (T, n) CallRecords
        extras = {f"cache/{k}": np.array([[getattr(r, k) for r in row] for row in recs], dtype)
                  for k, dtype in RECORD_ARRAYS.items()}
        extras.update(model_ms=np.array([s["model_ms"] for s in st], np.float32),
                      denoise_ms=np.array([s["denoise_ms"] for s in st], np.float32),
                      noise_seed=np.array([s["noise_seed"] for s in st], np.int64))
        if self.cfg.save_chunk_frames:
            extras["frames"] = np.stack([s["frames"] for s in st])
        arrays = dict(obs=np.stack(ep["obs"]), actions=np.stack(act), rewards=np.array(rew, np.float32),
                      terminated=np.array(term, bool), truncated=np.array(trunc, bool), extras=extras)
        calls = {"step": [r.step for r in recs[0]], "branch": [r.branch for r in recs[0]]}
        return arrays, {"cache_calls": calls}


__all__ = ["EpisodeWriter", "RECORD_ARRAYS", "RolloutWorker"]
