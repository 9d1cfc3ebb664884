"""`WorldCache-Cosmos-v0`: a Gymnasium environment whose dynamics are the action-conditioned world model.

One env step is one prediction. The model predicts `chunk` new frames from `chunk` actions in one denoising run,
so `step` takes a (chunk, action_dim) array and advances `chunk` frames. The per-step cost is then honest: every
step is exactly one prediction, and the cache statistics in `info` describe that one prediction. (Accepting one
action per step and buffering them would hide the frames until the chunk is full and make step times uneven.)

Besides the world model, the checkpoint folder may hold ``start_frames.npy`` (N, H, W, 3) uint8, the start states
`reset` samples from, and a state decoder (``state_decoder.json`` + ``state_decoder.safetensors``, see
`worldcache.state_decoder`): the default reward is then the task's reward formula on the positions it decodes from
each predicted frame, plus the exact control cost of each action.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from worldcache.fork_guard import forked_after_torch

START_FRAMES = "start_frames.npy"
STAT_KEYS = ("drift", "threshold", "motion")  # per-call decision statistics the info carries where measured
OBS_MODES = ("frame", "history")
SEED_HIGH = 2**31  # noise seeds are drawn from the env's np_random: same env seed -> same predictions
_warned_no_reward: set[str] = set()


class SharedModel:
    """A passed-in model as an env's spec holds it: gymnasium's wrappers deep-copy the spec at each `.spec`, which
    would copy the weights (gigabytes for the real model); this copies as itself, and `gym.make(env.spec)` gets
    the same model again."""

    def __init__(self, model):
        self.model = model

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"SharedModel({self.model.spec.name!r})"


class SharedModelSpec:
    """Mixin of the single and the vector env: the `spec` gym.make/make_vec set holds a passed-in model as a
    `SharedModel`."""

    @property
    def spec(self):
        return getattr(self, "_spec", None)

    @spec.setter
    def spec(self, spec) -> None:  # gym.make sets it, with the kwargs the env was made with
        model = None if spec is None else spec.kwargs.get("model")
        if model is not None and not isinstance(model, SharedModel):
            spec = dataclasses.replace(spec, kwargs={**spec.kwargs, "model": SharedModel(model)})
        self._spec = spec


def action_box(low, high, chunk: int, action_dim: int) -> spaces.Box:
    """One env step's action space: `chunk` actions of `action_dim`, each within [low, high] (scalars or per dim)."""
    shape = (chunk, action_dim)
    return spaces.Box(np.broadcast_to(low, shape).astype(np.float32), np.broadcast_to(high, shape).astype(np.float32),
                      dtype=np.float32)


class WorldSim:
    """What the single and the vector env share: model, cache policy, start frames, reward and termination."""

    def __init__(self, checkpoint=None, cache="worldcache", cache_config=None, device="cpu", num_steps=None,
                 chunk=None, reward_fn=None, termination_fn=None, model=None, timings=False,
                 normalize_actions=False, dtype=None, compile=False):
        from worldcache.cache import CachePolicy
        from worldcache.cache import load_cache
        from worldcache.world_model import BUNDLED, CheckpointError, WorldModel, parse_dtype

        if forked_after_torch():  # the copied OpenMP pool would deadlock (worldcache.fork_guard); one thread runs,
            import torch  # and is what N forked workers on N cores want

            torch.set_num_threads(1)
        if isinstance(model, SharedModel):  # from an env's spec
            model = model.model
        if model is not None and not isinstance(model, WorldModel):
            raise TypeError(f"model must be a WorldModel (WorldModel.from_pretrained), got {type(model).__name__}")
        for name, fn in (("reward_fn", reward_fn), ("termination_fn", termination_fn)):
            if fn is not None and not callable(fn):  # else it fails only after the first step's prediction
                raise TypeError(f"{name} must be a function (frames, actions) -> number, got {fn!r}")
        for name, flag in (("timings", timings), ("normalize_actions", normalize_actions), ("compile", compile)):
            if not isinstance(flag, (bool, np.bool_)):  # "no" would be read as on
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        # The folder also holds start frames and state decoder. A passed-in model without a checkpoint has neither.
        self.folder = Path(checkpoint) if checkpoint is not None else (BUNDLED if model is None else None)
        check_steps("num_steps", num_steps)
        # dtype: the weights' (bf16/fp16/fp32; None: fp32, or a passed-in model's own); latents, noise and timesteps
        # stay fp32. compile: torch.compile the DiT's blocks (faster steps after a first compile; `compile_dit`)
        if model is None:
            self.model = WorldModel.from_pretrained(self.folder, device=device, dtype=dtype or "fp32", compile=compile)
        else:  # used as it is: settings that would load it otherwise are refused, not dropped
            if self.folder is not None and not self.folder.is_dir():
                raise CheckpointError(f"checkpoint folder not found: {self.folder}")
            if dtype is not None and parse_dtype(dtype) != model.dtype:
                raise ValueError(f"dtype={dtype!r}, but the model passed in has {model.dtype} weights (dtype applies "
                                 f"when the env loads the model)")
            if compile and model.dit.compiled_blocks is None:
                raise ValueError("compile=True, but the model passed in is not compiled: compile it "
                                 "(WorldModel.compile_dit) or let the env load it")
            self.model = model
        s = self.spec = self.model.spec
        if chunk is not None and chunk != s.chunk:
            raise ValueError(f"chunk={chunk} does not match the model's chunk {s.chunk} (frames per prediction)")
        self.timings = bool(timings)
        self.records: list = []  # per sample, its CallRecords of the last prediction (NaN: not measured)
        yaml_steps = None  # a tuned cache YAML (`worldcache tune`) carries the num_steps it was tuned at
        if isinstance(cache, CachePolicy):
            if cache_config:
                raise ValueError("cache_config only applies when cache is a policy name or YAML path")
            self.policy = cache
        else:
            # None: no cache, as `WorldModel.predict(policy=None)`
            self.policy, yaml_steps = load_cache("none" if cache is None else cache, **(cache_config or {}))
        if getattr(self.policy.config, "cross_chunk", False):  # it would be accepted and do nothing
            raise ValueError("cross_chunk applies to WorldModel.rollout only: an env step is one prediction, and "
                             "each starts its cache afresh")
        if num_steps is not None and yaml_steps is not None and num_steps != yaml_steps:
            warnings.warn(f"num_steps={num_steps} overrides the {yaml_steps} steps the cache YAML {cache} was tuned "
                          f"at (leave num_steps unset to run at them)", stacklevel=3)
        self.num_steps = int(num_steps if num_steps is not None else yaml_steps or s.num_steps)
        self.low = np.asarray(s.action_low, np.float32)
        self.high = np.asarray(s.action_high, np.float32)
        # normalize_actions: RL libraries expect Box[-1, 1]; actions are then mapped affinely onto the model's bounds
        self.normalize_actions = bool(normalize_actions)
        lo, hi = (-1.0, 1.0) if self.normalize_actions else (self.low, self.high)
        self.action_space = action_box(lo, hi, s.chunk, s.action_dim)
        self.frame_shape = (s.height, s.width, 3)
        self.render_fps = s.fps / s.chunk  # render() gives one frame per step, and a step is `chunk` frames

        self.start_frames = None
        path = self.folder / START_FRAMES if self.folder is not None else None
        if path is not None and path.is_file():
            frames = np.load(path)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != self.frame_shape or not len(frames):
                raise CheckpointError(f"{path}: must be uint8 (N, {s.height}, {s.width}, 3) with N >= 1, got "
                                      f"{frames.dtype} {frames.shape}")
            self.start_frames = frames

        if reward_fn is None:
            reward_fn = self._default_reward(device)
        self.reward_fn = reward_fn
        self.termination_fn = termination_fn or (lambda frames, actions: False)

    def _default_reward(self, device) -> Callable:
        from worldcache.state_decoder import CONFIG_FILE, WEIGHTS_FILE, StateDecoder
        from worldcache.world_model import CheckpointError

        if self.folder is not None and StateDecoder.exists(self.folder):
            decoder = StateDecoder.load(self.folder, device)
            try:
                decoder.check_frames(self.spec, self.folder / CONFIG_FILE)
                decoder.check_scene(self.spec.scene, self.folder / CONFIG_FILE)
            except ValueError as e:
                raise CheckpointError(f"{e}, or give the env a reward_fn=") from None
            return decoder.chunk_reward
        key = str(self.folder)
        if key not in _warned_no_reward:  # once per folder: N envs of one vector make need not repeat it
            _warned_no_reward.add(key)
            old = self.folder is not None and (self.folder / "reward_head.safetensors").is_file()
            why = " (its reward_head.safetensors is from an older version and no longer read)" if old else ""
            where = (f"in {self.folder} ({WEIGHTS_FILE})" if self.folder is not None
                     else "(a model passed in without checkpoint=)")
            warnings.warn(f"no state decoder {where}{why}: reward is 0.0; pass reward_fn= (or, for a Pusher model, "
                          f"train one with `worldcache train --stages decoder`)", stacklevel=3)
        return lambda frames, actions: 0.0

    def frames_kept(self, history: int) -> int:
        """Frames an env keeps: those it shows (`history`) and those the model conditions on (1, or 5 with two
        conditioning latent frames), so that an observation setting never changes the dynamics."""
        return max(int(history), self.spec.cond_frames)

    def observation_space(self, obs_mode: str, history: int) -> spaces.Space:
        frame = spaces.Box(0, 255, self.frame_shape, np.uint8)
        if obs_mode == "frame":
            return frame
        return spaces.Dict({"frame": frame, "history": spaces.Box(0, 255, (history, *self.frame_shape), np.uint8)})

    # --- input checks: all of them run before any state changes, so a rejected call leaves the env usable ----
    def check_actions(self, action, batch: int | None = None,
                      ignored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (model actions clipped to the bounds, float32 (batch, chunk, A); per-env "was clipped" flags).

        With `normalize_actions` the input is in [-1, 1] (clipped there) and scaled onto the model's bounds.
        `ignored` (batch,) bool: rows the step does not use (envs being auto-reset), whatever they hold."""
        s = self.spec
        want = (s.chunk, s.action_dim) if batch is None else (batch, s.chunk, s.action_dim)
        try:  # float64: a large finite float64 action is clipped, not overflowed to inf by a float32 cast
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"action must be a float array of shape {want}: {e}") from None
        if a.shape != want:
            raise ValueError(f"action must have shape {want} (one step = one chunk of {s.chunk} actions of dim "
                             f"{s.action_dim}, the frames of one prediction), got {a.shape}")
        a = a.reshape(-1, s.chunk, s.action_dim)
        if ignored is not None:
            a = np.where(np.asarray(ignored, bool)[:, None, None], 0.0, a)
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or inf")
        lo, hi = self.action_space.low[0], self.action_space.high[0]
        clipped = np.clip(a, lo, hi)  # out of bounds: clip, as most continuous-control envs do
        flags = (clipped != a).any(axis=(1, 2))
        if self.normalize_actions:
            clipped = self.low + (clipped + 1) * 0.5 * (self.high - self.low)
        return clipped.astype(np.float32), flags

    def parse_options(self, options: dict | None, batch: int | None = None) -> np.ndarray | None:
        """reset options -> the start frame(s) they give, or None: then `start` draws the checkpoint's start frames,
        and it is checked here that there are some."""
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise TypeError(f"reset options must be a dict such as {{'frame': uint8 {self.frame_shape}}}, got "
                            f"{type(options).__name__}")
        unknown = set(options) - {"frame"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; known: ['frame']")
        if "frame" not in options:
            if self.start_frames is None:
                where = self.folder / START_FRAMES if self.folder is not None else "the checkpoint (no folder given)"
                raise ValueError(f"no start frames: {where} not found; pass reset(options={{'frame': uint8 "
                                 f"{self.frame_shape}}}) or a checkpoint with {START_FRAMES} (`write_start_frames`)")
            return None
        frame = np.asarray(options["frame"])
        want = self.frame_shape if batch is None else (batch, *self.frame_shape)
        if frame.dtype != np.uint8 or frame.shape not in (want, self.frame_shape):
            raise ValueError(f"options['frame'] must be uint8 {want}"
                             + (f" or {self.frame_shape} (the same for every env)" if batch is not None else "")
                             + f", got {frame.dtype} {frame.shape}")
        # one frame for every env, as gymnasium's sync and async vector envs pass it to each
        return np.broadcast_to(frame, want).copy()

    def start(self, rng: np.random.Generator, frame: np.ndarray | None) -> tuple[np.ndarray, dict]:
        """The start frame: the given one, or one of the checkpoint's start frames picked with `rng` (that there are
        some, `parse_options` checked)."""
        if frame is not None:
            return frame, {"start_index": -1}
        i = int(rng.integers(len(self.start_frames)))
        return self.start_frames[i].copy(), {"start_index": i}

    # --- one batched prediction --------------------------------------------------------------------------------
    def predict(self, frames: np.ndarray, actions: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, list[dict]]:
        """uint8 (B, H, W, 3) or (B, n, H, W, 3) frames, oldest first (the model conditions on its last 1 or 5)
        + (B, chunk, A) -> uint8 (B, chunk, H, W, 3) and each sample's cache stats (the cache decides per sample,
        so a sample's stats and frames do not depend on the rest of the batch).

        The infos are deterministic and NaN-free (gymnasium's `check_env` compares two identical steps' infos, and
        NaN never equals itself): a per-call statistic is there only when the policy measured it on every call.
        Wall times only with `timings`. Each sample's full records are `self.records[i]`."""
        t0 = time.perf_counter()
        out_frames, out = self.model.predict(frames, actions, policy=self.policy, num_steps=self.num_steps,
                                             seed=seeds, timing=self.timings)
        out_frames = out_frames.cpu().numpy()
        model_ms = (time.perf_counter() - t0) * 1e3
        self.records = [out.sample_records(i) for i in range(len(out_frames))]
        infos = []
        for recs in self.records:
            info = {
                "computed_fraction": float(np.mean([r.computed for r in recs])),
                "calls": len(recs),
                "skipped": sum(not r.computed for r in recs),
                "computed": np.array([r.computed for r in recs], bool),
            }
            for key in STAT_KEYS:
                values = np.array([getattr(r, key) for r in recs], np.float64)
                if np.isfinite(values).all():
                    info[key] = values
            if self.timings:
                info.update(model_ms=model_ms, denoise_ms=out.loop_ms)
            infos.append(info)
        return out_frames, infos

    def outcome(self, frames: np.ndarray, actions: np.ndarray) -> tuple[float, bool]:
        return float(self.reward_fn(frames, actions)), bool(self.termination_fn(frames, actions))

    def close(self) -> None:
        self.policy.detach()  # hook-based policies attach to the (possibly shared) model


def check_steps(name: str, value) -> None:
    """A count argument that may be None (the default): else an integer >= 1, checked where it is given rather than
    coerced (0 would fall back to the default, 2.7 become 2) or refused only at the first step."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


def check_view_args(obs_mode: str, history: int, render_mode: str | None, render_modes: list[str]) -> None:
    """The observation/render arguments single and vector env share."""
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
    if render_mode not in (None, *render_modes):
        raise ValueError(f"render_mode must be None or one of {render_modes}, got {render_mode!r}")
    if isinstance(history, bool) or not isinstance(history, (int, np.integer)):
        raise TypeError(f"history must be an int (frames shown), got {history!r}")
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")


class CosmosWorldEnv(SharedModelSpec, gym.Env):
    """The world model as an environment. One step = one chunk of actions = one prediction of `chunk` frames.

    Action: float32 (chunk, action_dim) within the model's bounds (with ``normalize_actions=True``: within [-1, 1],
    scaled affinely onto the bounds); out-of-bound values are clipped (and ``info["action_clipped"]`` is True),
    wrong shapes and NaN/inf raise ValueError without changing the env.
    Observation: the latest predicted frame, uint8 (H, W, 3); with ``obs_mode="history"`` a dict with that
    ``frame`` and ``history`` (history, H, W, 3), the last frames oldest first (the start frame repeated after
    reset). Reward: ``reward_fn(frames, actions)`` over the chunk's frames and actions; by default, summed over the
    chunk's steps, `task_reward` on the positions the checkpoint's state decoder reads from the frame after each
    action, with that action's exact control cost (0.0, with a warning, without a decoder). Episodes end by
    ``termination_fn(frames, actions)`` (default: never) or by the time limit of `gym.make` (``max_episode_steps``,
    in chunks).

    Info after a step, deterministic and NaN-free (as gymnasium's `check_env` requires): ``frames`` (chunk, H, W, 3)
    all predicted frames; the prediction's cache statistics ``computed_fraction``, ``calls``, ``skipped``, per
    model call ``computed`` and, where the policy measured them on every call, ``drift``, ``threshold``,
    ``motion``; ``action_clipped``; ``noise_seed``. ``timings=True`` adds ``model_ms`` (wall time of the
    prediction) and ``denoise_ms`` (its DiT calls). The last prediction's full `CallRecord`s, NaN for what a
    policy does not measure, are ``env.unwrapped.sim.records[0]``.

    Rendering (``render_mode="rgb_array"``) gives the latest frame, one per step, so ``metadata["render_fps"]`` is
    the model's fps / chunk: recorded videos play in real time. ``info["frames"]`` holds every frame.
    """

    # the default env's (the bundled model's fps / chunk); an instance gives its own model's
    metadata = {"render_modes": ["rgb_array"], "render_fps": 2.5}

    def __init__(self, checkpoint: str | Path | None = None, cache="worldcache", cache_config: dict | None = None,
                 device: str = "cpu", num_steps: int | None = None, chunk: int | None = None,
                 reward_fn: Callable | None = None, termination_fn: Callable | None = None, obs_mode: str = "frame",
                 history: int = 4, render_mode: str | None = None, model=None, timings: bool = False,
                 normalize_actions: bool = False, dtype: str | None = None, compile: bool = False):
        check_view_args(obs_mode, history, render_mode, self.metadata["render_modes"])
        self.sim = WorldSim(checkpoint, cache, cache_config, device, num_steps, chunk, reward_fn, termination_fn,
                            model, timings, normalize_actions, dtype, compile)
        self.obs_mode, self.history, self.render_mode = obs_mode, int(history), render_mode
        self.metadata = {**self.metadata, "render_fps": self.sim.render_fps}
        self.action_space = self.sim.action_space
        self.observation_space = self.sim.observation_space(obs_mode, self.history)
        self._keep = self.sim.frames_kept(self.history)
        self._frames: np.ndarray | None = None  # the last `_keep` frames; None until reset

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        frame = self.sim.parse_options(options)  # before seeding: a rejected reset changes nothing
        super().reset(seed=seed)
        frame, info = self.sim.start(self.np_random, frame)
        self._frames = np.repeat(frame[None], self._keep, axis=0)
        return self._obs(), info

    def step(self, action):
        if self._frames is None:
            raise ResetNeeded("Cannot call step() before reset(): the env has no current frame.")
        a, clipped = self.sim.check_actions(action)
        seed = int(self.np_random.integers(SEED_HIGH))
        frames, infos = self.sim.predict(self._frames[None], a, [seed])  # the model takes the last 1 or 5
        frames, a, info = frames[0], a[0], infos[0]
        reward, terminated = self.sim.outcome(frames, a)
        self._frames = np.concatenate([self._frames, frames])[-self._keep:]
        info.update(frames=frames, action_clipped=bool(clipped[0]), noise_seed=seed)
        return self._obs(), reward, terminated, False, info

    def _obs(self):
        if self.obs_mode == "frame":
            return self._frames[-1].copy()
        return {"frame": self._frames[-1].copy(), "history": self._frames[-self.history:].copy()}

    def render(self):
        if self.render_mode == "rgb_array" and self._frames is not None:
            return self._frames[-1].copy()
        return None

    def close(self):
        self.sim.close()
        super().close()


def write_start_frames(store_path: str | Path, folder: str | Path, count: int = 64) -> np.ndarray:
    """Save the reset frames (obs[0]) of up to `count` episodes of a store, evenly spread over the sorted ids, as
    ``folder/start_frames.npy``: the start states `reset` samples from."""
    from worldcache.rollouts.store import EpisodeStore

    store = EpisodeStore(store_path, mode="r")
    ids = store.episode_ids()
    if not ids:
        raise ValueError(f"{store_path}: no complete episodes")
    pick = [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int))]
    frames = np.stack([store.episode_array(i, "obs")[0] for i in pick])
    np.save(Path(folder) / START_FRAMES, frames)
    return frames
