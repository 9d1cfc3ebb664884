"""Rollout settings (`RolloutConfig`) and the naming and seeding of episodes.

An episode is a function of (config, base seed, episode index) alone: episode ``index`` is named
``ep{index:06d}_s{seed}``, resets its env with ``episode_seed(seed, index)`` (start frame and the noise seed of
every prediction) and draws its actions from ``policy_rng(seed, index)``, whichever worker, batch or run steps it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from worldcache.seeding import derived_seed

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class RolloutConfig:
    out: str = "runs/rollouts.zarr"      # store: a local path or a URL (file://, s3://, gs://: see storage_options)
    checkpoint: str | None = None        # model folder on the driver; None: the bundled model
    cache: str = "worldcache"            # cache policy name or YAML (configs/cache/)
    cache_config: dict = field(default_factory=dict)  # overrides of the cache policy's fields
    num_steps: int | None = None         # denoising steps per prediction; None: the model's default
    episodes: int = 8
    steps: int = 12                      # env steps (chunks) per episode
    seed: int = 0                        # base seed: episode i uses episode_seed(seed, i), policy_rng(seed, i)
    policy: str = "sinusoid"             # see rollouts.policies.make_policy (in Python also a policy object)
    policy_kwargs: dict = field(default_factory=dict)
    workers: int = 1                     # Ray actors, one model replica each
    num_envs: int = 2                    # episodes stepped together by one actor (one batched prediction)
    num_cpus: float = 1                  # per actor
    num_gpus: float = 0.5                # per actor, only when the model runs on a GPU (fractional: share it)
    device: str = "auto"                 # auto: cuda when the Ray cluster has GPUs, else cpu
    dtype: str = "fp32"                  # model weights: bf16, fp16 or fp32 (latents stay fp32)
    compile: bool = False                # torch.compile the DiT's blocks in each actor (~28% less time per CPU call)
    torch_threads: int | None = None     # per actor; None: max(1, int(num_cpus))
    save_chunk_frames: bool = True       # store every predicted frame (T, chunk, H, W, 3), the video
    max_restarts: int = 2                # Ray actor restarts after a crash
    max_task_retries: int = 2            # Ray retries of a batch whose actor died
    storage_options: dict = field(default_factory=dict)  # fsspec options of `out` (e.g. endpoint_url, key, secret)
    write_queue: int = 4                 # episodes an actor may hold for its background writer before it waits

    def as_kwargs(self) -> dict:
        """Its fields by name, as they are: `dataclasses.asdict` would turn a dataclass policy object into a dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def load(cls, config: "dict | str | Path | RolloutConfig") -> "RolloutConfig":
        """From a dict, a YAML path, or a name under configs/ (``rollout_smoke``). Unknown keys are errors."""
        if isinstance(config, RolloutConfig):
            return config
        if not isinstance(config, dict):
            import yaml

            from worldcache.cache.config import load_yaml, yaml_problem

            path = Path(config)
            if not path.is_file():  # a shipped config's name, with or without its .yaml (a path is a path)
                shipped = CONFIG_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else path.name}.yaml"
                if any(sep in str(config) for sep in ("/", os.sep)) or not shipped.is_file():
                    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
                    raise ValueError(f"no rollout config {str(config)!r}: not a file, nor a shipped config "
                                     f"({', '.join(names)})")
                path = shipped
            try:
                config = load_yaml(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{path}: a rollout config is a mapping of RolloutConfig's keys, got "
                                 f"{type(config).__name__}")
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown rollout config key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        cfg = cls(**config)
        for key, low in (("episodes", 1), ("steps", 1), ("workers", 1), ("num_envs", 1), ("write_queue", 1),
                         ("seed", 0), ("max_restarts", 0), ("max_task_retries", 0)):
            v = getattr(cfg, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"rollout config {key}={v!r}: must be an integer >= {low}")
        try:  # here, not in the actors after the store's settings are written
            episode_seed(cfg.seed, cfg.episodes - 1)
        except ValueError as e:
            raise ValueError(f"rollout config seed={cfg.seed}, episodes={cfg.episodes}: {e}") from None
        for key in ("cache_config", "policy_kwargs", "storage_options"):
            if not isinstance(getattr(cfg, key), dict):
                raise ValueError(f"rollout config {key}={getattr(cfg, key)!r}: must be a mapping")
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rollout config device={cfg.device!r}: must be auto, cpu or cuda")
        for key in ("num_steps", "torch_threads"):  # None: the default
            v = getattr(cfg, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"rollout config {key}={v!r}: must be an integer >= 1, or null for the default")
        for key, positive in (("num_cpus", True), ("num_gpus", False)):
            v = getattr(cfg, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 if positive else v >= 0):
                raise ValueError(f"rollout config {key}={v!r}: must be a number {'> 0' if positive else '>= 0'}")
        for key in ("compile", "save_chunk_frames"):
            if not isinstance(getattr(cfg, key), bool):
                raise ValueError(f"rollout config {key}={getattr(cfg, key)!r}: must be true or false")
        if isinstance(cfg.out, os.PathLike):
            cfg.out = os.fspath(cfg.out)
        if not isinstance(cfg.out, str) or not cfg.out:
            raise ValueError(f"rollout config out={cfg.out!r}: must be a store path or URL")
        if cfg.checkpoint is not None and not isinstance(cfg.checkpoint, (str, os.PathLike)):  # YAML: 1e5, 2024
            raise ValueError(f"rollout config checkpoint={cfg.checkpoint!r}: must be a model folder, or null for the "
                             f"bundled model (quote a name YAML reads as a number)")
        if cfg.dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"rollout config dtype={cfg.dtype!r}: must be bf16, fp16 or fp32")
        return cfg


def episode_id(index: int, seed: int) -> str:
    return f"ep{index:06d}_s{seed}"


def episode_seed(seed: int, index: int) -> int:
    """Env seed of episode `index`: hashed from (base seed, index), so nearby base seeds share no episodes."""
    return derived_seed(seed, index)


def policy_rng(seed: int, index: int) -> np.random.Generator:
    """The action policy's generator of episode `index`: its own stream, independent of the env's."""
    return np.random.default_rng([seed, index, 1])


__all__ = ["CONFIG_DIR", "RolloutConfig", "episode_id", "episode_seed", "policy_rng"]
