"""diffusers' own cache hooks (FirstBlockCache, FasterCache, MagCache, TaylorSeer, SeaCache, Pyramid Attention
Broadcast) behind the `CachePolicy` seam.

Each policy attaches diffusers' `apply_*` hooks to `stack.dit.transformer` the first time `run_stack` sees that model
(a different model at the start of a prediction: the old one is detached first; inside a prediction, an error), and
`detach()` removes them. A model carries one hook policy at a time: attaching a second one detaches the first. The
hooks wrap blocks / attention modules, so `run_stack` only runs the whole stack inside a diffusers `CacheContext`
named after the guidance branch: per-branch hook state comes from diffusers' `StateManager`, keyed by that name.
`begin` resets all hook state.

Honest bookkeeping: a hook-skipped block is still *called*, so `BlockStack.blocks_run` would overcount. Each policy
watches, per block, the leaf linears that do the work (`attn1.to_q`, `attn2.to_q`, the feed-forward's last linear)
with torch forward pre-hooks. After the call, `call.computed` is True iff every watched module in every block ran,
and `stack.blocks_run` is overwritten with the number of blocks whose feed-forward ran (`DiT.forward` copies it into
`call.blocks_run`). `call.threshold` is the configured threshold where there is one; diffusers does not expose its
drift, so `call.drift` stays NaN.

Whole-batch decisions: diffusers' hooks keep one cache per module and decide for the whole batch they see (a
batch-wide mean of the change), so these policies cannot decide per sample. Every sample of a call gets the same
record, and in a batch of environments a sample's result depends on the others (unlike `worldcache`, `dicache`,
`fora`, `teacache` and `easycache`): use batch 1 (``num_envs: 1``) where reproducibility per episode matters.

Per-method notes and limitations:
- fbcache: block 0 always runs; the rest are skipped while its residual changes by less than `threshold`.
- fastercache: only its attention reuse is used. Its CFG trick (approximating the unconditional half of a batched
  call from frequency deltas) lives in a hook on the top-level model forward, which our split forward never calls,
  so the hooks are applied with `is_guidance_distilled=True` (which also makes attention reuse independent of batch
  size). diffusers keeps one attention cache per module, not per context; the policy swaps in a per-branch
  `FasterCacheBlockState` before each call so the branches never mix. The hook's "timestep" is step-based,
  ``1000 * (1 - step / num_steps)``, so the skip range means the same fraction of the schedule whatever the flow
  shift (the shifted sigmas of Cosmos stay above 0.68 for ~80% of the steps). Blocks still run: a reusing call has
  `computed=False` but `blocks_run` equal to the block count.
- magcache: needs model-specific `mag_ratios`. If none are configured, the first prediction of the policy runs
  diffusers' calibrate mode (nothing is skipped, every call records `computed=True`), the per-step ratios are kept
  (mean over guidance branches) in `policy.mag_ratios`, and the next `begin` re-applies the hooks with them. So a
  benchmark either sets `mag_ratios` in the YAML or runs one warm-up prediction first. diffusers interpolates the
  ratios to the schedule length; the hooks are re-applied when `num_steps` changes. Calibrated ratios are the
  model's: a policy that follows another model calibrates again on it.
- taylorseer: by default caches the outputs of every block's `attn1`, `attn2` and `ff` (TaylorSeer's granularity;
  diffusers' default patterns do not match Cosmos' module names) with Taylor factors in `taylor_factors_dtype`.
  Memory: (max_order + 1) factors per hooked module per branch — large for long videos (use bfloat16 factors,
  max_order 1, or coarser `cache_identifiers` such as whole blocks). diffusers' lite mode (predict `proj_out`) is
  not offered: `proj_out` runs in `DiT.head`, outside the stack and its cache context.
- seacache: diffusers fills SeaCache's per-call metadata (step, sigma, the raw latents its indicator filters) in a
  hook on the top-level model forward, which our split forward never calls; the policy fills the same record from
  the call and `StackContext.latents` (the call's input latents, clean conditioning frames included, as SeaCache
  asks) before the blocks run. A skipped call runs no block: the leader block returns its input plus the cached
  residual (extrapolated from the last two computed calls at `residual_order` 1) and the other blocks pass it on.
- pab: Pyramid Attention Broadcast reuses each block's self-attention (`attn1`, which is spatio-temporal in Cosmos:
  diffusers' "spatial" class) and cross-attention (`attn2`) outputs, computing them every N calls inside a timestep
  range. Like FasterCache it keeps one cache per attention module, not per context, so the policy swaps in a
  per-branch state before each call (`AttentionReusePolicy`), and its "timestep" is the same step-based
  ``1000 * (1 - step / num_steps)``.
  Blocks still run (feed-forward included), so as for FasterCache a reusing call has `computed=False` and
  `blocks_run` equal to the block count.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from dataclasses import dataclass, field

import torch
from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, HookRegistry, MagCacheConfig,
                             TaylorSeerCacheConfig, apply_faster_cache, apply_first_block_cache, apply_mag_cache,
                             apply_taylorseer_cache)
from diffusers.hooks.faster_cache import (_FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK,
                                          FasterCacheBlockState)
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
from diffusers.hooks.pyramid_attention_broadcast import (_PYRAMID_ATTENTION_BROADCAST_HOOK,
                                                         PyramidAttentionBroadcastConfig,
                                                         PyramidAttentionBroadcastState,
                                                         apply_pyramid_attention_broadcast)
from diffusers.hooks.sea_cache import (_SEA_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_ROOT_HOOK,
                                       SeaCacheConfig, _SeaCacheForwardMetadata, apply_sea_cache)
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

from . import register
from .base import HOOKED, CachePolicy, ModelCall, PolicyState, release_hooks
from .config import PolicyConfig
from ..dit import register_cosmos_block


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_range(cfg: PolicyConfig, key: str) -> None:
    """A step-based timestep range (FasterCache, PAB)."""
    r = getattr(cfg, key)
    cfg.require(key, isinstance(r, (list, tuple)) and len(r) == 2 and all(map(_is_number, r)) and r[0] < r[1],
                "must be [low, high] with low < high (timestep = 1000 * (1 - step / num_steps))")


class DiffusersHookPolicy(CachePolicy):
    """Base: attach diffusers hooks lazily, run the stack in a per-branch cache context, count real block work."""

    hook_names: tuple[str, ...] = ()
    works_inside_blocks = True
    decides_per_sample = False  # diffusers' hooks keep one state for the batch

    def __init__(self, config):
        super().__init__(config)
        self._model = None
        self._handles: list = []
        self._fired: set = set()
        self._calls = 0  # model calls since `begin`

    # --- per method -------------------------------------------------------------------------------------------
    def _apply(self, model) -> None:
        raise NotImplementedError

    def _needs_reapply(self, num_steps: int) -> bool:
        return False

    def _before_call(self, model, stack, call: ModelCall) -> None:
        """Hook for methods needing per-call setup (FasterCache's per-branch state)."""

    # --- shared -----------------------------------------------------------------------------------------------
    def begin(self, num_steps: int) -> None:
        if self._model is not None and self._needs_reapply(num_steps):
            self.detach()
        super().begin(num_steps)
        self._calls = 0
        if self._model is not None:
            HookRegistry.check_if_exists_or_initialize(self._model).reset_stateful_hooks(recurse=True)

    def run_stack(self, stack, call: ModelCall) -> torch.Tensor:
        model = stack.dit.transformer
        if model is not self._model:
            if self._calls and self._model is not None:  # the hook state holds the old model's features
                raise ValueError(f"{self.name}: the model changed inside a prediction; a diffusers-hook policy "
                                 f"follows a new model from its next prediction (begin) on")
            self.detach()
            self._attach(model)
        self._calls += 1
        self._before_call(model, stack, call)
        self._fired.clear()
        # What `CacheMixin.cache_context` does; Cosmos' model does not inherit CacheMixin.
        _set_cache_context(model, CacheContext(call.branch, step_index=call.step, num_inference_steps=call.num_steps,
                                               timestep=call.sigma * 1000, sigma=call.sigma))
        try:
            out = stack(stack.x)
        finally:
            _set_cache_context(model, None)
        ff_ran = sum((i, "ff") in self._fired for i in range(stack.num_blocks))
        call.computed = len(self._fired) == 3 * stack.num_blocks
        stack.blocks_run = ff_ran  # truthful: blocks whose feed-forward ran (DiT.forward copies it to the record)
        return out

    def _attach(self, model) -> None:
        release_hooks(model)  # one hook policy per model: diffusers' hooks of two methods do not compose
        register_cosmos_block()
        self._apply(model)
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
        self._model = model
        setattr(model, HOOKED, self)
        for i, block in enumerate(model.transformer_blocks):
            ff_last = [m for m in block.ff.modules() if isinstance(m, torch.nn.Linear)][-1]
            for name, mod in (("attn1", block.attn1.to_q), ("attn2", block.attn2.to_q), ("ff", ff_last)):
                self._handles.append(mod.register_forward_pre_hook(
                    lambda _m, _a, key=(i, name): self._fired.add(key)))

    def detach(self) -> None:
        if self._model is None:
            return
        registry = HookRegistry.check_if_exists_or_initialize(self._model)
        for name in self.hook_names:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()
        for h in self._handles:
            h.remove()
        delattr(self._model, HOOKED)
        self._handles, self._model = [], None


# --- FirstBlockCache ------------------------------------------------------------------------------------------
@dataclass
class FBCachePolicyConfig(PolicyConfig):
    threshold: float = 0.05  # skip blocks 1.. while block 0's residual changes (rel. abs-mean) less than this

    def check(self) -> None:
        self.nonneg("threshold")


@register
class FBCache(DiffusersHookPolicy):
    name = "fbcache"
    config_cls = FBCachePolicyConfig
    hook_names = (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)

    def _apply(self, model) -> None:
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=self.config.threshold))

    def run_stack(self, stack, call):
        call.threshold = self.config.threshold
        return super().run_stack(stack, call)


# --- FasterCache ----------------------------------------------------------------------------------------------
@dataclass
class FasterCachePolicyConfig(PolicyConfig):
    spatial_attention_block_skip_range: int = 2  # compute self-attention every N calls of a branch, reuse between
    spatial_attention_timestep_skip_range: list = field(default_factory=lambda: [-1, 681])  # on 1000*(1-step/N)
    attention_weight: float = 0.5  # reuse = last + weight * (last - second last)

    def check(self) -> None:
        n = self.spatial_attention_block_skip_range
        self.require("spatial_attention_block_skip_range", isinstance(n, int) and n >= 1, "must be an integer >= 1")
        _check_range(self, "spatial_attention_timestep_skip_range")
        self.require("attention_weight", _is_number(self.attention_weight), "must be a finite number")


@dataclass
class AttentionBranchState(PolicyState):
    attn: list = field(default_factory=list)  # one diffusers attention-cache state per hooked attention module


class AttentionReusePolicy(DiffusersHookPolicy):
    """FasterCache and PAB: diffusers keeps one attention cache per module, not per context, and reads the timestep
    from a callback. Before each call the policy sets the step-based timestep and swaps in the branch's own states,
    so the guidance branches never mix."""

    state_cls = AttentionBranchState
    attn_hook: str = ""        # the name of diffusers' per-attention-module hook
    attn_state_cls: type = object  # its state class

    def _attach(self, model) -> None:
        super()._attach(model)
        self._attn_hooks = [m._diffusers_hook.get_hook(self.attn_hook) for m in model.modules()
                            if getattr(m, "_diffusers_hook", None) is not None
                            and m._diffusers_hook.get_hook(self.attn_hook) is not None]

    def _before_call(self, model, stack, call: ModelCall) -> None:
        self._timestep = 1000.0 * (1 - call.step / call.num_steps)
        st = self.state(call.branch)
        if not st.attn:
            st.attn = [self.attn_state_cls() for _ in self._attn_hooks]
        for hook, s in zip(self._attn_hooks, st.attn):  # one attention cache per branch, not one shared
            hook.state = s


@register
class FasterCache(AttentionReusePolicy):
    name = "fastercache"
    config_cls = FasterCachePolicyConfig
    hook_names = (_FASTER_CACHE_DENOISER_HOOK, _FASTER_CACHE_BLOCK_HOOK)
    attn_hook, attn_state_cls = _FASTER_CACHE_BLOCK_HOOK, FasterCacheBlockState

    def _apply(self, model) -> None:
        cfg = self.config
        with _quiet("diffusers.hooks.faster_cache"):  # its "purely experimental" banner, at every apply
            apply_faster_cache(model, FasterCacheConfig(
                spatial_attention_block_skip_range=cfg.spatial_attention_block_skip_range,
                spatial_attention_timestep_skip_range=tuple(cfg.spatial_attention_timestep_skip_range),
                attention_weight_callback=lambda _: cfg.attention_weight,
                current_timestep_callback=lambda: self._timestep,
                is_guidance_distilled=True,  # see module docstring: the CFG (denoiser) hook never runs here
                tensor_format="BCFHW"))


@contextlib.contextmanager
def _quiet(logger: str):
    """A library logger's warnings held back while its hook is applied (messages for its own users, not ours)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# --- MagCache -------------------------------------------------------------------------------------------------
@dataclass
class MagCachePolicyConfig(PolicyConfig):
    threshold: float = 0.06       # skip while the accumulated magnitude-ratio error stays below this
    max_skip_steps: int = 3       # at most this many consecutive skips
    retention_ratio: float = 0.2  # warm-up: this fraction of the steps always computes
    mag_ratios: list = field(default_factory=list)  # per-step ratios; empty: calibrate on the first prediction

    def check(self) -> None:
        self.nonneg("threshold", "retention_ratio")
        self.require("max_skip_steps", isinstance(self.max_skip_steps, int) and self.max_skip_steps >= 0,
                     "must be an integer >= 0")
        self.require("retention_ratio", self.retention_ratio < 1, "must be < 1")
        self.require("mag_ratios", isinstance(self.mag_ratios, (list, tuple))
                     and all(_is_number(v) and v > 0 for v in self.mag_ratios),
                     "must be a list of positive numbers (empty: calibrate)")


@register
class MagCache(DiffusersHookPolicy):
    name = "magcache"
    config_cls = MagCachePolicyConfig
    hook_names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)

    def __init__(self, config):
        super().__init__(config)
        self.mag_ratios: list[float] | None = list(config.mag_ratios) or None
        self._calib: dict[str, list] = {}  # branch -> diffusers' calibration list (filled by the tail hook)
        self._calibrating, self._applied_steps = False, None
        self._ratios_of = None  # id of the model its calibration ran on (the ratios are that model's; an id, not a
                                # reference: a policy keeps no model alive, and pickles with the env)

    def begin(self, num_steps: int) -> None:
        n = self._applied_steps
        if self._calibrating and self._calib and all(len(v) == n for v in self._calib.values()):
            # The calibration prediction finished: keep the mean over branches, re-apply the hooks with it.
            self.mag_ratios = [sum(v[i] for v in self._calib.values()) / len(self._calib) for i in range(n)]
            self.detach()
        super().begin(num_steps)

    def settings(self) -> dict:
        out = super().settings()
        if self.mag_ratios:  # calibrated in a warm-up (or configured): the ratios it used
            out["mag_ratios"] = [round(float(v), 6) for v in self.mag_ratios]
        return out

    def _needs_reapply(self, num_steps: int) -> bool:
        return num_steps != self._applied_steps  # diffusers sizes the ratios to the schedule when applied

    def _apply(self, model) -> None:
        cfg = self.config
        if not cfg.mag_ratios and self.mag_ratios is not None and self._ratios_of != id(model):
            self.mag_ratios = None  # calibrated on another model (or set from outside): calibrate on this one
        self._calibrating = self.mag_ratios is None
        if self._calibrating:
            self._ratios_of = id(model)
        self._applied_steps, self._calib = self.num_steps, {}
        apply_mag_cache(model, MagCacheConfig(
            threshold=cfg.threshold, max_skip_steps=cfg.max_skip_steps, retention_ratio=cfg.retention_ratio,
            num_inference_steps=self.num_steps, mag_ratios=self.mag_ratios, calibrate=self._calibrating))

    def _before_call(self, model, stack, call: ModelCall) -> None:
        if self._calibrating and call.step == 0:
            # Keep diffusers' own list object: its tail hook appends one ratio per step, then replaces (not
            # clears) the list when the schedule ends, so this reference ends up holding the full calibration.
            manager = model.transformer_blocks[0]._diffusers_hook.get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK).state_manager
            manager.set_context(CacheContext(call.branch))
            self._calib[call.branch] = manager.get_state().calibration_ratios

    def run_stack(self, stack, call):
        # a prediction without ratios calibrates (`_apply`, inside this call on its first): diffusers then prints
        # them at its end ("Copy these values..."); settings() has them
        quiet = contextlib.redirect_stdout(io.StringIO()) if self.mag_ratios is None else contextlib.nullcontext()
        with quiet:
            out = super().run_stack(stack, call)
        if not self._calibrating:
            call.threshold = self.config.threshold
        return out


# --- TaylorSeer -----------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TaylorSeerPolicyConfig(PolicyConfig):
    cache_interval: int = 5             # a full compute every this many calls after warm-up; Taylor prediction between
    disable_cache_before_step: int = 3  # warm-up calls (per branch) that always compute
    disable_cache_after_step: int = -1  # calls from this index on always compute (-1: never)
    max_order: int = 1                  # Taylor expansion order
    taylor_factors_dtype: str = "bfloat16"
    cache_identifiers: list = field(default_factory=lambda: [r"transformer_blocks\.\d+\.(attn1|attn2|ff)"])

    def check(self) -> None:
        for k, lo in (("cache_interval", 1), ("disable_cache_before_step", 0), ("disable_cache_after_step", -1),
                      ("max_order", 0)):
            self.require(k, isinstance(getattr(self, k), int) and getattr(self, k) >= lo, f"must be an integer >= {lo}")
        self.require("taylor_factors_dtype", self.taylor_factors_dtype in _DTYPES, f"must be one of {list(_DTYPES)}")
        ids = self.cache_identifiers
        ok = isinstance(ids, (list, tuple)) and all(isinstance(p, str) for p in ids)
        if ok:
            try:
                [re.compile(p) for p in self.cache_identifiers]
            except re.error:
                ok = False
        self.require("cache_identifiers", ok, "must be a list of regular expressions (matched with re.fullmatch)")


@register
class TaylorSeer(DiffusersHookPolicy):
    name = "taylorseer"
    config_cls = TaylorSeerPolicyConfig
    hook_names = (_TAYLORSEER_CACHE_HOOK,)

    def _apply(self, model) -> None:
        cfg = self.config
        apply_taylorseer_cache(model, TaylorSeerCacheConfig(
            cache_interval=cfg.cache_interval, disable_cache_before_step=cfg.disable_cache_before_step,
            disable_cache_after_step=None if cfg.disable_cache_after_step < 0 else cfg.disable_cache_after_step,
            max_order=cfg.max_order, taylor_factors_dtype=_DTYPES[cfg.taylor_factors_dtype],
            cache_identifiers=list(cfg.cache_identifiers)))


# --- SeaCache -------------------------------------------------------------------------------------------------
@dataclass
class SeaCachePolicyConfig(PolicyConfig):
    threshold: float = 0.25          # skip while the accumulated rel. L1 change of the SEA-filtered latents stays below
    residual_order: int = 1          # 0: reuse the last residual; 1: extrapolate it from the last two computed calls
    retention_steps: int = 1         # the first steps always compute
    cache_end_steps: int = 1         # the last steps always compute
    max_consecutive_cached: int = 2  # at most this many consecutive skips (0: no cap)
    power_exp: float = 3.0           # exponent of the filter's clean-signal power prior (SeaCache's video value)

    def check(self) -> None:
        self.nonneg("threshold")
        self.require("residual_order", self.residual_order in (0, 1) and not isinstance(self.residual_order, bool),
                     "must be 0 or 1")
        for k in ("retention_steps", "cache_end_steps", "max_consecutive_cached"):
            v = getattr(self, k)
            self.require(k, isinstance(v, int) and not isinstance(v, bool) and v >= 0, "must be an integer >= 0")
        self.require("power_exp", _is_number(self.power_exp) and self.power_exp > 0, "must be a positive number")


@register
class SeaCache(DiffusersHookPolicy):
    name = "seacache"
    config_cls = SeaCachePolicyConfig
    hook_names = (_SEA_CACHE_ROOT_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_BLOCK_HOOK)

    def _apply(self, model) -> None:
        cfg = self.config
        apply_sea_cache(model, SeaCacheConfig(
            threshold=cfg.threshold, residual_order=cfg.residual_order, retention_steps=cfg.retention_steps,
            cache_end_steps=cfg.cache_end_steps, max_consecutive_cached=cfg.max_consecutive_cached,
            power_exp=cfg.power_exp))
        leader = model.transformer_blocks[0]._diffusers_hook.get_hook(_SEA_CACHE_LEADER_BLOCK_HOOK)
        self._shared, self._manager = leader.shared_state, leader.state_manager

    def _before_call(self, model, stack, call: ModelCall) -> None:
        # What SeaCache's root hook does in the model forward our split forward skips (module docstring).
        self._shared.forward_metadata = _SeaCacheForwardMetadata(
            step_index=call.step, sigma=float(call.sigma), num_inference_steps=call.num_steps,
            raw_vision=list(stack.ctx.latents.unbind(0)))

    def run_stack(self, stack, call):
        call.threshold = self.config.threshold
        try:
            return super().run_stack(stack, call)
        finally:
            if self._model is not None:  # what the root hook's post_forward does: hold no tensor of this call
                self._shared.forward_metadata = None
                for st in self._manager._state_cache.values():
                    st.reset_forward()


# --- Pyramid Attention Broadcast ------------------------------------------------------------------------------
@dataclass
class PABPolicyConfig(PolicyConfig):
    spatial_attention_block_skip_range: int = 2  # self-attention: computed every N calls of a branch in its range
    cross_attention_block_skip_range: int = 6    # cross-attention (PAB's broadcast ranges: cross the longest)
    spatial_attention_timestep_skip_range: list = field(default_factory=lambda: [100, 800])  # on 1000*(1-step/N)
    cross_attention_timestep_skip_range: list = field(default_factory=lambda: [100, 800])

    def check(self) -> None:
        for k in ("spatial_attention_block_skip_range", "cross_attention_block_skip_range"):
            v = getattr(self, k)
            self.require(k, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1")
        _check_range(self, "spatial_attention_timestep_skip_range")
        _check_range(self, "cross_attention_timestep_skip_range")


@register
class PAB(AttentionReusePolicy):
    name = "pab"
    config_cls = PABPolicyConfig
    hook_names = (_PYRAMID_ATTENTION_BROADCAST_HOOK,)
    attn_hook, attn_state_cls = _PYRAMID_ATTENTION_BROADCAST_HOOK, PyramidAttentionBroadcastState

    def _apply(self, model) -> None:
        cfg = self.config
        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=cfg.spatial_attention_block_skip_range,
            cross_attention_block_skip_range=cfg.cross_attention_block_skip_range,
            spatial_attention_timestep_skip_range=tuple(cfg.spatial_attention_timestep_skip_range),
            cross_attention_timestep_skip_range=tuple(cfg.cross_attention_timestep_skip_range),
            current_timestep_callback=lambda: self._timestep))
