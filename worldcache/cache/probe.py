"""The probe-and-extrapolate engine that DiCache and WorldCache share (../shared/METHOD.md, "Base").

Every call runs the first `probe_depth` blocks (the probe) on the stack input. The policy's decision rule compares
the probe with the previous call's and says, per sample, whether to compute or to skip. A computing sample resumes
from the probe (its blocks are not run twice); a skipping one gets its block-stack residual extrapolated from the
last two computed residuals, ``r₋₂ + γ (r₋₁ − r₋₂)``, with γ from the probe residuals. The engine keeps the
trajectories (residuals, probe residuals, accumulated drift) in a typed `ProbeState` per sample and branch; the
policies hold only their decision rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .base import CachePolicy, CallRecord, ModelCall, PolicyState, compute_rows, may_skip, widened
from .config import PolicyConfig


@dataclass
class ProbeConfig(PolicyConfig):
    """Settings every probing policy has (DiCache's defaults)."""

    threshold: float = 0.08         # skip while accumulated probe drift stays below this
    ret_ratio: float = 0.2          # warm-up: this fraction of the steps always computes
    probe_depth: int = 1            # blocks run on every call to measure drift
    force_last_step: bool = True    # the final step always computes
    max_consecutive_skips: int = 0  # 0: no cap

    def check(self) -> None:
        self.nonneg("threshold")
        self.check_warmup()
        self.require("probe_depth", self.probe_depth >= 1, "must be >= 1")
        self.require("max_consecutive_skips", self.max_consecutive_skips >= 0, "must be >= 0 (0: no cap)")


@dataclass
class ProbeState(PolicyState):
    x_prev: torch.Tensor | None = None  # the previous call's stack input
    p_prev: torch.Tensor | None = None  # the previous call's probe output
    x_ref: torch.Tensor | None = None   # the last computed call's stack input
    residuals: list = field(default_factory=list)        # the last computed block-stack residuals (out - x): 2 or 3,
                                                         # fp32 (`widened`) whatever the weights' dtype
    probe_residuals: list = field(default_factory=list)  # and their probe residuals (probe - x)
    steps: list = field(default_factory=list)            # and their steps
    sigmas: list = field(default_factory=list)           # and noise levels
    acc: float = 0.0                    # drift accumulated over the skips since the last compute
    skips: int = 0                      # consecutive skips since the last compute
    trajectory: dict = field(default_factory=dict)  # step -> (probe output, rest-of-stack residual), computed calls
    reuse: torch.Tensor | None = None   # this call only: a rest-of-stack residual to reuse instead of extrapolating


EXTRAPOLATIONS = ("probe", "parabola", "sigma", "sigma2")  # `ProbeEngine.extrapolate`'s `along`
PARABOLAS = {"parabola": "probe", "sigma2": "sigma"}  # the forms through three residuals -> their line (two)


# ctx below: the call's StackContext (its token grid, its conditioning frames)
# decide(state, record, x, probe, ctx) -> None (compute) or the accumulated drift the sample keeps when it skips
Decide = Callable[[ProbeState, CallRecord, torch.Tensor, torch.Tensor, Any], "float | None"]
# approximate(state, probe residual now, x, ctx, record) -> the sample's block-stack residual
Approximate = Callable[[ProbeState, torch.Tensor, torch.Tensor, Any, CallRecord], torch.Tensor]


class ProbeEngine:
    """Probe, let the policy decide per sample, compute or approximate, keep the trajectories.

    `keep_trajectory`: also keep, per computed step, the probe output and the rest of the stack's residual
    (``out - probe``) in `ProbeState.trajectory` (for reuse across the chunks of a rollout; memory: two activations
    per computed step). `keep`: how many computed residuals to keep (each one activation per sample and branch):
    two for a line, three for a parabola.
    """

    def __init__(self, config: ProbeConfig, keep_trajectory: bool = False, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep={keep}: must be >= 1")
        self.config, self.keep_trajectory, self.keep = config, keep_trajectory, keep

    def may_skip(self, st: ProbeState, rec: CallRecord) -> bool:
        """There is a residual to extrapolate and the call is in the window where skips are allowed."""
        return bool(st.residuals) and may_skip(rec, self.config.ret_ratio, self.config.force_last_step)

    def capped(self, st: ProbeState) -> bool:
        return 0 < self.config.max_consecutive_skips <= st.skips

    def run(self, stack, call: ModelCall, sts: list[ProbeState], decide: Decide, approximate: Approximate):
        depth, x, ctx = self.config.probe_depth, stack.x, stack.ctx
        if depth >= stack.num_blocks:
            raise ValueError(f"probe_depth={depth} leaves no blocks to skip (model has {stack.num_blocks})")
        probe = stack(x, 0, depth)
        keep = [decide(st, rec, x[i:i + 1], probe[i:i + 1], ctx) for i, (st, rec) in enumerate(zip(sts, call))]
        skip = [k is not None for k in keep]
        # resume from the probe (its blocks are not run twice) on the samples that compute
        # residuals in fp32 whatever the weights' dtype: an extrapolation's weights (a parabola's sum to 199 at 9
        # steps out) would multiply bf16's rounding; the output is rounded to the weights' dtype once
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + approximate(
            sts[i], widened(probe[i:i + 1]) - widened(x[i:i + 1]), x[i:i + 1], ctx, call[i]), h=probe, start=depth)
        for i, (st, rec) in enumerate(zip(sts, call)):
            xi, pi = x[i:i + 1], probe[i:i + 1]
            if skip[i]:
                st.acc, st.skips = keep[i], st.skips + 1
            else:
                k = self.keep  # the last `keep` computed calls
                st.residuals = [*st.residuals, widened(out[i:i + 1]) - widened(xi)][-k:]
                st.probe_residuals = [*st.probe_residuals, widened(pi) - widened(xi)][-k:]
                st.steps, st.sigmas = [*st.steps, rec.step][-k:], [*st.sigmas, rec.sigma][-k:]
                st.x_ref, st.acc, st.skips = xi, 0.0, 0
                if self.keep_trajectory:
                    st.trajectory[rec.step] = (pi, out[i:i + 1] - pi)
            rec.computed = not skip[i]
            st.p_prev, st.x_prev, st.reuse = pi, xi, None
        return out

    @staticmethod
    def extrapolate(st: ProbeState, rho_now: torch.Tensor, rec: CallRecord, least_squares: bool,
                    gamma_min: float = 0.2, gamma_max: float = 1.8, along: str = "probe",
                    probe_too: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The extrapolated block-stack residual ``r₋₂ + γ (r₋₁ − r₋₂)`` (with one computed residual: ``r₋₁``,
        γ = 1); with `probe_too`, (it, the probe residual extrapolated alike), which only WorldCache's warp check
        reads, so a plain skip does not pay for it. `along` "probe": γ from the probe residuals, least squares
        clamped to [gamma_min, gamma_max] (WorldCache's blending) or DiCache's official ratio of L1 means clipped to
        [1, 2]. "sigma": the line in noise level, γ = (σ − σ₋₂) / (σ₋₁ − σ₋₂). "parabola" / "sigma2": the parabola
        through the last three residuals in step index / in noise level (`lagrange_weights`; ``rec.gamma`` NaN),
        until three exist the probe's / the σ line. Sets ``rec.gamma``."""
        res, rho = st.residuals, st.probe_residuals
        series = (res, rho) if probe_too else (res,)
        if len(res) < 2:
            rec.gamma = 1.0
            out = [s[-1] for s in series]
        elif along in PARABOLAS and len(res) == 3:
            w = (lagrange_weights(st.steps, rec.step) if along == "parabola" else
                 lagrange_weights(st.sigmas, rec.sigma))
            out = [sum(wj * r for wj, r in zip(w, s)) for s in series]
        else:
            if PARABOLAS.get(along, along) == "sigma":  # the σ line, or the σ parabola's until three residuals exist
                g = rec.gamma = (rec.sigma - st.sigmas[-2]) / (st.sigmas[-1] - st.sigmas[-2])
            else:
                dims = (1, 2)
                a, b = rho_now - rho[-2], rho[-1] - rho[-2]  # fp32 (`widened`): fp16 sums overflow past 65504
                if least_squares:  # argmin_g ||a - g b||^2
                    gamma = ((a * b).sum(dims) / (b * b).sum(dims).clamp_min(1e-12)).clamp(gamma_min, gamma_max)
                else:
                    gamma = (a.abs().mean(dims) / b.abs().mean(dims).clamp_min(1e-12)).clamp(1.0, 2.0)
                g = gamma[:, None, None]
                rec.gamma = float(gamma.mean())
            out = [s[-2] + g * (s[-1] - s[-2]) for s in series]
        return tuple(out) if probe_too else out[0]


def lagrange_weights(xs, x: float) -> list[float]:
    """Weights of the parabola through values at the three distinct abscissae `xs`, read at `x`: the extrapolation
    is ``sum(w_j r_j)``. E.g. xs (4, 6, 8) at 10: (1, -3, 3)."""
    return [math.prod((x - xs[k]) / (xs[j] - xs[k]) for k in range(3) if k != j) for j in range(3)]


class ProbePolicy(CachePolicy):
    """A policy on the probe engine: subclasses give only their decision rule (`decide`) and approximation."""

    state_cls = ProbeState

    def __init__(self, config: ProbeConfig, keep_trajectory: bool = False, keep: int = 2):
        super().__init__(config)
        self.engine = ProbeEngine(config, keep_trajectory, keep)

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        return self.engine.run(stack, call, self.states(call), self.decide, self.approximate)

    def decide(self, st: ProbeState, rec: CallRecord, x, probe, ctx) -> float | None:  # pragma: no cover
        """One sample: None to compute, or the accumulated drift it keeps when it skips; fills its record."""
        raise NotImplementedError

    def approximate(self, st: ProbeState, rho_now, x, ctx, rec: CallRecord) -> torch.Tensor:  # pragma: no cover
        """One skipping sample's block-stack residual."""
        raise NotImplementedError
