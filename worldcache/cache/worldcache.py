"""WorldCache: DiCache's probe-and-extrapolate (the shared `ProbeEngine`) with content-aware decisions.

Its decision rule: saliency-weighted probe drift against a motion-adaptive, phase-aware threshold; least-squares
blending and an optional warp of the extrapolated residual; optional reuse across the chunks of a rollout
(`cross_chunk`). See ../shared/METHOD.md (the project's method notes) for the formulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from .base import CallRecord, ModelCall, may_skip, rel_l1, widened
from .probe import EXTRAPOLATIONS, PARABOLAS, ProbeConfig, ProbePolicy, ProbeState
from ..motion import laplacian, token_flow, warp_tokens


@dataclass
class WorldCacheConfig(ProbeConfig):
    # Tuned for the bundled model on tuning episodes disjoint from the benchmark's (docs/experiments.md); the
    # method's own defaults (threshold 0.08, ret_ratio 0.2, warp on, unchecked) are configs/cache/worldcache_paper.yaml.
    threshold: float = 0.12
    ret_ratio: float = 0.1
    motion_adaptive: bool = True    # tau / (1 + alpha * input velocity)
    alpha: float = 5.0
    saliency: bool = True           # drift weighted by 1 + beta * per-token saliency of the probe
    saliency_over: str = "token"    # the spread: per token over channels, or "location": per spatial location
                                    # over latent frames x channels (the research code's), shared by its tokens
    generated_only: bool = False    # drift, motion and saliency over the generated frames' tokens only: the sampler
                                    # discards the model's output on the conditioning frames
    beta: float = 5.0
    blend: bool = True              # least-squares γ of the probe's line (extrapolation "probe", or a parabola's
    gamma_min: float = 0.2          # line: below parabola_min_steps, and until three residuals exist)
    gamma_max: float = 1.8
    extrapolation: str = "parabola"  # a skip's residual on the parabola through the last three in step index (ours:
                                    # a higher frontier on the bundled model, docs/experiments.md); "probe": the
                                    # method's line through the last two, γ from the probe; "sigma" / "sigma2": line /
                                    # parabola in σ
    parabola_min_steps: int = 30    # predictions of fewer steps use the parabola's line instead (probe / sigma):
                                    # the parabola gained at 35 and 30 steps and lost at 24 and 18 (docs/experiments.md)
    warp: bool = False              # warp the cached residual along the token-grid flow
    warp_check: bool = True         # keep the warp only in latent frames where it also fits the probe better
    flow_scale: float = 0.5         # flow estimated at this fraction of the token grid
    phase_aware: bool = True        # tau * (1 + phase_slope * step / N): relax as denoising progresses
    phase_slope: float = 4.0
    hf_veto: bool = False           # forbid a skip when the input's Laplacian drifts more than hf_threshold
    hf_threshold: float = 0.01
    uncond_reuse: bool = False      # guidance-branch caching: the uncond branch reuses its last residual ...
    uncond_reuse_start: float = 0.5  # ... from this fraction of the steps on (separate guidance only)
    cross_chunk: bool = False       # in a rollout, a call the rule computes may reuse the previous chunk's residual
                                    # at the same step when its probe drifted less than the threshold from that one

    def check(self) -> None:
        super().check()
        self.nonneg("alpha", "beta", "phase_slope", "hf_threshold", "gamma_min", "parabola_min_steps")
        self.require("gamma_max", self.gamma_max >= self.gamma_min, "must be >= gamma_min")
        self.require("flow_scale", 0 < self.flow_scale <= 1, "must be in (0, 1]")
        self.require("saliency_over", self.saliency_over in ("token", "location"), "must be 'token' or 'location'")
        self.require("extrapolation", self.extrapolation in EXTRAPOLATIONS,
                     f"must be one of {', '.join(EXTRAPOLATIONS)}")
        self.require("uncond_reuse_start", 0 <= self.uncond_reuse_start <= 1, "must be in [0, 1]")


def spread(x: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the last dimension, Bessel-corrected as `Tensor.std`, by the two-pass formula (the
    mean-centred sum of squares): on 2 CPU cores ~4x faster than `Tensor.std`'s reduction over rows of 128 channels,
    which was two thirds of the drift's cost on every call. Equal to it within float rounding."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return (centred * centred).sum(dim=-1).div(x.shape[-1] - 1).sqrt()


@register
class WorldCache(ProbePolicy):
    name = "worldcache"
    config_cls = WorldCacheConfig

    def __init__(self, config: WorldCacheConfig):
        super().__init__(config, keep_trajectory=config.cross_chunk,
                         keep=3 if config.extrapolation in PARABOLAS else 2)
        self.previous: dict[str, list[dict]] = {}  # branch -> per sample, the previous chunk's trajectory
        self._prev: list[dict] | None = None       # the current call's branch of it

    def begin(self, num_steps: int) -> None:
        # cross_chunk: keep the finished prediction's trajectories when this one is announced as its next chunk
        carry = self.config.cross_chunk and self.chunk > 0 and num_steps == self.num_steps
        self.previous = ({b: [st.trajectory for st in sts] for b, sts in self._states.items()} if carry else {})
        super().begin(num_steps)

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        sts, x = self.states(call), stack.x
        if self.config.uncond_reuse and all(self._reuse_uncond(st, call) for st in sts):
            call.computed = False
            for st in sts:
                st.skips += 1  # a skip like any other: max_consecutive_skips counts it
            # no block runs: each sample's last computed residual of the branch, held
            return (x + torch.cat([st.residuals[-1] for st in sts])).to(x.dtype)
        prev = self.previous.get(call.branch)
        if prev is not None and len(prev) != len(call):
            raise ValueError(f"cross_chunk: batch of {len(call)} samples after a chunk of {len(prev)}")
        self._prev = prev
        return super().run_stack(stack, call)

    def decide(self, st: ProbeState, rec: CallRecord, x, probe, ctx) -> float | None:
        cfg = self.config
        gen, gen_grid = self._scope(ctx)
        motion = float(rel_l1(x[:, gen], st.x_prev[:, gen])) if st.x_prev is not None else 0.0
        rec.motion = motion
        tau = cfg.threshold
        if cfg.phase_aware:
            tau *= 1 + cfg.phase_slope * rec.step / rec.num_steps
        if cfg.motion_adaptive:
            tau /= 1 + cfg.alpha * motion
        acc = None
        if self.engine.may_skip(st, rec):
            drift, rec.saliency = self._drift(probe[:, gen], st.p_prev[:, gen], gen_grid)
            acc = st.acc + drift
            rec.drift, rec.threshold = acc, tau  # a skip keeps acc (rec.drift) as the sample's accumulated drift
            if self._blocked(st, x, gen, gen_grid):
                return None
            if acc < tau:
                return acc
        elif self._prev is None or self._blocked(st, x, gen, gen_grid):
            return None  # a reuse from the previous chunk is a skip too: the cap and the veto hold for it
        return self._from_previous_chunk(st, rec, probe[:, gen], tau, acc, gen, gen_grid)

    def _blocked(self, st: ProbeState, x, gen: slice, grid) -> bool:
        """No skip however small the drift: `max_consecutive_skips` reached, or the high-frequency veto."""
        cfg = self.config
        return self.engine.capped(st) or (cfg.hf_veto and st.x_prev is not None and float(rel_l1(
            laplacian(x[:, gen], grid), laplacian(st.x_prev[:, gen], grid))) > cfg.hf_threshold)

    def _scope(self, ctx) -> tuple[slice, tuple[int, int, int]]:
        """The tokens the drift reads and their grid: all of them, or with `generated_only` the generated frames'
        (tokens are frame-major, the conditioning frames first)."""
        t, h, w = ctx.grid
        c = ctx.cond_frames if self.config.generated_only else 0
        return slice(c * h * w, None), (t - c, h, w)

    def _from_previous_chunk(self, st: ProbeState, rec: CallRecord, probe, tau: float, acc, gen: slice,
                             grid) -> float | None:
        """cross_chunk: reuse the previous chunk's rest-of-stack residual at this step where its probe output was
        within the threshold of this one (never on a forced final step). The drift accumulated within this chunk
        keeps counting, as over any skip: a reuse from the previous chunk does not reset it."""
        if self._prev is None or (self.config.force_last_step and rec.step == rec.num_steps - 1):
            return None
        hit = self._prev[rec.sample].get(rec.step)
        if hit is None:
            return None
        p_then, rest = hit
        drift, saliency = self._drift(probe, p_then[:, gen], grid)
        if drift >= tau:
            return None
        st.reuse, rec.drift, rec.threshold, rec.saliency = rest, drift, tau, saliency
        return st.acc if acc is None else acc

    def _drift(self, p: torch.Tensor, p_prev: torch.Tensor, grid) -> tuple[float, float]:
        if not self.config.saliency:
            return float(rel_l1(p, p_prev)), float("nan")
        p, p_prev = widened(p), widened(p_prev)  # fp16 rounds the 1e-12 floors below to 0
        sal = p_prev
        if self.config.saliency_over == "location":  # tokens are (T, H, W)-ordered, frames outermost
            b, n, c = sal.shape
            t = grid[0]
            sal = spread(sal.reshape(b, t, n // t, c).transpose(1, 2).reshape(b, n // t, t * c)).repeat(1, t)
        else:
            sal = spread(sal)  # (B, N): per-token spread across channels
        lo, hi = sal.amin(dim=1, keepdim=True), sal.amax(dim=1, keepdim=True)
        w = 1 + self.config.beta * (sal - lo) / (hi - lo).clamp_min(1e-12)
        diff = (p - p_prev).abs().mean(dim=-1)
        drift = (w * diff).mean(dim=1) / p_prev.abs().mean(dim=(1, 2)).clamp_min(1e-12)
        return float(drift), float(w.mean())

    def _reuse_uncond(self, st: ProbeState, call: ModelCall) -> bool:
        """Guidance-branch caching: late in denoising the unconditional branch changes little."""
        if call.branch == "batched":
            raise ValueError("uncond_reuse needs guidance='separate': with batched guidance both branches share "
                             "one model call, so the unconditional one cannot be skipped alone")
        # the window of any skip, from uncond_reuse_start on: never in the warm-up, never a forced last step, and
        # within max_consecutive_skips
        cfg = self.config
        return (call.branch == "uncond" and bool(st.residuals) and not self.engine.capped(st)
                and may_skip(call, max(cfg.uncond_reuse_start, cfg.ret_ratio), cfg.force_last_step))

    def approximate(self, st: ProbeState, rho_now, x, ctx, rec: CallRecord) -> torch.Tensor:
        """The previous chunk's rest residual on this probe (cross_chunk), or the extrapolated residual, warped
        (optional)."""
        cfg = self.config
        if st.reuse is not None:
            return rho_now + st.reuse
        along = cfg.extrapolation
        if along in PARABOLAS and rec.num_steps < cfg.parabola_min_steps:
            along = PARABOLAS[along]
        out = self.engine.extrapolate(st, rho_now, rec, cfg.blend, cfg.gamma_min, cfg.gamma_max, along,
                                      probe_too=cfg.warp)  # (residual, probe residual) for the warp check
        return self._warp(*out, rho_now, st.x_ref, x, ctx.grid, rec) if cfg.warp else out

    def _warp(self, approx, rho_hat, rho_now, x_ref, x, grid, call: CallRecord) -> torch.Tensor:
        """Resample the extrapolated residual along the token flow from the last computed input to this one.

        With `warp_check`, per latent frame the warp is kept only where the same warp also brings the extrapolated
        probe residual closer to the probe's actual one: the probe is ground truth for the first blocks, so a flow
        that only fits the noise of the denoising inputs is refused instead of smearing the cache.
        """
        flow = token_flow(x_ref, x, grid, self.config.flow_scale)
        warped = warp_tokens(approx, flow, grid)
        if not self.config.warp_check:
            call.warped = 1.0
            return warped
        b, n, _ = approx.shape
        frames = grid[0]
        err = lambda r: (r - rho_now).abs().reshape(b, frames, -1).mean(-1)  # noqa: E731  (B, T)
        # A frame whose input did not change is not warped (the clean conditioning frame): its flow, estimated by
        # resampling, is not exactly zero on most grids (1.5e-7 on the bundled model's 10x12), so it cannot say.
        moved = (x_ref != x).reshape(b, frames, -1).any(-1)
        keep = moved & (err(warp_tokens(rho_hat, flow, grid)) < err(rho_hat))
        call.warped = float(keep.float().mean())
        return torch.where(keep.repeat_interleave(n // frames, dim=1)[..., None], warped, approx)
