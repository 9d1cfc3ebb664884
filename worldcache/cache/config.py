"""Cache-policy settings: small dataclasses, validated when built from a dict or a YAML file."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml

import worldcache.configs

# The one place the shipped configs are found: top-level configs/ in the repository, `worldcache.configs` when
# installed (pyproject maps one onto the other), so an editable and a wheel install read the same files.
CONFIG_DIR = Path(worldcache.configs.__file__).resolve().parent
CACHE_CONFIG_DIR = CONFIG_DIR / "cache"


class ConfigError(ValueError):
    """A cache config that cannot be used; the message names the file/key at fault."""


@dataclasses.dataclass
class PolicyConfig:
    """Base of every policy's settings. Subclasses add fields and extend `check`."""

    def check(self) -> None:
        """Raise ConfigError for values that make no sense. Called by `build_config`."""

    def require(self, key: str, ok: bool, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={getattr(self, key)!r}: {why}")

    def nonneg(self, *keys: str) -> None:
        for k in keys:
            v = getattr(self, k)
            self.require(k, v is not None and math.isfinite(v) and v >= 0, "must be a finite number >= 0")

    def check_warmup(self) -> None:
        self.require("ret_ratio", 0 <= self.ret_ratio < 1,
                     "warm-up must be shorter than the schedule (0 <= ret_ratio < 1)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_config(config_cls: type[PolicyConfig], values: dict[str, Any] | None, source: str = "config"):
    """Instantiate `config_cls` from `values`; unknown keys and bad types raise ConfigError naming the key."""
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {config_cls.__name__}; "
                          f"valid keys: {sorted(known)}")
    defaults = config_cls()
    for k, v in values.items():
        default = getattr(defaults, k)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ConfigError(f"{source}: {k} must be true/false, got {v!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{source}: {k} must be a number, got {v!r}")
            if isinstance(default, float):
                values[k] = float(v)
            elif isinstance(v, float) and not v.is_integer():  # counts and depths: 2.5 would be used as 2 or fail
                raise ConfigError(f"{source}: {k} must be a whole number, got {v!r}")
            else:
                values[k] = int(v)
        for kind, name in ((str, "a string"), (list, "a list"), (dict, "a mapping")):
            if isinstance(default, kind) and not isinstance(v, (tuple, list) if kind is list else kind):
                raise ConfigError(f"{source}: {k} must be {name}, got {v!r}")
    cfg = config_cls(**values)
    try:
        cfg.check()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line ("line 1, column 13: expected ',' or ']'"): its own text spans several."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (problem or str(e).splitlines()[0])


class _Loader(yaml.SafeLoader):
    """yaml.safe_load with YAML 1.2's floats: PyYAML (YAML 1.1) reads 1e-2 or 5E3 as strings (1.0e-2 as a float)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load_yaml(text: str):
    """Configs' YAML (cache YAMLs, --cache settings, rollout configs): safe, with 1e-2 a number."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cache config file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict) or "policy" not in data:
        raise ConfigError(f"{path}: expected a mapping with a 'policy' key and the policy's settings")
    return data


def check_num_steps(steps, source: str) -> None:
    """A pinned step count (a tuned YAML's, a --cache spec's): a whole number >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{source}: num_steps must be an integer >= 1, got {steps!r}")
