"""The denoising loop: the only one in the codebase. Cosmos-Predict2.5 video2world flow matching.

Conditioning frames are held clean (their velocity is replaced by the ground-truth one; their timestep is tiny, or
the noisy frames' one), the rest is denoised from noise; classifier-free guidance is off, two calls per step
("cond"/"uncond"), or one batched call ("batched"). Every model call goes through `DiT.forward` with the cache policy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache.base import CachePolicy, CallRecord, ModelCall, NoCache, release_hooks
from .dit import DiT, sync

GUIDANCE_MODES = ("separate", "batched")


@dataclass
class SampleOutput:
    latents: torch.Tensor
    records: list[CallRecord] = field(default_factory=list)  # per model call, one record per sample (in order)

    @property
    def computed_fraction(self) -> float:
        """Computed (sample, model call) pairs over all of them."""
        return sum(r.computed for r in self.records) / max(len(self.records), 1)

    def sample_records(self, sample: int) -> list[CallRecord]:
        """The records of one row of the model calls' batch, one per call. With batched guidance a call's batch is
        2B: row B + s is sample s's unconditional half (a branch of its own state), so sample s is rows s and
        B + s."""
        return [r for r in self.records if r.sample == sample]

    @property
    def loop_ms(self) -> float:
        """Wall time of the model calls (each batched call counted once)."""
        return sum(r.wall_ms for r in self.sample_records(0))


@torch.inference_mode()  # not just no_grad: it skips autograd's per-op bookkeeping too (~5 % of an eager call)
def denoise(dit: DiT, scheduler, noise: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
            num_steps: int, policy: CachePolicy | None = None, cond_latents: torch.Tensor | None = None,
            num_cond_frames: int = 0, negative_encoder_hidden_states: torch.Tensor | None = None,
            guidance_scale: float = 0.0, guidance: str = "separate", frame_cond: torch.Tensor | None = None,
            cond_frame_timestep: float | None = 1e-4, fps: int | None = None, sigmas=None,
            quantise_timestep: bool = False, timing: bool = False) -> SampleOutput:
    """Denoise `noise` (B, C, T, H, W) in `num_steps` steps; the first `num_cond_frames` latent frames are
    taken from `cond_latents` and kept clean. Returns the final latents and one `CallRecord` per model call.

    `cond_frame_timestep`: the conditioning frames' timestep (None: the noisy frames' one, as NVIDIA's 2.5 action
    model). `sigmas`: unshifted numpy sigmas for the scheduler (None: its own). `quantise_timestep`: the network sees
    floor(1000 sigma) / 1000, as NVIDIA's sampler. Latents, noise, timesteps and the scheduler stay fp32 whatever
    the weights' dtype, as diffusers' Cosmos 2.5 pipeline keeps them.

    `timing`: measure each call's wall time (`wall_ms`, `policy_ms`). On a GPU that synchronises several times per
    call, so it is off unless asked for (benchmarks); without it those fields stay NaN."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {guidance!r}")
    # NVIDIA's sampler applies v + g (v - v_neg) for any g (g = 0: the conditional velocity alone), where
    # diffusers' Cosmos pipeline skips guidance up to g = 1; so only g = 0 saves the unconditional call here
    use_cfg = guidance_scale != 0.0
    if use_cfg and negative_encoder_hidden_states is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs negative_encoder_hidden_states (0: no guidance)")
    policy = policy or NoCache()
    scheduler = type(scheduler).from_config(scheduler.config)  # multistep solvers keep state: fresh per call
    scheduler.set_timesteps(None if sigmas is not None else num_steps, device=noise.device, sigmas=sigmas)
    if len(scheduler.timesteps) != num_steps:  # policies schedule by num_steps (phase, warm-up, the forced last step)
        raise ValueError(f"{len(scheduler.timesteps)} sigmas for num_steps={num_steps}: give one sigma per step")
    b, _, t, hh, ww = noise.shape
    if not 0 <= num_cond_frames < t:
        raise ValueError(f"num_cond_frames={num_cond_frames}: must be in [0, {t}) for {t} latent frames")
    release_hooks(dit.transformer, keep=policy)
    policy.begin(num_steps)

    noise = noise.float()
    cond_indicator = torch.zeros(b, 1, t, 1, 1, device=noise.device)
    cond_indicator[:, :, :num_cond_frames] = 1.0
    cond_mask = cond_indicator.expand(-1, -1, -1, hh, ww)
    cond_latents = torch.zeros_like(noise) if cond_latents is None else cond_latents.float()
    latents = noise * scheduler.init_noise_sigma  # 1 for flow-matching UniPC; NVIDIA's Predict2 starts at 80/81
    gt_velocity = (latents - cond_latents) * cond_mask
    records: list[CallRecord] = []

    def call(x, ts, emb, mask, fc, branch, step, sigma):
        rec = ModelCall.new(len(x), step=step, num_steps=num_steps, branch=branch, sigma=sigma)
        if timing:
            sync(noise.device)
            start = time.perf_counter()
        v = dit(policy, rec, timing, hidden_states=x, timestep=ts, encoder_hidden_states=emb, condition_mask=mask,
                fps=fps, frame_cond=fc)
        if timing:
            sync(noise.device)
            rec.wall_ms = (time.perf_counter() - start) * 1e3
        records.extend(rec)
        return v

    for i, tt in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(device=noise.device, dtype=torch.float32)
        net_t = torch.floor(sigma * 1000) / 1000 if quantise_timestep else sigma
        in_t = (net_t.expand_as(cond_indicator) if cond_frame_timestep is None
                else cond_indicator * cond_frame_timestep + (1 - cond_indicator) * net_t)
        in_x = cond_mask * cond_latents + (1 - cond_mask) * latents
        s = float(sigma)
        if use_cfg and guidance == "batched":
            both = call(torch.cat([in_x, in_x]), torch.cat([in_t, in_t]),
                        torch.cat([encoder_hidden_states, negative_encoder_hidden_states]),
                        torch.cat([cond_mask, cond_mask]),
                        None if frame_cond is None else torch.cat([frame_cond, frame_cond]), "batched", i, s)
            v, v_neg = both.chunk(2)
        else:
            v = call(in_x, in_t, encoder_hidden_states, cond_mask, frame_cond, "cond", i, s)
            v_neg = (call(in_x, in_t, negative_encoder_hidden_states, cond_mask, frame_cond, "uncond", i, s)
                     if use_cfg else None)
        v = gt_velocity + v.float() * (1 - cond_mask)
        if v_neg is not None:
            v_neg = gt_velocity + v_neg.float() * (1 - cond_mask)
            v = v + guidance_scale * (v - v_neg)
        latents = scheduler.step(v, tt, latents, return_dict=False)[0]
    return SampleOutput(latents=cond_mask * cond_latents + (1 - cond_mask) * latents, records=records)


def default_scheduler(flow_shift: float = 5.0):
    """Cosmos-Predict2.5's sampler: UniPC on flow-matching sigmas (what its diffusers pipeline ships)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
