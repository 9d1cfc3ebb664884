"""FORA-style fixed-interval reuse: compute every `interval`-th call of a branch, reuse the last residual between.

FORA (Selvaraju et al., 2024) caches block outputs on a static schedule, with no drift test. Here the unit reused
is the whole block stack: a skipped call returns ``x + (stack output - stack input)`` of the branch's last computed
call. No drift is measured, so `CallRecord.drift`/`threshold` stay NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from .base import CachePolicy, ModelCall, compute_rows
from .config import PolicyConfig
from .reuse import ReuseState


@dataclass
class ForaConfig(PolicyConfig):
    interval: int = 2      # compute one call in `interval` (1: never reuse)
    warmup_steps: int = 2  # the first steps always compute (absolute count)

    def check(self) -> None:
        self.require("interval", self.interval >= 1, "must be >= 1")
        self.require("warmup_steps", self.warmup_steps >= 0, "must be >= 0")


@register
class Fora(CachePolicy):
    name = "fora"
    config_cls = ForaConfig
    state_cls = ReuseState  # only its residual: FORA measures no change

    def begin(self, num_steps: int) -> None:
        if self.config.warmup_steps > num_steps:
            raise ValueError(f"fora: warmup_steps={self.config.warmup_steps} is longer than the schedule "
                             f"(num_steps={num_steps})")
        super().begin(num_steps)

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        cfg, sts, x = self.config, self.states(call), stack.x
        after = call.step - cfg.warmup_steps
        skip = [(st.residual is not None and after > 0 and after % cfg.interval != 0) for st in sts]
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + sts[i].residual)
        for i, (st, rec) in enumerate(zip(sts, call)):
            rec.computed = not skip[i]
            if not skip[i]:
                st.residual = out[i:i + 1] - x[i:i + 1]
        return out
