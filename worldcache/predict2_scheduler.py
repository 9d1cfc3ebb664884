"""NVIDIA's Cosmos-Predict2 sampler (`RectifiedFlowAB2Scheduler`, cosmos-predict2) as a diffusers scheduler that
steps in the flow-matching space our denoising loop works in.

NVIDIA samples Predict2 in EDM space: x = σ_max·ε, then at each of the Karras noise levels σ_0 = 80 > ... > σ_N =
0.002 (ρ 7) the network's x0 prediction moves x on, first by an Euler step in x0 form and then by a two-step
exponential Adams-Bashforth step in λ = −log σ; a last network call at σ_min gives the clean sample (N + 1 calls).
The network sees x_flow = x / (1 + σ) and t = σ / (1 + σ), and x0 = x_flow − t·v for its velocity output v
(RectifiedFlowScaling: c_in = 1 − t, c_skip = 1 − t, c_out = −t), so the same steps can be taken on x_flow:
`num_inference_steps` counts the network calls, N + 1 (NVIDIA's default: 35 steps, 36 calls). diffusers has no
such scheduler (its Cosmos 2 pipeline runs a first-order Euler on these sigmas).
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput


class RectifiedFlowAB2Scheduler(SchedulerMixin, ConfigMixin):
    """`step(v, t, x_flow)` takes the network's velocity at the current level; the last call returns x0."""

    order = 1  # one network call per step (the second order comes from the previous call's x0)

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.edm_sigmas: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None

    @property
    def init_noise_sigma(self) -> float:
        """x_flow at σ_max for NVIDIA's start x = σ_max·ε."""
        return self.config.sigma_max / (1 + self.config.sigma_max)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        if sigmas is not None or num_inference_steps is None or num_inference_steps < 2:
            raise ValueError("RectifiedFlowAB2Scheduler makes its own Karras sigmas: pass num_inference_steps >= 2 "
                             "(network calls: solver steps + the final clean pass)")
        c = self.config
        i = torch.arange(num_inference_steps, dtype=torch.float64)  # NVIDIA's ramp, in float64 as its scheduler
        ramp = c.sigma_max ** (1 / c.rho) + i / (num_inference_steps - 1) * (c.sigma_min ** (1 / c.rho)
                                                                           - c.sigma_max ** (1 / c.rho))
        self.edm_sigmas = ramp ** c.rho
        flow = self.edm_sigmas / (1 + self.edm_sigmas)
        self.sigmas = torch.cat([flow, flow.new_zeros(1)]).float().to(device)  # the level of each call, then 0
        self.timesteps = (flow * 1000).float().to(device)
        self.num_inference_steps = num_inference_steps
        self._step, self._x0_prev = 0, None
        return self.timesteps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = False, **_):
        i, s = self._step, self.edm_sigmas
        t = s[i] / (1 + s[i])
        x0 = sample.double() - t * model_output.double()
        if i == len(s) - 1:  # the final clean pass at sigma_min
            out = x0
        else:
            x = sample.double() * (1 + s[i])  # EDM space
            if self._x0_prev is None:  # NVIDIA's reg_x0_euler_step
                x_next = (s[i] - s[i + 1]) / s[i] * x0 + s[i + 1] / s[i] * x
            else:  # NVIDIA's res_x0_rk2_step with the previous level's x0
                lam, lam_next, lam_prev = -torch.log(s[i]), -torch.log(s[i + 1]), -torch.log(s[i - 1])
                h = lam_next - lam
                c2 = (lam_prev - lam) / h
                phi1 = torch.expm1(-h) / -h
                phi2 = (phi1 - 1) / -h
                b1, b2 = phi1 - phi2 / c2, phi2 / c2
                x_next = torch.exp(-h) * x + h * (b1 * x0 + b2 * self._x0_prev)
            out = x_next / (1 + s[i + 1])
        self._x0_prev, self._step = x0, i + 1
        out = out.to(sample.dtype)
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)
