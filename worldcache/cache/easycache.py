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
from .base import CachePolicy, CallRecord, may_skip, rel_l1
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

    def run_stack(self, stack, call: CallRecord) -> torch.Tensor:
        cfg, st, x = self.config, self.state(call.branch), stack.x
        skip = False
        if "k" in st and may_skip(call, cfg.ret_ratio, cfg.force_last_step):
            acc = st["acc"] + st["k"] * rel_l1(x, st["x_prev"])
            call.drift, call.threshold = acc, cfg.threshold
            skip = acc < cfg.threshold
        st["x_prev"] = x
        call.computed = not skip
        if skip:
            st["acc"] = acc
            return x + st["residual"]
        out = stack(x)
        if "out_c" in st:  # transformation rate from the last two computed calls
            st["k"] = rel_l1(out, st["out_c"]) / max(rel_l1(x, st["x_c"]), 1e-12)
        st["x_c"], st["out_c"], st["residual"], st["acc"] = x, out, out - x, 0.0
        return out
