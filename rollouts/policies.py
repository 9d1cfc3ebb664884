"""Batched action policies for world-model rollouts.

A policy acts on a batch (the vector env): ``policy(obs, rngs) -> actions`` with ``obs`` uint8 (B, H, W, 3) and
actions float (B, chunk, A), one env step = one chunk of actions. ``rngs`` holds one ``np.random.Generator`` per
env, seeded from its episode alone (`config.policy_rng`): env i must draw only from ``rngs[i]``, so an episode's
actions do not depend on the episodes batched with it. A worker builds the policy afresh for every batch of
episodes (a registered name, a class or factory, a torch file; a policy object given in Python: a copy of it), so
what it keeps (a step count, say) never crosses batches; a module-level function or instance named by
``module:attr`` is used as it is, so it must keep nothing. A policy may also have ``reset(rngs)``, called at the
start of every batch (scripted policies draw their per-episode parameters there). Out-of-bound actions are
clipped by the env.

`make_policy(spec, action_space, **kwargs)` builds one from

- a registered name: ``random`` (uniform in the bounds), ``zero`` (zeros, clipped into the bounds), ``sinusoid``
  (smooth scripted exploration: per episode and action dimension a sine of random period and phase);
- ``"package.module:attr"``: a callable ``(obs, rngs) -> actions``; with kwargs (or when ``attr`` is a class) it
  is a factory, called as ``attr(**kwargs)`` to make the policy;
- a path to a torch module (``torch.jit.save`` file, or a ``torch.save``-d ``nn.Module``) whose forward maps
  float32 obs (B, H, W, 3) scaled to [0, 1] to actions (B, chunk, A) or (B, chunk * A).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable

import numpy as np

POLICIES: dict[str, Callable] = {}
TORCH_SUFFIXES = (".pt", ".pth", ".jit", ".ts")


def register(name: str):
    """Register ``factory(action_space, **kwargs) -> policy`` under `name`."""
    def deco(factory):
        POLICIES[name] = factory
        return factory
    return deco


def _bounds(space) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)


@register("random")
class RandomPolicy:
    """Uniform in the action bounds, each env from its episode's generator."""

    def __init__(self, action_space):
        self.low, self.high = _bounds(action_space)

    def __call__(self, obs, rngs):
        return np.stack([r.uniform(self.low, self.high) for r in rngs]).astype(np.float32)


@register("zero")
class ZeroPolicy:
    """All zeros (clipped into the bounds): the world model's "do nothing" baseline."""

    def __init__(self, action_space):
        low, high = _bounds(action_space)
        self.action = np.clip(np.zeros_like(low), low, high)

    def __call__(self, obs, rngs):
        return np.broadcast_to(self.action, (len(obs), *self.action.shape)).copy()


@register("sinusoid")
class SinusoidPolicy:
    """Smooth exploration: action dim j of env i follows ``mid + amplitude * half_range * sin(2 pi t / P + phi)``
    over frames t, with period P in [min_period, max_period] frames and phase phi drawn per episode (at `reset`).
    Smooth actions give coherent motion, which random actions (white noise at the frame rate) do not.

    The bundled model's actions are fingertip velocity commands, so a sine moves the arm by ~amplitude x period:
    at the default 0.25 the fingertip stays within the training data's reach, at 0.8 it goes far beyond it, where
    the world model has never seen the arm (tests/test_mujoco_data.py)."""

    def __init__(self, action_space, amplitude: float = 0.25, min_period: float = 16.0, max_period: float = 64.0):
        self.low, self.high = _bounds(action_space)
        self.chunk, self.dim = self.low.shape
        self.amplitude, self.periods = float(amplitude), (float(min_period), float(max_period))
        self.t = 0
        self.period = self.phase = None

    def reset(self, rngs) -> None:
        self.t = 0
        self.period = np.stack([r.uniform(*self.periods, (1, self.dim)) for r in rngs])
        self.phase = np.stack([r.uniform(0, 2 * np.pi, (1, self.dim)) for r in rngs])

    def __call__(self, obs, rngs):
        if self.period is None or len(self.period) != len(obs):
            self.reset(rngs)
        t = (self.t + np.arange(self.chunk))[None, :, None]  # frame times of this chunk
        self.t += self.chunk
        mid, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        return (mid + self.amplitude * half * np.sin(2 * np.pi * t / self.period + self.phase)).astype(np.float32)


class TorchPolicy:
    """A torch module mapping float32 obs (B, H, W, 3) in [0, 1] to actions (B, chunk, A) or (B, chunk * A)."""

    def __init__(self, action_space, path: str | Path, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, device
        self.shape = tuple(action_space.shape)
        try:
            self.module = torch.jit.load(str(path), map_location=device)
        except RuntimeError:  # not TorchScript: a pickled nn.Module (trusted file: torch.load runs its code)
            self.module = torch.load(str(path), map_location=device, weights_only=False)
        if not callable(self.module):
            raise TypeError(f"{path}: holds a {type(self.module).__name__}, not a torch module")
        self.module.eval()

    def __call__(self, obs, rngs):
        torch = self.torch
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(obs), device=self.device).float() / 255
            out = self.module(x)
        return out.float().cpu().numpy().reshape(len(obs), *self.shape)


def make_policy(spec: str | Callable, action_space, **kwargs):
    """Build a batched policy from a registered name, a ``module:attr`` import path, a torch module file, or
    a callable (returned as is). `action_space` is the single env's action space (chunk, A)."""
    if callable(spec):
        return spec
    spec = str(spec)
    if spec in POLICIES:
        return POLICIES[spec](action_space, **kwargs)
    if Path(spec).suffix in TORCH_SUFFIXES or Path(spec).is_file():
        if not Path(spec).is_file():
            raise FileNotFoundError(f"policy file not found: {spec}")
        return TorchPolicy(action_space, spec, **kwargs)
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"policy {spec!r}: cannot import {attr!r} from {mod!r}: {e}") from None
        return obj(**kwargs) if kwargs or inspect.isclass(obj) else obj
    raise ValueError(f"unknown policy {spec!r}: use one of {sorted(POLICIES)}, 'module:function', "
                     f"or a torch module file ({', '.join(TORCH_SUFFIXES)})")


__all__ = ["POLICIES", "RandomPolicy", "SinusoidPolicy", "TorchPolicy", "ZeroPolicy", "make_policy", "register"]
