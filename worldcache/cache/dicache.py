"""DiCache: probe drift + residual-trajectory extrapolation, fixed threshold, no content awareness.

Its decision rule on the shared `ProbeEngine`: skip while the plain relative L1 drift of the probe, accumulated
since the last compute, stays below the threshold; extrapolate with DiCache's official γ (ratio of L1 means).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from .base import CachePolicy, CallRecord, ModelCall, rel_l1
from .probe import ProbeConfig, ProbeEngine, ProbeState


@dataclass
class DiCacheConfig(ProbeConfig):
    pass


@register
class DiCache(CachePolicy):
    name = "dicache"
    config_cls = DiCacheConfig
    state_cls = ProbeState

    def __init__(self, config: DiCacheConfig):
        super().__init__(config)
        self.engine = ProbeEngine(config)

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        return self.engine.run(stack, call, self.states(call), self._decide, self._approximate)

    def _decide(self, st: ProbeState, rec: CallRecord, x, probe, grid) -> float | None:
        if not self.engine.may_skip(st, rec):
            return None
        rec.drift, rec.threshold = st.acc + float(rel_l1(probe, st.p_prev)), self.config.threshold
        return rec.drift if rec.drift < rec.threshold and not self.engine.capped(st) else None

    def _approximate(self, st: ProbeState, rho_now, x, grid, rec: CallRecord) -> torch.Tensor:
        return self.engine.extrapolate(st, rho_now, rec, least_squares=False)[0]
