"""EasyCache-style runtime-adaptive reuse: predict the output change from the input change, no offline fit.

EasyCache (Zhou et al., 2025) observes that the ratio k = (relative output change) / (relative input change) of the
block stack is nearly constant over neighbouring steps. k is measured between the branch's last two computed calls;
each later call adds k * rel_l1(x, x_prev) (its predicted relative output change) to an accumulator, and the last
residual is reused while the accumulator stays below the threshold. A compute resets it and refreshes k.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from .base import CachePolicy, ModelCall, compute_rows, may_skip, rel_l1
from .config import PolicyConfig


@dataclass
class EasyCacheConfig(PolicyConfig):
    threshold: float = 0.05        # skip while the accumulated predicted output change stays below this
    ret_ratio: float = 0.1         # warm-up: this fraction of the steps always computes
    force_last_step: bool = True   # the final step always computes

    def check(self) -> None:
        self.nonneg("threshold")
        self.check_warmup()


@register
class EasyCache(CachePolicy):
    name = "easycache"
    config_cls = EasyCacheConfig

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        cfg, sts, x = self.config, self.states(call), stack.x
        skip = []
        for i, (st, rec) in enumerate(zip(sts, call)):  # each sample decides on its own input change
            s = False
            if "k" in st and may_skip(rec, cfg.ret_ratio, cfg.force_last_step):
                rec.drift = st["acc"] + st["k"] * float(rel_l1(x[i:i + 1], st["x_prev"]))
                rec.threshold = cfg.threshold
                s = rec.drift < cfg.threshold
            st["x_prev"] = x[i:i + 1]
            rec.computed = not s
            skip.append(s)
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + sts[i]["residual"])
        for i, st in enumerate(sts):
            if skip[i]:
                st["acc"] = call[i].drift
                continue
            xi, oi = x[i:i + 1], out[i:i + 1]
            if "out_c" in st:  # transformation rate from the sample's last two computed calls
                st["k"] = float(rel_l1(oi, st["out_c"])) / max(float(rel_l1(xi, st["x_c"])), 1e-12)
            st["x_c"], st["out_c"], st["residual"], st["acc"] = xi, oi, oi - xi, 0.0
        return out
