"""TeaCache-style reuse: skip while the accumulated change of the first block's modulated input stays small.

TeaCache (Liu et al., 2024) watches the timestep-modulated input of the first block, rescales its relative L1 change
between consecutive calls with a model-specific polynomial (fitted offline; identity by default here, since no fit
exists for Cosmos), accumulates it, and reuses the last residual while the sum stays below the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import register
from .base import CachePolicy, CallRecord, may_skip, rel_l1
from .config import PolicyConfig


@dataclass
class TeaCacheConfig(PolicyConfig):
    threshold: float = 0.1          # skip while the accumulated rescaled change stays below this
    ret_ratio: float = 0.1          # warm-up: this fraction of the steps always computes
    coefficients: list = field(default_factory=lambda: [1.0, 0.0])  # rescaling polynomial, highest power first
    force_last_step: bool = True    # the final step always computes

    def check(self) -> None:
        self.nonneg("threshold")
        self.check_warmup()
        self.require("coefficients", isinstance(self.coefficients, (list, tuple)) and len(self.coefficients) > 0
                     and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.coefficients),
                     "must be a non-empty list of numbers (highest power first)")


@register
class TeaCache(CachePolicy):
    name = "teacache"
    config_cls = TeaCacheConfig

    def run_stack(self, stack, call: CallRecord) -> torch.Tensor:
        cfg, st, x = self.config, self.state(call.branch), stack.x
        mod = stack.modulated_input()
        skip = False
        if "residual" in st and may_skip(call, cfg.ret_ratio, cfg.force_last_step):
            acc = st["acc"] + float(np.polyval(cfg.coefficients, rel_l1(mod, st["mod_prev"])))
            call.drift, call.threshold = acc, cfg.threshold
            skip = acc < cfg.threshold
        st["mod_prev"] = mod
        call.computed = not skip
        if skip:
            st["acc"] = acc
            return x + st["residual"]
        out = stack(x)
        st["residual"], st["acc"] = out - x, 0.0
        return out
