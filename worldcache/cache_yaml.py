"""A cache YAML may also carry the sampler's `num_steps` (what `worldcache tune` writes): a cache policy is only
tuned together with the step count it was tuned at. `load_cache` is `cache.load_policy` plus that key; the env,
`worldcache rollout` and `worldcache bench` read cache settings through it."""
from __future__ import annotations

from pathlib import Path

from .cache import CachePolicy, load_policy, make_policy
from .cache.config import ConfigError, read_yaml

SAMPLER_KEYS = ("num_steps",)  # keys of a cache YAML that are not the policy's


def load_cache(spec: str | Path, **overrides) -> tuple[CachePolicy, int | None]:
    """(policy, num_steps) from a policy name or YAML path; num_steps is None unless the YAML sets it."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        return load_policy(spec, **overrides), None
    data = read_yaml(path)
    steps = data.pop("num_steps", None)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"{path}: num_steps must be an integer >= 1, got {steps!r}")
    return make_policy(data.pop("policy"), data, source=str(path), **overrides), steps
