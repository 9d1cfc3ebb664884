"""Cache policies by name. `make_policy("worldcache", threshold=0.1)` or `load_policy("configs/cache/x.yaml")`.

Every policy is a `CachePolicy` subclass with a `name` and a `config_cls` (a `PolicyConfig` dataclass), registered
with `@register`. The YAML form is ``policy: NAME`` plus that dataclass's fields. A package of one's own makes its
policies known to the command line and the env by an entry point in the group ``worldcache.cache_policies`` (the
module that registers them), imported when a name is not a built-in one.
"""
from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

from .base import CachePolicy, CallRecord, ModelCall, NoCache
from .config import CACHE_CONFIG_DIR, ConfigError, PolicyConfig, build_config, check_num_steps, read_yaml

POLICIES: dict[str, type[CachePolicy]] = {}
PLUGIN_GROUP = "worldcache.cache_policies"


def register(cls: type[CachePolicy]) -> type[CachePolicy]:
    POLICIES[cls.name] = cls
    return cls


NoCache.config_cls = PolicyConfig
register(NoCache)


def make_policy(name: str, config: dict | None = None, source: str | None = None, **overrides) -> CachePolicy:
    """Build a policy by registered name; `config`/`overrides` are validated against its config dataclass."""
    _load_builtin()
    if isinstance(name, str) and name not in POLICIES:
        _load_plugins()
    where = f"{source}: " if source else ""
    if not isinstance(name, str) or name not in POLICIES:
        what = "unknown cache policy" if isinstance(name, str) else "policy must be a cache policy's name, got"
        raise ConfigError(f"{where}{what} {name!r}; known: {sorted(POLICIES)}")
    cls = POLICIES[name]
    values = {**(config or {}), **overrides}
    source = source or f"policy {name!r}"
    try:
        return cls(build_config(cls.config_cls, values, source))
    except ConfigError as e:
        if not overrides:
            raise
        # The error may be in what the caller set, not in the file: name it, with its value unless already shown
        given = ", ".join(k if re.search(rf"\b{k}(=| must)", str(e)) else f"{k}={v!r}" for k, v in overrides.items())
        raise ConfigError(f"{e} (set by the caller: {given})") from None


def load_cache(spec: str | Path, **overrides) -> tuple[CachePolicy, int | None]:
    """(policy, num_steps) from a YAML path, or a policy name (its default file under configs/cache/ is used if
    present). A cache YAML may also carry the sampler's `num_steps` (what `worldcache tune` writes: a policy is
    tuned together with its step count); None unless it does. The env, `rollout` and `bench` read caches here."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        default = CACHE_CONFIG_DIR / f"{spec}.yaml"
        if not default.is_file():
            return make_policy(str(spec), **overrides), None
        path = default
    data = read_yaml(path)
    steps = data.pop("num_steps", None)
    if steps is not None:
        check_num_steps(steps, str(path))
    return make_policy(data.pop("policy"), data, source=str(path), **overrides), steps


def load_policy(spec: str | Path, **overrides) -> CachePolicy:
    """The policy alone; a YAML that also sets `num_steps` is refused (read it with `load_cache`), so the step
    count it was tuned at is never dropped silently."""
    policy, steps = load_cache(spec, **overrides)
    if steps is not None:
        raise ConfigError(f"{spec}: sets num_steps={steps}, a sampler setting (a `worldcache tune` YAML), which "
                          f"this use would drop: give bench, the env (cache=) or a rollout config that YAML, or "
                          f"here a YAML without num_steps (in Python: load_cache)")
    return policy


def policy_names() -> list[str]:
    _load_builtin()
    _load_plugins()
    return sorted(POLICIES)


def _load_builtin() -> None:
    # Imported lazily so a policy module's heavy imports (diffusers hooks) cost nothing until asked for.
    from . import builtin  # noqa: F401


def _load_plugins() -> None:
    """Import the modules installed packages declare in `PLUGIN_GROUP`; each registers its policies."""
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin is named, not a traceback from deep in importlib
            raise ConfigError(f"cache policy plugin {ep.name!r} ({ep.value}, from {PLUGIN_GROUP}) failed to "
                              f"load: {type(e).__name__}: {e}") from e


__all__ = ["CachePolicy", "CallRecord", "ConfigError", "ModelCall", "NoCache", "PLUGIN_GROUP", "POLICIES", "PolicyConfig",
           "load_cache", "load_policy", "make_policy", "policy_names", "register"]
