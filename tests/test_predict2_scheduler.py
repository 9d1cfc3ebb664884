"""NVIDIA's Predict2 sampler in flow space equals NVIDIA's EDM-space loop, written out here from cosmos-predict2
(`RectifiedFlowAB2Scheduler.set_timesteps/step`, `reg_x0_euler_step`, `res_x0_rk2_step`, the final clean pass,
`RectifiedFlowScaling`, frame replacement of the conditioning frame at sigma 1e-4)."""
import math

import pytest
import torch

from worldcache.predict2_scheduler import RectifiedFlowAB2Scheduler
from worldcache.sampler import denoise

COND_T = 1e-4 / (1 + 1e-4)


def nvidia_sigmas(n_calls: int) -> torch.Tensor:
    i = torch.arange(n_calls, dtype=torch.float64)
    ramp = 80 ** (1 / 7) + i / (n_calls - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))
    return ramp ** 7


def nvidia_loop(x0_fn, noise: torch.Tensor, n_calls: int) -> torch.Tensor:
    """cosmos-predict2's loop: x = sigma_max eps; Euler in x0 form, then 2-AB in -log sigma; x0 at sigma_min."""
    s = nvidia_sigmas(n_calls)
    x, x0_prev = 80.0 * noise.double(), None
    for i in range(n_calls - 1):
        x0 = x0_fn(x, s[i])
        if x0_prev is None:
            x = (s[i] - s[i + 1]) / s[i] * x0 + s[i + 1] / s[i] * x
        else:
            lt, ls, lm = -math.log(s[i + 1]), -math.log(s[i]), -math.log(s[i - 1])
            dt = lt - ls
            c2 = (lm - ls) / dt
            phi1 = math.expm1(-dt) / -dt
            phi2 = (phi1 - 1.0) / -dt
            x = math.exp(-dt) * x + dt * ((phi1 - phi2 / c2) * x0 + phi2 / c2 * x0_prev)
        x0_prev = x0
    return x0_fn(x, s[-1])


def test_sigmas_are_nvidias_karras_ramp_seen_as_t_over_one_plus_t():
    sch = RectifiedFlowAB2Scheduler()
    sch.set_timesteps(3)
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # 2.5488...
    torch.testing.assert_close(sch.edm_sigmas, torch.tensor([80.0, mid, 0.002], dtype=torch.float64))
    torch.testing.assert_close(sch.sigmas, torch.tensor([80 / 81, mid / (1 + mid), 0.002 / 1.002, 0.0]))
    assert sch.init_noise_sigma == 80 / 81
    sch.set_timesteps(36)  # NVIDIA's default: 35 steps + the clean pass
    torch.testing.assert_close(sch.edm_sigmas, nvidia_sigmas(36), rtol=0, atol=0)
    for bad in (dict(num_inference_steps=1), dict(num_inference_steps=None, sigmas=[0.5, 0.1])):
        with pytest.raises(ValueError, match="Karras"):
            sch.set_timesteps(**bad)


@pytest.mark.parametrize("n_calls", [2, 3, 8, 36])
def test_steps_in_flow_space_equal_nvidias_edm_loop(n_calls):
    # any network, seen as x0 = f(x_flow, t) (EDM: f(x / (1 + sigma), sigma / (1 + sigma))); ours gets v = (x - x0) / t
    g = torch.Generator().manual_seed(0)
    noise, a = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)

    def f(x_flow, t):
        return torch.tanh(x_flow) * (1 - t) + a * t

    want = nvidia_loop(lambda x, s: f(x / (1 + s), s / (1 + s)), noise, n_calls)
    sch = RectifiedFlowAB2Scheduler()
    sch.set_timesteps(n_calls)
    x = noise * sch.init_noise_sigma
    for i, tt in enumerate(sch.timesteps):
        t = sch.edm_sigmas[i] / (1 + sch.edm_sigmas[i])
        x = sch.step((x - f(x, t)) / t, tt, x)[0]
    torch.testing.assert_close(x, want, rtol=1e-12, atol=1e-12)


def test_denoise_with_it_equals_nvidias_video2world_loop(tiny_dit, inputs):
    """The whole loop on a tiny Cosmos DiT against NVIDIA's: the network sees c_in x and t = sigma / (1 + sigma),
    x0 = c_skip x + c_out F, the conditioning frame clean at t(1e-4) and its x0 replaced by the ground truth."""
    noise, cond, emb, _ = inputs
    model = tiny_dit.transformer
    b, _, t, h, w = noise.shape
    ci = torch.zeros(b, 1, t, 1, 1)
    ci[:, :, :1] = 1
    cm = ci.expand(-1, -1, -1, h, w)
    pad = torch.zeros(1, 1, h, w)

    def x0_fn(x, sigma):
        tt = sigma / (1 + sigma)
        inp = cm * cond + (1 - cm) * (x / (1 + sigma)).float()
        ts = (ci * COND_T + (1 - ci) * float(tt)).float()
        with torch.no_grad():
            out = model(inp, ts, emb, condition_mask=cm, padding_mask=pad, return_dict=False)[0].double()
        x0 = (1 - tt) * x - tt * out
        return cm * cond + (1 - cm) * x0  # frame replacement

    want = nvidia_loop(x0_fn, noise, 6)
    got = denoise(tiny_dit, RectifiedFlowAB2Scheduler(), noise, emb, num_steps=6, cond_latents=cond,
                  num_cond_frames=1, cond_frame_timestep=COND_T)
    torch.testing.assert_close(got.latents.double(), want, rtol=1e-4, atol=1e-4)
    assert len(got.records) == 6
