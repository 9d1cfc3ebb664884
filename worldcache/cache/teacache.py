"""TeaCache-style reuse: skip while the accumulated change of the first block's modulated input stays small.

TeaCache (Liu et al., 2024) watches the timestep-modulated input of the first block, rescales its relative L1 change
between consecutive calls with a model-specific polynomial, accumulates it, and reuses the last residual while the
sum stays below the threshold. The polynomial maps the input change to the model output's relative L1 change; it is
fitted per model on uncached calibration runs (`worldcache calibrate teacache`, worldcache/calibrate.py) and stored,
with how it was fitted, in the policy's YAML.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import register
from .base import rel_l1
from .config import PolicyConfig
from .reuse import AccumulatedReuse, ReuseState


@dataclass
class TeaCacheConfig(PolicyConfig):
    threshold: float = 0.1          # skip while the accumulated rescaled change stays below this
    ret_ratio: float = 0.1          # warm-up: this fraction of the steps always computes
    coefficients: list = field(default_factory=lambda: [1.0, 0.0])  # rescaling polynomial, highest power first
    force_last_step: bool = True    # the final step always computes
    calibration: dict = field(default_factory=dict)  # how `coefficients` were fitted (written by the calibration)

    def check(self) -> None:
        self.nonneg("threshold")
        self.check_warmup()
        self.require("coefficients", isinstance(self.coefficients, (list, tuple)) and len(self.coefficients) > 0
                     and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.coefficients),
                     "must be a non-empty list of numbers (highest power first)")
        self.require("calibration", isinstance(self.calibration, dict), "must be a mapping")


@dataclass
class TeaCacheState(ReuseState):
    mod_prev: torch.Tensor | None = None  # the previous call's modulated input


@register
class TeaCache(AccumulatedReuse):
    name = "teacache"
    config_cls = TeaCacheConfig
    state_cls = TeaCacheState

    def run_stack(self, stack, call):
        self._mod = stack.modulated_input()  # once per call, for every sample
        return super().run_stack(stack, call)

    def change(self, st: TeaCacheState, stack, i: int) -> float | None:
        mod, prev = self._mod[i:i + 1], st.mod_prev
        st.mod_prev = mod
        return None if prev is None else float(np.polyval(self.config.coefficients, float(rel_l1(mod, prev))))
