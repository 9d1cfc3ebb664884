"""Reuse the last block-stack residual while an accumulated estimate of the output change stays small.

The shared skeleton of TeaCache and EasyCache: each call, per sample, the policy estimates how much the output has
changed since the previous call (`change`), adds it to an accumulator, and reuses ``x + residual`` of the last
computed call while the sum stays below the threshold. A compute resets the sum and refreshes the residual.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import CachePolicy, ModelCall, PolicyState, compute_rows, may_skip


@dataclass
class ReuseState(PolicyState):
    residual: torch.Tensor | None = None  # block-stack output - input of the last computed call
    acc: float = 0.0                      # accumulated estimated change since that call


class AccumulatedReuse(CachePolicy):
    """Subclasses: `change(st, stack, i)` and optionally `computed(st, x_i, out_i)`. Config needs threshold,
    ret_ratio and force_last_step."""

    state_cls = ReuseState

    def change(self, st, stack, i: int) -> float | None:  # pragma: no cover - interface
        """Estimated relative output change of sample i since the branch's previous call (None: no estimate yet).
        Called on every call, so it also keeps whatever the next call's estimate needs."""
        raise NotImplementedError

    def computed(self, st, x: torch.Tensor, out: torch.Tensor) -> None:
        """Sample's block stack just ran: input `x`, output `out`."""

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        cfg, sts, x = self.config, self.states(call), stack.x
        skip = []
        for i, (st, rec) in enumerate(zip(sts, call)):  # each sample decides on its own change
            d = self.change(st, stack, i)
            s = False
            if d is not None and st.residual is not None and may_skip(rec, cfg.ret_ratio, cfg.force_last_step):
                rec.drift, rec.threshold = st.acc + d, cfg.threshold
                s = rec.drift < cfg.threshold
            rec.computed = not s
            skip.append(s)
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + sts[i].residual)
        for i, st in enumerate(sts):
            if skip[i]:
                st.acc = call[i].drift
            else:
                xi, oi = x[i:i + 1], out[i:i + 1]
                self.computed(st, xi, oi)
                st.residual, st.acc = oi - xi, 0.0
        return out
