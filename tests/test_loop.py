"""The one denoising loop: equal to the plain diffusers model when nothing is cached."""
import pytest
import torch

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
    assert len(out.records) == 8 and all(r.computed for r in out.records)
    assert all(r.blocks_run == 4 and r.wall_ms > 0 for r in out.records)


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


def test_policy_time_excludes_block_forwards(tiny_dit):
    """`CallRecord.policy_ms` is the policy's own time: for the uncached policy (whose run_stack only runs the blocks)
    it is a small part of the call; hook policies, whose work runs inside the blocks, report NaN."""
    from worldcache.cache import make_policy

    noise, cond, emb, _ = tiny_inputs()
    out = {}
    for name in ("none", "worldcache", "fbcache"):
        policy = make_policy(name)
        try:
            out[name] = denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=6, cond_latents=cond,
                                num_cond_frames=1, policy=policy).records
        finally:
            policy.detach()  # the DiT is shared by the session's tests
    assert all(0 <= r.policy_ms < 0.25 * r.wall_ms for r in out["none"])
    assert all(0 <= r.policy_ms < r.wall_ms for r in out["worldcache"])
    assert all(r.policy_ms != r.policy_ms for r in out["fbcache"])  # NaN: not measurable from outside the blocks
