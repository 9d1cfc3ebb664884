"""`CosmosWorldVectorEnv`: N world-model envs stepped by ONE batched prediction per step.

`gym.make_vec("WorldCache-Cosmos-v0", num_envs=N)` builds it (the registered ``vector_entry_point``). Sub-env i
behaves like a `CosmosWorldEnv` seeded with ``seed + i``: it has its own random generator for start frames and
noise seeds, and the cache decides per sample (each env keeps its own cache state), so the results equal N single
envs up to batched floating point (diffusers-hook caches, which decide for the whole batch, excepted).

Autoreset is gymnasium 1.x's next-step mode: after an env terminates or truncates, its next `step` ignores its
action and returns its reset observation (reward 0, not done); the other envs are predicted in one batch (no
model call when all envs reset). An env starts again from the frame the last ``reset(options={"frame": ...})``
gave it, or, where that reset gave none, from a start frame drawn as `reset` draws them. Infos are dicts of
arrays with gymnasium's ``_key`` masks; cache statistics are each env's own (see `CosmosWorldEnv` for which
keys; ``env.records[i]`` holds env i's full `CallRecord`s of its last prediction); ``model_ms`` and
``denoise_ms`` (with ``timings=True``) are of the batched prediction, repeated for every env in it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .cosmos_env import SEED_HIGH, CosmosWorldEnv, SharedModelSpec, WorldSim, check_steps, check_view_args


class CosmosWorldVectorEnv(SharedModelSpec, VectorEnv):
    metadata = {**CosmosWorldEnv.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, max_episode_steps: int | None = 12, checkpoint: str | Path | None = None,
                 cache="worldcache", cache_config: dict | None = None, device: str = "cpu",
                 num_steps: int | None = None, chunk: int | None = None, reward_fn: Callable | None = None,
                 termination_fn: Callable | None = None, obs_mode: str = "frame", history: int = 4,
                 render_mode: str | None = None, model=None, timings: bool = False, normalize_actions: bool = False,
                 dtype: str | None = None, compile: bool = False):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        check_view_args(obs_mode, history, render_mode, self.metadata["render_modes"])
        check_steps("max_episode_steps", max_episode_steps)  # as gym.make's TimeLimit checks it
        self.sim = WorldSim(checkpoint, cache, cache_config, device, num_steps, chunk, reward_fn, termination_fn,
                            model, timings, normalize_actions, dtype, compile)
        self.num_envs, self.max_episode_steps = num_envs, max_episode_steps
        self.obs_mode, self.history, self.render_mode = obs_mode, int(history), render_mode
        self.metadata = {**self.metadata, "render_fps": self.sim.render_fps}
        self.single_action_space = self.sim.action_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = self.sim.observation_space(obs_mode, self.history)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._keep = self.sim.frames_kept(self.history)  # shown and conditioned on: history never sets dynamics
        self._frames: np.ndarray | None = None  # (N, _keep, H, W, 3); None until reset
        self._given: list[np.ndarray | None] = [None] * num_envs  # each env's frame from its last reset, if any
        self._steps = np.zeros(num_envs, np.int64)
        self._autoreset = np.zeros(num_envs, bool)
        self.records: list[list] = [[] for _ in range(num_envs)]  # each env's CallRecords of its last prediction

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """All envs, or with ``options["reset_mask"]`` (bool (num_envs,), as gymnasium's sync and async vector envs
        take it) only those it marks: the others keep their frames and step counts, and the infos are theirs only.
        ``options["frame"]``: uint8 (num_envs, H, W, 3), or (H, W, 3) for every env."""
        n = self.num_envs
        seeds = [None if seed is None else seed + i for i in range(n)] if not isinstance(seed, (list, tuple)) \
            else list(seed)
        if len(seeds) != n:
            raise ValueError(f"seed list must have num_envs={n} entries, got {len(seeds)}")
        # checked first (the mask; the frames, or that the checkpoint has start frames; the seeds): a rejected reset
        # changes nothing
        mask = self._reset_mask(options)
        if isinstance(options, Mapping) and "reset_mask" in options:
            options = {k: v for k, v in options.items() if k != "reset_mask"}
        given = self.sim.parse_options(options, batch=n)
        fresh = [None if s is None else seeding.np_random(s)[0] for s in seeds]
        for i in np.flatnonzero(mask):
            self._given[i] = None if given is None else given[i]
        if mask.all():
            super().reset(seed=seed if isinstance(seed, int) else None)
            self._frames = np.empty((n, self._keep, *self.sim.frame_shape), np.uint8)
        infos: dict = {}
        for i in np.flatnonzero(mask):  # as gymnasium's Env.reset: seed None keeps an existing generator
            if fresh[i] is not None or self._rngs[i] is None:
                self._rngs[i] = fresh[i] if fresh[i] is not None else seeding.np_random(None)[0]
            infos = self._reset_env(i, infos)
        self._autoreset[mask] = False
        return self._obs(), infos

    def _reset_mask(self, options) -> np.ndarray:
        """Which envs a reset resets: all, or ``options["reset_mask"]``, checked as gymnasium checks it (a partial
        reset also needs a full one before it: the other envs have no frames yet)."""
        if not isinstance(options, Mapping) or "reset_mask" not in options:
            return np.ones(self.num_envs, bool)
        mask = options["reset_mask"]
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,) \
                or not mask.any():
            raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},) with at "
                             f"least one True, got {mask!r}")
        if self._frames is None and not mask.all():
            raise ResetNeeded("a partial reset (options['reset_mask']) needs a reset of every env before it")
        return mask

    def _reset_env(self, i: int, infos: dict) -> dict:
        """Env i starts again: from the frame the last `reset` gave it, else from a drawn start frame."""
        frame, info = self.sim.start(self._rngs[i], self._given[i])
        self._frames[i] = frame
        self._steps[i] = 0
        return self._add_info(infos, info, i)

    def step(self, actions):
        if self._frames is None:
            raise ResetNeeded("Cannot call step() before reset(): the envs have no current frame.")
        # an env being auto-reset ignores its action, so a policy's NaN there (from a terminal obs) is no error
        a, clipped = self.sim.check_actions(actions, batch=self.num_envs, ignored=self._autoreset)
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: dict = {}
        run = np.flatnonzero(~self._autoreset)
        if len(run):
            seeds = [int(self._rngs[i].integers(SEED_HIGH)) for i in run]
            frames, each = self.sim.predict(self._frames[run], a[run], seeds)  # the one model call
            for j, i in enumerate(run):
                rewards[i], terminated[i] = self.sim.outcome(frames[j], a[i])
                self.records[i] = self.sim.records[j]
                self._frames[i] = np.concatenate([self._frames[i], frames[j]])[-self._keep:]
                self._steps[i] += 1
                infos = self._add_info(infos, {**each[j], "frames": frames[j], "action_clipped": bool(clipped[i]),
                                               "noise_seed": seeds[j]}, i)
            if self.max_episode_steps is not None:
                truncated[run] = self._steps[run] >= self.max_episode_steps
        for i in np.flatnonzero(self._autoreset):
            infos = self._reset_env(i, infos)
        self._autoreset = terminated | truncated
        return self._obs(), rewards, terminated, truncated, infos

    def _obs(self):
        if self.obs_mode == "frame":
            return self._frames[:, -1].copy()
        return {"frame": self._frames[:, -1].copy(), "history": self._frames[:, -self.history:].copy()}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._frames is None:  # as gymnasium's order enforcing (sync and async vector envs) says it
            raise ResetNeeded("Cannot call render() before reset(): the envs have no current frame.")
        return tuple(self._frames[:, -1].copy())

    def close_extras(self, **kwargs):
        self.sim.close()


def bench_vector(num_envs: int = 4, steps: int = 3, checkpoint: str | Path | None = None, cache: str = "worldcache",
                 num_steps: int | None = None, seed: int = 0, device: str = "cpu", compile: bool = False) -> dict:
    """Per-env step time of `num_envs` single envs stepped one after another vs. one vector env of `num_envs`
    (one batched prediction per step), all sharing one loaded model. Prints a table; returns the numbers."""
    from worldcache.world_model import BUNDLED, WorldModel

    folder = Path(checkpoint) if checkpoint is not None else BUNDLED
    model = WorldModel.from_pretrained(folder, device=device, compile=compile)
    kw = dict(checkpoint=folder, cache=cache, num_steps=num_steps, model=model, device=device)
    singles = [CosmosWorldEnv(**kw) for _ in range(num_envs)]
    vec = CosmosWorldVectorEnv(num_envs, max_episode_steps=None, **kw)  # no autoreset inside the timed steps
    rng = np.random.default_rng(seed)
    acts = [rng.uniform(vec.sim.low, vec.sim.high, vec.action_space.shape).astype(np.float32)
            for _ in range(steps + 1)]  # the first step is a warm-up, not timed

    def run_singles():
        for i, env in enumerate(singles):
            env.reset(seed=seed + i)
        fr, t = [], 0.0
        for k, a in enumerate(acts):
            t0 = time.perf_counter()
            for i, env in enumerate(singles):
                fr.append(env.step(a[i])[4]["computed_fraction"])
            t += (time.perf_counter() - t0) if k else 0.0
        return t, float(np.mean(fr))

    def run_vec():
        vec.reset(seed=seed)
        fr, t = [], 0.0
        for k, a in enumerate(acts):
            t0 = time.perf_counter()
            fr.append(vec.step(a)[4]["computed_fraction"].mean())
            t += (time.perf_counter() - t0) if k else 0.0
        return t, float(np.mean(fr))

    t_single, f_single = run_singles()
    t_vec, f_vec = run_vec()
    for env in singles:
        env.close()
    vec.close()
    res = {"num_envs": num_envs, "steps": steps, "cache": vec.sim.policy.name, "num_steps": vec.sim.num_steps,
           "single_s_per_env_step": t_single / (steps * num_envs), "vector_s_per_env_step": t_vec / (steps * num_envs),
           "single_computed_fraction": f_single, "vector_computed_fraction": f_vec}
    res["speedup"] = res["single_s_per_env_step"] / res["vector_s_per_env_step"]
    print(f"{num_envs} envs, {steps} steps of one chunk each, cache={res['cache']}, {res['num_steps']} denoising "
          f"steps (after one warm-up step)")
    print(f"  {'':<22} {'s/env-step':>10} {'computed':>9}")
    print(f"  {'single envs, in turn':<22} {res['single_s_per_env_step']:10.3f} {f_single:9.2f}")
    print(f"  {'vector env, batched':<22} {res['vector_s_per_env_step']:10.3f} {f_vec:9.2f}")
    print(f"  speedup (single / vector): {res['speedup']:.2f}x")
    return res
