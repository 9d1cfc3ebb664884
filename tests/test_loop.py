"""The one denoising loop: equal to the plain diffusers model when nothing is cached."""
import math

import numpy as np
import pytest
import torch

from worldcache.cache.base import ModelCall, NoCache
from worldcache.sampler import denoise, default_scheduler
from worldcache.tiny import tiny_inputs


def plain_diffusers_loop(model, noise, cond, emb, num_steps, neg=None, scale=1.0):
    """Cosmos-Predict2.5's pipeline loop written against the unmodified diffusers model."""
    s = default_scheduler()
    s.set_timesteps(num_steps)
    b, _, t, h, w = noise.shape
    ci = torch.zeros(b, 1, t, 1, 1)
    ci[:, :, :1] = 1
    cm = ci.expand(-1, -1, -1, h, w)
    lat, gt = noise, (noise - cond) * cm
    pad = torch.zeros(1, 1, h, w)
    with torch.no_grad():
        for i, tt in enumerate(s.timesteps):
            ts = ci * 1e-4 + (1 - ci) * s.sigmas[i]
            x = cm * cond + (1 - cm) * lat
            v = gt + model(x, ts, emb, condition_mask=cm, padding_mask=pad, return_dict=False)[0] * (1 - cm)
            if neg is not None:
                vn = gt + model(x, ts, neg, condition_mask=cm, padding_mask=pad, return_dict=False)[0] * (1 - cm)
                v = v + scale * (v - vn)
            lat = s.step(v, tt, lat, return_dict=False)[0]
    return cm * cond + (1 - cm) * lat


def test_loop_equals_plain_diffusers(tiny_dit, inputs):
    noise, cond, emb, neg = inputs
    ref = plain_diffusers_loop(tiny_dit.transformer, noise, cond, emb, 8)
    out = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=8, cond_latents=cond, num_cond_frames=1)
    assert torch.allclose(out.latents, ref, atol=1e-6)
    assert out.latents.is_inference()  # the loop runs under inference_mode: no autograd bookkeeping per op
    assert len(out.records) == 8 and all(r.computed for r in out.records)
    assert all(r.blocks_run == 4 for r in out.records)
    # no timing asked for: no measurements (and on a GPU no synchronisation)
    assert all(r.wall_ms != r.wall_ms and r.policy_ms != r.policy_ms for r in out.records)


@pytest.mark.parametrize("mode", ["separate", "batched"])
def test_loop_with_guidance_equals_plain_diffusers(tiny_dit, inputs, mode):
    noise, cond, emb, neg = inputs
    ref = plain_diffusers_loop(tiny_dit.transformer, noise, cond, emb, 6, neg=neg, scale=2.0)
    out = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=6, cond_latents=cond, num_cond_frames=1,
                  negative_encoder_hidden_states=neg, guidance_scale=2.0, guidance=mode)
    assert torch.allclose(out.latents, ref, atol=1e-5)
    branches = [r.branch for r in out.sample_records(0)]
    assert branches == (["cond", "uncond"] * 6 if mode == "separate" else ["batched"] * 6)


def test_conditioning_frames_are_kept(tiny_dit):
    noise, cond, emb, _ = tiny_inputs(batch=2)
    out = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=4, cond_latents=cond, num_cond_frames=1)
    assert torch.equal(out.latents[:, :, :1], cond[:, :, :1])
    assert not torch.allclose(out.latents[:, :, 1:], cond[:, :, 1:])


def test_loop_rejects_bad_arguments(tiny_dit, inputs):
    noise, cond, emb, neg = inputs
    with pytest.raises(ValueError, match="num_steps"):
        denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=0)
    with pytest.raises(ValueError, match="negative_encoder_hidden_states"):
        denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance"):
        denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=2, guidance="both")
    # policies schedule by num_steps (phase, warm-up, the forced last step): sigmas must agree with it
    with pytest.raises(ValueError, match="10 sigmas for num_steps=5"):
        denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=5, sigmas=np.linspace(0.999, 0, 11)[:-1])
    for n in (-1, noise.shape[2]):
        with pytest.raises(ValueError, match="num_cond_frames"):
            denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=2, cond_latents=cond, num_cond_frames=n)


def test_policy_time_excludes_block_forwards(tiny_dit):
    """With `timing`, `CallRecord.policy_ms` is the policy's own time, a part of the call's `wall_ms`; hook policies,
    whose work runs inside the blocks, report NaN. (How large a part is a benchmark's question, not a test's.)"""
    from worldcache.cache import make_policy

    noise, cond, emb, _ = tiny_inputs()
    out = {}
    for name in ("none", "worldcache", "fbcache"):
        policy = make_policy(name)
        try:
            out[name] = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=6, cond_latents=cond,
                                num_cond_frames=1, policy=policy, timing=True).records
        finally:
            policy.detach()  # the DiT is shared by the session's tests
    assert all(0 <= r.policy_ms < r.wall_ms for r in out["none"] + out["worldcache"])
    assert all(r.policy_ms != r.policy_ms for r in out["fbcache"])  # NaN: not measurable from outside the blocks


def test_official_sampling_options_equal_a_plain_loop(tiny_dit, inputs, device):
    """NVIDIA's sampler: sigmas linspace(0.999, 0) shifted by 5s / (1 + 4s), the network sees floor(1000 s) / 1000,
    the conditioning frame gets the noisy frames' timestep."""
    noise, cond, emb, _ = (x.to(device) for x in inputs)
    dit = tiny_dit.to(device)
    n = 5
    sigmas = np.linspace(0.999, 0, n + 1)[:-1]
    s = default_scheduler()
    s.set_timesteps(sigmas=sigmas, device=device)
    np.testing.assert_allclose(s.sigmas[:n].numpy() if device.type == "cpu" else s.sigmas[:n].cpu().numpy(),
                               5 * sigmas / (1 + 4 * sigmas), rtol=1e-6)
    assert float(s.sigmas[0]) == pytest.approx(5 * 0.999 / (1 + 4 * 0.999), rel=1e-6)
    b, _, t, h, w = noise.shape
    cm = torch.zeros(b, 1, t, h, w, device=device)
    cm[:, :, :1] = 1
    lat, gt = noise, (noise - cond) * cm
    seen = []
    with torch.no_grad():
        for i, tt in enumerate(s.timesteps):
            ts = torch.full((b, 1, t, 1, 1), math.floor(1000 * float(s.sigmas[i])) / 1000, device=device)
            seen.append(float(ts[0, 0, 0]))
            v = dit.transformer(cm * cond + (1 - cm) * lat, ts, emb, condition_mask=cm,
                                padding_mask=torch.zeros(1, 1, h, w, device=device), return_dict=False)[0]
            lat = s.step(gt + v * (1 - cm), tt, lat, return_dict=False)[0]
    ref = cm * cond + (1 - cm) * lat
    out = denoise(dit, default_scheduler(), noise, emb, num_steps=n, cond_latents=cond, num_cond_frames=1,
                  cond_frame_timestep=None, sigmas=sigmas, quantise_timestep=True)
    torch.testing.assert_close(out.latents, ref, atol=1e-5, rtol=1e-5)
    # NVIDIA's network timesteps at 5 steps: floor(1000 * 5s / (1 + 4s)) for s = 0.999, 0.7992, 0.5994, 0.3996, 0.1998
    assert [round(1000 * x, 3) for x in seen] == [999, 952, 882, 768, 555]  # (fp32: 999.000013)
    tiny_dit.cpu()


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, -0.5, 1.5])
def test_guidance_is_nvidias_formula_for_any_scale_but_zero(tiny_dit, inputs, scale):
    # NVIDIA's sampler has no gate: v + g (v - v_neg) at g = 0.5 or 1 guides (diffusers' pipeline would not)
    noise, cond, emb, neg = inputs
    out = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=3, cond_latents=cond, num_cond_frames=1,
                  negative_encoder_hidden_states=neg, guidance_scale=scale)
    assert ("uncond" in [r.branch for r in out.records]) == (scale != 0)
    ref = plain_diffusers_loop(tiny_dit.transformer, noise, cond, emb, 3, neg=neg if scale else None, scale=scale)
    assert torch.allclose(out.latents, ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_keep_latents_fp32(inputs, dtype, device, monkeypatch):
    """bf16/fp16 weights: the loop's latents, noise and timesteps stay fp32 (as diffusers' Cosmos 2.5 pipeline).
    Seen where they are used, every step: what the scheduler steps and what the DiT is handed (a bf16 latent would
    come back fp32 at the end by type promotion with the fp32 mask, so the output alone cannot tell)."""
    from diffusers import UniPCMultistepScheduler

    from worldcache.dit import DiT
    from worldcache.tiny import tiny_transformer

    noise, cond, emb, _ = (x.to(device) for x in inputs)
    dit32 = DiT(tiny_transformer(seed=0)).to(device)
    dit = DiT(tiny_transformer(seed=0)).to(device, dtype)
    seen = []
    hook = dit.transformer.patch_embed.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    ref = denoise(dit32, default_scheduler(), noise, emb, num_steps=4, cond_latents=cond, num_cond_frames=1)
    stepped, handed, timesteps = [], [], []
    step = UniPCMultistepScheduler.step

    def spy_step(self, model_output, timestep, sample, *args, **kw):
        stepped.append((model_output.dtype, sample.dtype))
        return step(self, model_output, timestep, sample, *args, **kw)

    embed = dit.embed

    def spy_embed(**kw):
        handed.append((kw["hidden_states"].dtype, kw["timestep"].dtype))
        timesteps.append(kw["timestep"].cpu())
        return embed(**kw)

    monkeypatch.setattr(UniPCMultistepScheduler, "step", spy_step)
    monkeypatch.setattr(dit, "embed", spy_embed)
    out = denoise(dit, default_scheduler(), noise, emb.to(dtype), num_steps=4, cond_latents=cond, num_cond_frames=1)
    hook.remove()
    assert stepped == [(torch.float32, torch.float32)] * 4 and handed == [(torch.float32, torch.float32)] * 4
    sched = default_scheduler()
    sched.set_timesteps(4)
    for ts, sigma in zip(timesteps, sched.sigmas[:4]):  # the fp32 sigmas themselves, not rounded to the weights'
        assert torch.equal(ts[:, :, 1:], torch.full_like(ts[:, :, 1:], float(sigma)))
        assert torch.equal(ts[:, :, :1], torch.full_like(ts[:, :, :1], 1e-4))
    assert out.latents.dtype == torch.float32 and set(seen) == {dtype}
    assert (out.latents - ref.latents).abs().mean() < 0.05 * ref.latents.abs().mean()


def test_adaln_modulation_runs_per_frame_and_equals_the_per_token_one(tiny_dit):
    """diffusers expands per-frame timestep embeddings to every token; `FrameModulation` computes the adaLN-LoRA
    linears once per latent frame instead (T rows, not T·H·W) and broadcasts: the same output."""
    noise, cond, emb, _ = tiny_inputs(batch=2)
    b, _, t, h, w = noise.shape
    cm = torch.zeros(b, 1, t, h, w)
    cm[:, :, :1] = 1
    ts = torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.7, 0.1]]).view(b, 1, t, 1, 1)  # every frame and sample differs
    x = torch.cat([cond[:, :, :1], noise[:, :, 1:]], 2)
    rows = []
    lin = tiny_dit.transformer.transformer_blocks[0].norm1.linear_1
    handle = lin.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:-1]))
    try:
        with torch.no_grad():
            ours = tiny_dit(NoCache(), ModelCall.new(b, step=0, num_steps=1, branch="cond", sigma=0.5),
                            hidden_states=x, timestep=ts, encoder_hidden_states=emb, condition_mask=cm)
            theirs = tiny_dit.transformer(x, ts, emb, condition_mask=cm, padding_mask=torch.zeros(1, 1, h, w),
                                          return_dict=False)[0]
    finally:
        handle.remove()
    tokens = t * (h // 2) * (w // 2)
    assert rows == [(b, t, 1), (b, tokens)]  # ours: one row per frame; diffusers' own forward: one per token
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
