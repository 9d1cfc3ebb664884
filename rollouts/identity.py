"""What a rollout store was made with: the model's files and hash, the rollout attrs, and the resume check.

The model's identity is a sha256 over every file the model and the env load (`checkpoint_files`): weights and
configs of transformer, VAE and scheduler, the action embedder, the prompt embeddings, model.json, the start
frames and the state decoder. The same files travel to the workers through Ray's object store, so no worker needs
the driver's checkpoint path.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from .config import RolloutConfig
from .store import EpisodeStore

ROLLOUT_FORMAT = 2  # 1: actions (T, chunk*A), 4 cache statistics; 2: actions (T, chunk, A), every CallRecord field
MODEL_DIRS = ("transformer", "vae", "scheduler")
MODEL_FILES = ("model.json", "action_embedder.safetensors", "prompt_embeds.safetensors", "start_frames.npy",
               "state_decoder.json", "state_decoder.safetensors")
# rollout attrs that may differ between runs into one store (the rest must match to resume); like the batch size,
# compiling changes results only by float rounding
FREE_ATTRS = ("checkpoint", "num_envs", "compile")


class RolloutFormatError(ValueError):
    """A store written by another rollout format (an older worldcache)."""


def checkpoint_folder(cfg: RolloutConfig) -> Path:
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    from worldcache.world_model import BUNDLED

    return BUNDLED


def checkpoint_files(folder: str | Path) -> dict[str, bytes]:
    """Every file the model and env load from `folder`, by relative path (sorted), with its bytes. Hidden files and
    folders (.DS_Store, .ipynb_checkpoints, a hub's .cache) are not the model's: they would change its identity."""
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no model.json)")
    files = {n: (folder / n).read_bytes() for n in MODEL_FILES if (folder / n).is_file()}
    for d in MODEL_DIRS:
        files.update({f"{d}/{name}": data for name, data in files_under(folder / d).items()})
    return dict(sorted(files.items()))


def files_under(folder: str | Path) -> dict[str, bytes]:
    """The files under `folder` (none if it is missing), by path relative to it (sorted), with their bytes; hidden
    files and folders left out (`checkpoint_files`)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def model_sha256(files: dict[str, bytes] | str | Path) -> str:
    """sha256 over every loaded file's relative path and bytes: the model's identity."""
    if not isinstance(files, dict):
        files = checkpoint_files(files)
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{len(files[name])}\0".encode())
        h.update(files[name])
    return h.hexdigest()


def write_files(files: dict[str, bytes], folder: str | Path) -> Path:
    """Materialise `files` (from `checkpoint_files`) under `folder` (a worker's local copy)."""
    folder = Path(folder)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _qualname(obj) -> str:
    """A stable name for an in-process policy object (a repr would hold its address and never match again)."""
    f = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{f.__module__}:{f.__qualname__}"


def _policy_sha256(cfg: RolloutConfig, pfile: tuple[str, bytes] | None) -> str | None:
    """A policy file by its bytes; an in-process policy object by its pickle (its class or function and its
    parameters: two instances, partials or lambdas of one name differ by these); a registered name: None."""
    if pfile:
        return hashlib.sha256(pfile[1]).hexdigest()
    if isinstance(cfg.policy, str):
        return None
    import pickle

    try:  # by reference to its class or function, and its state: the same bytes in every process
        data = pickle.dumps(cfg.policy, protocol=4)
    except Exception:  # a lambda or closure: by value, as Ray ships it to the actors
        from ray import cloudpickle

        data = cloudpickle.dumps(cfg.policy, protocol=4)
    return hashlib.sha256(data).hexdigest()


def policy_file(cfg: RolloutConfig) -> tuple[str, bytes] | None:
    """A torch policy file on the driver (its name and bytes): it travels with the actors, as the checkpoint does,
    and the store knows it by its bytes. A registered name is the registered policy, as `make_policy` reads it,
    even where a file of that name lies in the working directory."""
    from .policies import POLICIES

    if isinstance(cfg.policy, str) and cfg.policy not in POLICIES and Path(cfg.policy).is_file():
        return Path(cfg.policy).name, Path(cfg.policy).read_bytes()
    return None


def policy_settings(cfg: RolloutConfig) -> dict:
    """The keyword arguments the policy is built with: for a registered policy its constructor's defaults filled in,
    so that a store made under an older default refuses to resume under a newer one; else `policy_kwargs` as given
    (a file or object is known by its bytes, `_policy_sha256`)."""
    from .policies import POLICIES

    kwargs = dict(cfg.policy_kwargs)
    if isinstance(cfg.policy, str) and cfg.policy in POLICIES:
        params = list(inspect.signature(POLICIES[cfg.policy]).parameters.values())[1:]  # after the action space
        kwargs = {**{p.name: p.default for p in params if p.default is not p.empty}, **kwargs}
    return kwargs


def _check_policy(cfg: RolloutConfig, spec) -> None:
    """Build the action policy once here: a wrong name or keyword fails before the store's attrs are written or
    any actor loads a model (in the actors it would fail only after both)."""
    from worldcache.envs.cosmos_env import action_box

    from .policies import make_policy

    try:  # the space the actors' envs give it
        make_policy(cfg.policy, action_box(spec.action_low, spec.action_high, spec.chunk, spec.action_dim),
                    **cfg.policy_kwargs)
    except TypeError as e:  # an unknown or missing keyword of the policy's constructor
        raise ValueError(f"policy {cfg.policy!r} with policy_kwargs {cfg.policy_kwargs}: {e}") from None


def rollout_attrs(cfg: RolloutConfig, files: dict[str, bytes], folder: Path) -> dict:
    """The store's root attrs ``rollout``: everything an episode depends on, plus the format version."""
    from worldcache.cache import load_cache
    from worldcache.world_model import WorldModelSpec

    spec = WorldModelSpec(**json.loads(files["model.json"]))
    cache, yaml_steps = load_cache(cfg.cache, **cfg.cache_config)  # validates the cache config before any actor starts
    _check_policy(cfg, spec)
    pfile = policy_file(cfg)
    attrs = {
        "model_sha256": model_sha256(files),
        "checkpoint": str(folder),
        "cache": {"policy": cache.name, **cache.config.as_dict()},
        "env": {"steps": cfg.steps, "num_steps": cfg.num_steps or yaml_steps or spec.num_steps,
                "chunk": spec.chunk,
                "action_shape": [spec.chunk, spec.action_dim], "fps": spec.fps,
                "frame_shape": [spec.height, spec.width, 3], "save_chunk_frames": cfg.save_chunk_frames,
                "dtype": cfg.dtype},
        "num_envs": cfg.num_envs,
        "compile": cfg.compile,
        "policy": cfg.policy if isinstance(cfg.policy, str) else _qualname(cfg.policy),
        "policy_kwargs": policy_settings(cfg),
        # a policy file or object is known by its bytes: an edited file, or an object of the same name with other
        # parameters, must not resume into the old one's store
        "policy_sha256": _policy_sha256(cfg, pfile),
        # hook caches decide per batch, so there the batch size is part of what an episode depends on
        "decision_batch": None if cache.decides_per_sample else cfg.num_envs,
        "seed": cfg.seed,
        "format_version": ROLLOUT_FORMAT,
    }
    return json.loads(json.dumps(attrs, default=str))  # as stored (tuples -> lists), so comparisons are exact


def is_make_data(store: EpisodeStore) -> bool:
    """Whether a store holds `worldcache make-data`'s simulator episodes (a generator record, no rollout attrs)."""
    return "generator" in store.attrs and "rollout" not in store.attrs


def check_format(store: EpisodeStore) -> dict:
    """The store's ``rollout`` attrs; `RolloutFormatError` for a store of another rollout format."""
    ro = store.attrs.get("rollout")
    if ro is None:
        made = (": it is a make-data store, which `worldcache inspect` summarises and `worldcache train` reads"
                if is_make_data(store) else "")
        raise RolloutFormatError(f"{store.path}: not a rollout store (no 'rollout' attrs){made}")
    if ro.get("format_version") != ROLLOUT_FORMAT:
        raise RolloutFormatError(
            f"{store.path}: rollout format {ro.get('format_version')!r}, this worldcache reads format "
            f"{ROLLOUT_FORMAT} (actions (T, chunk, A), every cache statistic). Format 1 stores were written by an "
            f"older worldcache: read them with that version, or roll out again into a new store")
    return ro


_ABSENT = object()


def _differences(stored, now, path: str) -> str:
    """Where two settings differ, down to the keys of nested dicts (an env or a cache config has many, of which one
    differs): ``env.num_steps: stored 10, config 12``; a key on one side only reads "absent"."""
    if isinstance(stored, dict) and isinstance(now, dict):
        return "; ".join(_differences(stored.get(k, _ABSENT), now.get(k, _ABSENT), f"{path}.{k}")
                         for k in sorted(stored.keys() | now.keys(), key=str)
                         if k not in stored or k not in now or stored[k] != now[k])
    show = lambda v: "absent" if v is _ABSENT else repr(v)  # noqa: E731
    return f"{path}: stored {show(stored)}, config {show(now)}"


def init_or_check(store: EpisodeStore, attrs: dict) -> None:
    """New store: record `attrs`. Existing one: it must have been written with the same settings (resume), unless
    it holds no complete episode (a first run stopped before one was written): then nothing of the old settings
    would be mixed in, and they are replaced (its partial leftovers are removed next, under the same lease)."""
    recorded, episodes = store.attrs.get("rollout"), len(store)  # len: a listing of the store, read once
    if recorded is None and episodes:
        raise ValueError(f"{store.path}: holds episodes that are not rollouts of this runner (no 'rollout' attrs)")
    if recorded is None or not episodes:
        store.attrs.update({"rollout": attrs, "frame_shape": attrs["env"]["frame_shape"]})
        return
    old = check_format(store)
    free = set(FREE_ATTRS)
    if old.get("policy_sha256") is not None and old.get("policy_sha256") == attrs.get("policy_sha256"):
        free.add("policy")  # the same policy file's bytes, named by a path from another working directory
    diff = sorted(k for k in set(old) | set(attrs) if k not in free and old.get(k) != attrs.get(k))
    if diff:
        # cloudpickle gives a class made inside a function a new id in every process: its pickle never matches again
        # (a function made inside one, whose name reads alike, pickles the same everywhere: the hint says "if")
        local = "policy_sha256" in diff and "<locals>" in str(attrs.get("policy"))
        said = "; ".join(_differences(old.get(k, _ABSENT), attrs.get(k, _ABSENT), k) for k in diff)
        raise ValueError(f"{store.path}: was written with different {diff} ({said}); use another --out"
                         + ("; if the policy is an instance of a class defined inside a function, it is pickled "
                            "anew in every process and never resumes: define the class at module level"
                            if local else ""))


__all__ = ["FREE_ATTRS", "ROLLOUT_FORMAT", "RolloutFormatError", "check_format", "checkpoint_files",
           "checkpoint_folder", "init_or_check", "model_sha256", "policy_file", "rollout_attrs", "write_files"]
