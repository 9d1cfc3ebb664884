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
from .base import CachePolicy, ModelCall, compute_rows, may_skip, rel_l1
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

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        cfg, sts, x = self.config, self.states(call), stack.x
        mod = stack.modulated_input()
        skip = []
        for i, (st, rec) in enumerate(zip(sts, call)):  # each sample decides on its own input change
            s = False
            if "residual" in st and may_skip(rec, cfg.ret_ratio, cfg.force_last_step):
                rec.drift = st["acc"] + float(np.polyval(cfg.coefficients, float(rel_l1(mod[i:i + 1], st["mod_prev"]))))
                rec.threshold = cfg.threshold
                s = rec.drift < cfg.threshold
            st["mod_prev"] = mod[i:i + 1]
            rec.computed = not s
            skip.append(s)
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + sts[i]["residual"])
        for i, (st, rec) in enumerate(zip(sts, call)):
            if skip[i]:
                st["acc"] = rec.drift
            else:
                st["residual"], st["acc"] = out[i:i + 1] - x[i:i + 1], 0.0
        return out
