"""WorldCache and its parent DiCache: probe the first blocks, skip the rest when the probe drifts little.

One engine, `WorldCache`; DiCache is the same engine with WorldCache's four additions switched off and DiCache's
own extrapolation coefficient. See ../shared/METHOD.md (the project's method notes) for the formulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from .base import CachePolicy, CallRecord, ModelCall, compute_rows, may_skip, rel_l1
from .config import PolicyConfig
from ..motion import laplacian, token_flow, warp_tokens


@dataclass
class DiCacheConfig(PolicyConfig):
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
class WorldCacheConfig(DiCacheConfig):
    # Tuned for the bundled model on tuning episodes disjoint from the benchmark's (README, Benchmarks); the
    # method's own defaults (threshold 0.08, ret_ratio 0.2, warp on, unchecked) are configs/cache/worldcache_paper.yaml.
    threshold: float = 0.16
    ret_ratio: float = 0.1
    motion_adaptive: bool = True    # tau / (1 + alpha * input velocity)
    alpha: float = 5.0
    saliency: bool = True           # drift weighted by 1 + beta * per-token saliency of the probe
    beta: float = 5.0
    blend: bool = True              # least-squares extrapolation coefficient from the probe residuals
    gamma_min: float = 0.2
    gamma_max: float = 1.8
    warp: bool = False              # warp the cached residual along the token-grid flow
    warp_check: bool = True         # keep the warp only in latent frames where it also fits the probe better
    flow_scale: float = 0.5         # flow estimated at this fraction of the token grid
    phase_aware: bool = True        # tau * (1 + phase_slope * step / N): relax as denoising progresses
    phase_slope: float = 4.0
    hf_veto: bool = False           # forbid a skip when the input's Laplacian drifts more than hf_threshold
    hf_threshold: float = 0.01
    uncond_reuse: bool = False      # guidance-branch caching: the uncond branch reuses its last residual ...
    uncond_reuse_start: float = 0.5  # ... from this fraction of the steps on (separate guidance only)

    def check(self) -> None:
        super().check()
        self.nonneg("alpha", "beta", "phase_slope", "hf_threshold", "gamma_min")
        self.require("gamma_max", self.gamma_max >= self.gamma_min, "must be >= gamma_min")
        self.require("flow_scale", 0 < self.flow_scale <= 1, "must be in (0, 1]")
        self.require("uncond_reuse_start", 0 <= self.uncond_reuse_start <= 1, "must be in [0, 1]")


@register
class WorldCache(CachePolicy):
    name = "worldcache"
    config_cls = WorldCacheConfig

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        cfg, sts, x = self.config, self.states(call), stack.x
        depth = cfg.probe_depth
        if depth >= stack.num_blocks:
            raise ValueError(f"probe_depth={depth} leaves no blocks to skip (model has {stack.num_blocks})")
        if cfg.uncond_reuse and all(self._reuse_uncond(st, call) for st in sts):
            call.computed = False
            # no block runs: each sample's last computed residual of the branch, held
            return x + torch.cat([st["residuals"][-1] for st in sts])
        probe = stack(x, 0, depth)
        # per sample: its own drift, threshold and decision (row i of the batch)
        skip = [self._decide(st, rec, x[i:i + 1], probe[i:i + 1], stack.ctx.grid)
                for i, (st, rec) in enumerate(zip(sts, call))]
        grid = stack.ctx.grid
        # resume from the probe (its blocks are not run twice) on the samples that compute
        out = compute_rows(stack, skip, lambda i: x[i:i + 1] + self._approximate(
            sts[i], probe[i:i + 1] - x[i:i + 1], x[i:i + 1], grid, call[i]), h=probe, start=depth)
        for i, (st, rec) in enumerate(zip(sts, call)):
            xi, pi = x[i:i + 1], probe[i:i + 1]
            if skip[i]:
                st["acc"], st["skips"] = rec.drift, st["skips"] + 1
            else:
                st.setdefault("residuals", []).append(out[i:i + 1] - xi)
                st.setdefault("probe_residuals", []).append(pi - xi)
                del st["residuals"][:-2], st["probe_residuals"][:-2]
                st["x_ref"], st["acc"], st["skips"] = xi, 0.0, 0
            rec.computed = not skip[i]
            st["p_prev"], st["x_prev"] = pi, xi
        return out

    def _decide(self, st: dict, rec: CallRecord, x, probe, grid) -> bool:
        """One sample: whether to skip (approximate) its block stack; fills its motion/drift/threshold."""
        cfg = self.config
        motion = float(rel_l1(x, st["x_prev"])) if "x_prev" in st else 0.0
        rec.motion = motion
        if "residuals" not in st or not may_skip(rec, cfg.ret_ratio, cfg.force_last_step):
            return False
        drift, rec.saliency = self._drift(probe, st["p_prev"])
        acc = st["acc"] + drift
        tau = cfg.threshold
        if cfg.phase_aware:
            tau *= 1 + cfg.phase_slope * rec.step / rec.num_steps
        if cfg.motion_adaptive:
            tau /= 1 + cfg.alpha * motion
        rec.drift, rec.threshold = acc, tau  # a skip keeps acc (rec.drift) as the sample's accumulated drift
        capped = 0 < cfg.max_consecutive_skips <= st["skips"]
        vetoed = cfg.hf_veto and float(rel_l1(laplacian(x, grid), laplacian(st["x_prev"], grid))) > cfg.hf_threshold
        return acc < tau and not capped and not vetoed

    def _drift(self, p: torch.Tensor, p_prev: torch.Tensor) -> tuple[float, float]:
        if not self.config.saliency:
            return float(rel_l1(p, p_prev)), float("nan")
        sal = p_prev.float().std(dim=-1)  # (B, N): per-token spread across channels
        lo, hi = sal.amin(dim=1, keepdim=True), sal.amax(dim=1, keepdim=True)
        w = 1 + self.config.beta * (sal - lo) / (hi - lo).clamp_min(1e-12)
        diff = (p - p_prev).abs().mean(dim=-1)
        drift = (w * diff).mean(dim=1) / p_prev.abs().mean(dim=(1, 2)).clamp_min(1e-12)
        return float(drift), float(w.mean())

    def _reuse_uncond(self, st: dict, call: ModelCall) -> bool:
        """Guidance-branch caching: late in denoising the unconditional branch changes little."""
        if call.branch == "batched":
            raise ValueError("uncond_reuse needs guidance='separate': with batched guidance both branches share "
                             "one model call, so the unconditional one cannot be skipped alone")
        # the same window as any skip: after the first uncond_reuse_start of the steps, never a forced last step
        return (call.branch == "uncond" and "residuals" in st
                and may_skip(call, self.config.uncond_reuse_start, self.config.force_last_step))

    def _approximate(self, st: dict, rho_now, x, grid, call: CallRecord) -> torch.Tensor:
        """Extrapolate the block-stack residual from the last two computed ones, then warp it (optional)."""
        cfg, res, rho = self.config, st["residuals"], st["probe_residuals"]
        if len(res) < 2:
            approx, rho_hat, call.gamma = res[-1], rho[-1], 1.0
        else:
            dims = (1, 2)
            a, b = rho_now - rho[-2], rho[-1] - rho[-2]
            if cfg.blend:  # least squares: argmin_g ||a - g b||^2
                gamma = ((a * b).sum(dims) / (b * b).sum(dims).clamp_min(1e-12)).clamp(cfg.gamma_min, cfg.gamma_max)
            else:  # DiCache's official heuristic: ratio of the L1 means of the probe-residual changes, in [1, 2]
                gamma = (a.abs().mean(dims) / b.abs().mean(dims).clamp_min(1e-12)).clamp(1.0, 2.0)
            g = gamma[:, None, None]
            approx, rho_hat = res[-2] + g * (res[-1] - res[-2]), rho[-2] + g * (rho[-1] - rho[-2])
            call.gamma = float(gamma.mean())
        if cfg.warp:
            approx = self._warp(approx, rho_hat, rho_now, st["x_ref"], x, grid, call)
        return approx

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
        # A zero flow is no warp (the clean conditioning frame): rounding in the resampling must not count it as one.
        moved = flow.flatten(1).abs().amax(dim=1).view(b, frames) > 0
        keep = moved & (err(warp_tokens(rho_hat, flow, grid)) < err(rho_hat))
        call.warped = float(keep.float().mean())
        return torch.where(keep.repeat_interleave(n // frames, dim=1)[..., None], warped, approx)


@register
class DiCache(WorldCache):
    """DiCache: probe drift + residual-trajectory extrapolation, fixed threshold, no content awareness."""

    name = "dicache"
    config_cls = DiCacheConfig

    def __init__(self, config: DiCacheConfig):
        off = dict(motion_adaptive=False, saliency=False, blend=False, warp=False, phase_aware=False)
        super().__init__(WorldCacheConfig(**config.as_dict(), **off))
