"""DiCache: probe drift + residual-trajectory extrapolation, fixed threshold, no content awareness.

Its decision rule on the shared `ProbeEngine`: skip while the plain relative L1 drift of the probe, accumulated
since the last compute, stays below the threshold; extrapolate with DiCache's official γ (ratio of L1 means).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import CallRecord, rel_l1
from .probe import ProbeConfig, ProbePolicy, ProbeState


@dataclass
class DiCacheConfig(ProbeConfig):
    pass


@register
class DiCache(ProbePolicy):
    name = "dicache"
    config_cls = DiCacheConfig

    def decide(self, st: ProbeState, rec: CallRecord, x, probe, ctx) -> float | None:
        if not self.engine.may_skip(st, rec):
            return None
        rec.drift, rec.threshold = st.acc + float(rel_l1(probe, st.p_prev)), self.config.threshold
        return rec.drift if rec.drift < rec.threshold and not self.engine.capped(st) else None

    def approximate(self, st: ProbeState, rho_now, x, ctx, rec: CallRecord):
        return self.engine.extrapolate(st, rho_now, rec, least_squares=False)
