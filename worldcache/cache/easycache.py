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
from .base import rel_l1
from .config import PolicyConfig
from .reuse import AccumulatedReuse, ReuseState


@dataclass
class EasyCacheConfig(PolicyConfig):
    threshold: float = 0.05        # skip while the accumulated predicted output change stays below this
    ret_ratio: float = 0.1         # warm-up: this fraction of the steps always computes
    force_last_step: bool = True   # the final step always computes

    def check(self) -> None:
        self.nonneg("threshold")
        self.check_warmup()


@dataclass
class EasyCacheState(ReuseState):
    x_prev: torch.Tensor | None = None  # the previous call's stack input
    k: float | None = None              # transformation rate from the last two computed calls
    x_c: torch.Tensor | None = None     # input and output of the last computed call
    out_c: torch.Tensor | None = None


@register
class EasyCache(AccumulatedReuse):
    name = "easycache"
    config_cls = EasyCacheConfig
    state_cls = EasyCacheState

    def change(self, st: EasyCacheState, stack, i: int) -> float | None:
        x, prev = stack.x[i:i + 1], st.x_prev
        st.x_prev = x
        return None if st.k is None else st.k * float(rel_l1(x, prev))

    def computed(self, st: EasyCacheState, x: torch.Tensor, out: torch.Tensor) -> None:
        if st.out_c is not None:
            st.k = float(rel_l1(out, st.out_c)) / max(float(rel_l1(x, st.x_c)), 1e-12)
        st.x_c, st.out_c = x, out
