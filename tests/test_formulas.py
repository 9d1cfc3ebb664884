"""Each cache formula pinned to exact values on hand-made tensors (a scripted block stack), so a changed formula
fails here even where it would still point in the right direction."""
from __future__ import annotations

import pytest
import torch

from worldcache.cache import make_policy
from worldcache.cache.base import ModelCall
from worldcache.cache.base import CallRecord
from worldcache.cache.probe import ProbeEngine, ProbeState, lagrange_weights
from worldcache.cache.worldcache import spread

OFF = dict(motion_adaptive=False, saliency=False, blend=False, warp=False, phase_aware=False,
           extrapolation="probe")  # the method's line; the parabola is tested on its own


class ScriptedStack:
    """A block stack whose probe block adds `probe` and whose remaining blocks add `rest` to their input."""

    num_blocks = 4

    def __init__(self, x, probe=None, rest=None, mod=None):
        self.x = torch.as_tensor(x, dtype=torch.float64)
        self.probe = torch.zeros_like(self.x) if probe is None else torch.as_tensor(probe, dtype=torch.float64)
        self.rest = torch.zeros_like(self.x) if rest is None else torch.as_tensor(rest, dtype=torch.float64)
        self.mod = mod
        self.ctx = type("Ctx", (), {"grid": (1, 1, self.x.shape[1]), "cond_frames": 0})()
        self.blocks_run = 0

    def __call__(self, h, start=0, end=None):
        end = self.num_blocks if end is None else end
        self.blocks_run += end - start
        return h + (self.probe if start == 0 else 0) + (self.rest if end > 1 else 0)

    def modulated_input(self):
        return torch.as_tensor(self.mod, dtype=torch.float64)


def tokens(*values):
    """(1, N, 1): one sample, N tokens, one channel."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1)


def drive(policy, stacks, num_steps, sigmas=None):
    policy.begin(num_steps)
    records, outs = [], []
    for step, stack in enumerate(stacks):
        sigma = float("nan") if sigmas is None else sigmas[step]
        call = ModelCall.new(1, step=step, num_steps=num_steps, branch="cond", sigma=sigma)  # one sample
        outs.append(policy.run_stack(stack, call))
        records.append(call[0])
    return records, outs


@pytest.mark.parametrize("phase_aware, step_factor", [(False, 1.0), (True, 1 + 4.0 * 1 / 10)])
def test_motion_adaptive_threshold_is_tau_over_one_plus_alpha_v(phase_aware, step_factor):
    # v = mean|x1 - x0| / mean|x0| = 0.25 / 1 = 0.25; tau_dyn = 0.16 * phase / (1 + 5 * 0.25)
    p = make_policy("worldcache", threshold=0.16, ret_ratio=0.0, alpha=5.0,
                    **{**OFF, "motion_adaptive": True, "phase_aware": phase_aware})
    recs, _ = drive(p, [ScriptedStack(tokens(1, 1, 1, 1)), ScriptedStack(tokens(1.25, 1.25, 1.25, 1.25))], 10)
    assert recs[1].motion == pytest.approx(0.25, abs=1e-12)
    assert recs[1].threshold == pytest.approx(0.16 * step_factor / (1 + 5.0 * 0.25), abs=1e-12)


def test_motion_is_measured_against_the_previous_call_not_the_last_computed_one():
    # call 0 computes, calls 1 and 2 skip (threshold 100): call 2's v = mean|x2 - x1| / mean|x1| = 0.25 / 1.25
    # (against the last computed input x0 it would be 0.5)
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, alpha=5.0, **{**OFF, "motion_adaptive": True})
    recs, _ = drive(p, [ScriptedStack(tokens(*[v] * 4)) for v in (1.0, 1.25, 1.5)], 10)
    assert [r.computed for r in recs] == [True, False, False]
    assert recs[2].motion == pytest.approx(0.2, abs=1e-12)
    assert recs[2].threshold == pytest.approx(100 / (1 + 5.0 * 0.2), abs=1e-12)


def test_dicache_drift_is_relative_to_the_previous_probe_output_and_accumulates():
    # probe outputs 1 then 1.25 on every token: mean|p - p_prev| / mean|p_prev| = 0.25 / 1 (not 0.25 / 1.25)
    p = make_policy("dicache", threshold=1e9, ret_ratio=0.0)
    recs, _ = drive(p, [ScriptedStack(tokens(*[v] * 4)) for v in (1.0, 1.25, 1.5)], 10)
    assert [r.computed for r in recs] == [True, False, False]
    assert recs[1].drift == pytest.approx(0.25, abs=1e-12) and recs[1].threshold == 1e9
    # the second skip adds its own drift 0.25 / 1.25 = 0.2 to the 0.25 kept (0.2 alone if nothing accumulated)
    assert recs[2].drift == pytest.approx(0.25 + 0.2, abs=1e-12)


def test_saliency_weights_are_one_plus_beta_minmax_std():
    # previous probe output p_prev = x0 (a zero probe residual): tokens with channels (1, 1), (0, 2), (0, 4)
    # per-token std over channels 0, sqrt2, 2 sqrt2 -> min-max normalised 0, 0.5, 1 -> w = 1 + 5 s = 1, 3.5, 6.
    # The step (0, 2), (2, 2), (3, 3) gives x1 the stds sqrt2, sqrt2, 2 sqrt2 (w 1, 1, 6 if read off the current
    # probe) and per-token changes 1, 2, 3 (a mean weight instead of per-token ones gives 3.5 * 2 / (8 / 6) = 5.25)
    x0 = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [0.0, 4.0]]], dtype=torch.float64)
    x1 = x0 + torch.tensor([[[0.0, 2.0], [2.0, 2.0], [3.0, 3.0]]], dtype=torch.float64)
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, beta=5.0, **{**OFF, "saliency": True})
    recs, _ = drive(p, [ScriptedStack(x0), ScriptedStack(x1)], 10)
    assert recs[1].saliency == pytest.approx((1 + 3.5 + 6) / 3, abs=1e-12)
    # drift = mean_tokens(w * mean_channels|p - p_prev|) / mean|p_prev| = (1 * 1 + 3.5 * 2 + 6 * 3) / 3 / (8 / 6)
    assert recs[1].drift == pytest.approx(26 / 3 / (8 / 6), abs=1e-12)


def test_spread_is_the_bessel_corrected_std_over_the_last_dimension():
    # (1, 2, 3, 4): squares about the mean 2.5 sum to 5, over n - 1 = 3
    assert spread(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)).item() == pytest.approx((5 / 3) ** 0.5,
                                                                                                      abs=1e-15)
    x = torch.randn(2, 360, 128, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.testing.assert_close(spread(x), x.std(dim=-1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("over, weights", [("token", [1, 6, 1, 1]), ("location", [1, 6, 1, 6])])
def test_saliency_over_tokens_or_spatial_locations(over, weights):
    # 2 latent frames x 2 locations, 2 channels, tokens frame-major: f0 (0,0) (0,6), f1 (1,1) (0,0).
    # token: std over channels 0, 3 sqrt2, 0, 0 -> 0, 1, 0, 0. location (the research code's): std over frames x
    # channels, loc0 (0,0,1,1): sqrt(1/3), loc1 (0,6,0,0): 3 -> 0, 1, shared by both frames' tokens (frame-major:
    # w = 1, 6, 1, 6). Read per frame instead of per location (no transpose) the weights would be 6, 1, 6, 1; spread
    # location-major (repeat_interleave) 1, 1, 6, 6.
    x0 = torch.tensor([[[0.0, 0.0], [0.0, 6.0], [1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    change = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1)  # per token, both channels
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, beta=5.0,
                    **{**OFF, "saliency": True, "saliency_over": over})
    stacks = [ScriptedStack(x0), ScriptedStack(x0 + change)]
    for st in stacks:
        st.ctx.grid = (2, 1, 2)
    recs, _ = drive(p, stacks, 10)
    assert recs[1].saliency == pytest.approx(sum(weights) / 4, abs=1e-12)
    # drift = mean_tokens(w * |change|) / mean|p_prev|, mean|p_prev| = 8 / 8 = 1: token 20 / 4, location 40 / 4
    drift = sum(w * d for w, d in zip(weights, (1, 2, 3, 4))) / 4
    assert drift == {"token": 5.0, "location": 10.0}[over]
    assert recs[1].drift == pytest.approx(drift, abs=1e-12)
    with pytest.raises(ValueError, match="saliency_over"):
        make_policy("worldcache", saliency_over="frame")


@pytest.mark.parametrize("generated_only, drift", [(False, 5.25 / 3), (True, 0.5 / 1)])
def test_generated_only_leaves_the_conditioning_frame_out_of_drift_and_motion(generated_only, drift):
    # grid (2, 1, 2), frame 0 conditioning: its tokens (5, 5) move by 10, the generated frame's (1, 1) by 0.5.
    # All tokens: mean|dx| / mean|x0| = (4 * 10 + 4 * 0.5) / 8 / ((4 * 5 + 4 * 1) / 8) = 5.25 / 3; generated: 0.5 / 1
    x0 = torch.tensor([[[5.0, 5.0], [5.0, 5.0], [1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    x1 = x0 + torch.tensor([[[10.0], [10.0], [0.5], [0.5]]], dtype=torch.float64)
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, **{**OFF, "generated_only": generated_only})
    stacks = [ScriptedStack(x0), ScriptedStack(x1)]
    for st in stacks:
        st.ctx.grid, st.ctx.cond_frames = (2, 1, 2), 1
    recs, _ = drive(p, stacks, 10)
    assert recs[1].drift == pytest.approx(drift, abs=1e-12)  # the probe adds nothing: drift = rel. L1 of inputs
    assert recs[1].motion == pytest.approx(drift, abs=1e-12)


def veto_stacks(frames: int):
    """Each frame's tokens (0, 1, 0, 1) on a 1 x 4 grid; the next call adds (0, d, 0, 0) per frame, d = 5 on the
    conditioning frame (when there are 2 frames) and 0.5 on the generated one. The Laplacian with replicate padding
    of (0, 1, 0, 1) is (1, -2, 2, -1), mean |.| 1.5; of (0, d, 0, 0) it is (d, -2d, d, 0), mean |.| d."""
    x0 = torch.tensor([0.0, 1, 0, 1] * frames, dtype=torch.float64).view(1, -1, 1)
    step = torch.tensor(([0.0, 5, 0, 0] if frames == 2 else []) + [0.0, 0.5, 0, 0], dtype=torch.float64)
    stacks = [ScriptedStack(x0), ScriptedStack(x0 + step.view(1, -1, 1))]
    for st in stacks:
        st.ctx.grid, st.ctx.cond_frames = (frames, 1, 4), frames - 1
    return stacks


@pytest.mark.parametrize("margin, computed", [(1e-9, False), (-1e-9, True)])
def test_hf_veto_is_the_laplacians_relative_l1(margin, computed):
    # the generated frame's Laplacian drifts by 0.5 / 1.5 = 1/3: a threshold just above lets the call skip
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, **OFF, hf_veto=True, hf_threshold=1 / 3 + margin)
    recs, _ = drive(p, veto_stacks(1), 10)
    assert recs[1].computed is computed


@pytest.mark.parametrize("generated_only, computed", [(False, True), (True, False)])
def test_hf_veto_reads_the_tokens_the_drift_reads(generated_only, computed):
    # all tokens: (5 + 0.5) / (1.5 + 1.5) = 1.83 > 0.5, vetoed; generated frame only: 1/3 < 0.5, skips
    p = make_policy("worldcache", threshold=100.0, ret_ratio=0.0, **OFF, hf_veto=True, hf_threshold=0.5,
                    generated_only=generated_only)
    recs, _ = drive(p, veto_stacks(2), 10)
    assert recs[1].computed is computed


def test_drift_accumulates_over_consecutive_skips_and_resets_when_a_call_computes():
    # probe outputs p_k = 1 + 0.1 k on every token (x = 1, probe residual 0.1 k): each call's drift is
    # 0.1 / (1 + 0.1 (k - 1)). Calls 1-3 skip while the sum stays below 0.3; call 4 takes it to 0.351 and
    # computes; call 5 starts again from its own drift alone.
    x = tokens(1, 1, 1, 1)
    stacks = [ScriptedStack(x, torch.full_like(x, 0.1 * k)) for k in range(6)]
    recs, _ = drive(make_policy("worldcache", threshold=0.3, ret_ratio=0.0, **OFF), stacks, 10)
    assert [r.computed for r in recs] == [True, False, False, False, True, False]
    acc = [0.1, 0.1 + 1 / 11, 0.1 + 1 / 11 + 1 / 12, 0.1 + 1 / 11 + 1 / 12 + 1 / 13, 1 / 14]
    assert [r.drift for r in recs[1:]] == pytest.approx(acc, abs=1e-12)
    assert recs[0].drift != recs[0].drift  # NaN: the first call has nothing to drift from


@pytest.mark.parametrize("threshold, computed", [(0.25, True), (0.25 + 1e-9, False)])
def test_a_call_skips_only_when_its_drift_is_strictly_below_the_threshold(threshold, computed):
    x = tokens(1, 1)  # p_0 = 1, p_1 = 1.25: drift 0.25 exactly in binary
    stacks = [ScriptedStack(x), ScriptedStack(x, torch.full_like(x, 0.25))]
    recs, _ = drive(make_policy("worldcache", threshold=threshold, ret_ratio=0.0, **OFF), stacks, 10)
    assert recs[1].drift == 0.25 and recs[1].computed is computed


@pytest.mark.parametrize("ret_ratio, num_steps, warmup", [
    (0.2, 35, 7), (0.1, 35, 4), (0.1, 25, 3), (0.1, 15, 2), (0.1, 5, 1), (0.1, 24, 2), (0.2, 12, 2), (0.0, 35, 0)])
def test_warmup_is_ret_ratio_times_steps_rounded_half_up(ret_ratio, num_steps, warmup):
    from worldcache.cache.base import in_warmup
    assert [in_warmup(CallRecord(step=s, num_steps=num_steps, branch="cond"), ret_ratio)
            for s in range(num_steps)] == [s < warmup for s in range(num_steps)]


def three_calls(policy, rho_2=(2, 1, 3, 0)):
    """Calls 0 and 1 compute (warm-up 2 of 10 steps), call 2 skips (a huge threshold): probe residuals
    rho_0 = 0, rho_1 = (1, 2, 0, 1), rho_2 = (2, 1, 3, 0); stack residuals R_0 = 0 + 1, R_1 = rho_1 + 3."""
    x = tokens(1, 1, 1, 1)
    stacks = [ScriptedStack(x, tokens(0, 0, 0, 0), tokens(1, 1, 1, 1)),
              ScriptedStack(x, tokens(1, 2, 0, 1), tokens(3, 3, 3, 3)),
              ScriptedStack(x, tokens(*rho_2), tokens(9, 9, 9, 9))]
    recs, outs = drive(policy, stacks, 10)
    assert [r.computed for r in recs] == [True, True, False]
    r0, r1 = tokens(1, 1, 1, 1), tokens(4, 5, 3, 4)
    return recs[2].gamma, outs[2], x + r0 + recs[2].gamma * (r1 - r0)


def test_least_squares_gamma_is_inner_product_ratio():
    # a = rho_2 - rho_0 = (2, 1, 3, 0), b = rho_1 - rho_0 = (1, 2, 0, 1): <a,b>/<b,b> = 4 / 6
    policy = make_policy("worldcache", threshold=1e9, ret_ratio=0.2, **{**OFF, "blend": True})
    gamma, out, expected = three_calls(policy)
    assert gamma == pytest.approx(4 / 6, abs=1e-12)
    torch.testing.assert_close(out, expected)


def test_least_squares_gamma_is_clamped():
    gamma, _, _ = three_calls(make_policy("worldcache", threshold=1e9, ret_ratio=0.2, gamma_max=0.5,
                                          **{**OFF, "blend": True}))
    assert gamma == 0.5
    # the default lower bound: rho_2 = (0, 0, 0, 0.1) gives <a,b>/<b,b> = 0.1 / 6, clamped up to 0.2
    gamma, out, expected = three_calls(make_policy("worldcache", threshold=1e9, ret_ratio=0.2,
                                                   **{**OFF, "blend": True}), rho_2=(0, 0, 0, 0.1))
    assert gamma == pytest.approx(0.2, abs=1e-12)
    torch.testing.assert_close(out, expected)


def test_dicache_gamma_is_the_ratio_of_l1_means_clipped_to_1_2():
    # DiCache's official form: mean|a| / mean|b| = 1.5 / 1 (the L2 ratio would give sqrt(14 / 6) = 1.528)
    gamma, out, expected = three_calls(make_policy("dicache", threshold=1e9, ret_ratio=0.2))
    assert gamma == pytest.approx(1.5, abs=1e-12)
    torch.testing.assert_close(out, expected)
    # clipped: mean|a| = 0.25 -> 1, mean|a| = 3 -> 2 (mean|b| = 1)
    for rho_2, clipped in [((0.5, 0.5, 0, 0), 1.0), ((4, 4, 4, 0), 2.0)]:
        gamma, out, expected = three_calls(make_policy("dicache", threshold=1e9, ret_ratio=0.2), rho_2=rho_2)
        assert gamma == clipped
        torch.testing.assert_close(out, expected)


def test_probe_residual_is_extrapolated_only_when_asked_and_with_the_same_weights():
    # residuals R = (1, 2), (3, 6); probe residuals rho = (0, 0), (1, 1); rho now (2, 2): least-squares gamma 2
    st = ProbeState(residuals=[tokens(1, 2), tokens(3, 6)], probe_residuals=[tokens(0, 0), tokens(1, 1)],
                    steps=[0, 1], sigmas=[1.0, 0.5])
    rec = CallRecord(step=2, num_steps=10, branch="cond", sigma=0.25)
    args = (st, tokens(2, 2), rec, True, 0.2, 3.0)
    torch.testing.assert_close(ProbeEngine.extrapolate(*args), tokens(5, 10))  # R_-2 + 2 (R_-1 - R_-2)
    both = ProbeEngine.extrapolate(*args, probe_too=True)
    torch.testing.assert_close(both[0], tokens(5, 10))
    torch.testing.assert_close(both[1], tokens(2, 2))
    # the sigma line: gamma = (0.25 - 1) / (0.5 - 1) = 1.5, applied to both
    both = ProbeEngine.extrapolate(*args, along="sigma", probe_too=True)
    torch.testing.assert_close(both[0], tokens(4, 8))
    torch.testing.assert_close(both[1], tokens(1.5, 1.5))
    # one computed residual: the last one of each
    st.residuals, st.probe_residuals = st.residuals[1:], st.probe_residuals[1:]
    assert [t.flatten().tolist() for t in ProbeEngine.extrapolate(*args, probe_too=True)] == [[3, 6], [1, 1]]


def test_extrapolation_options_line_or_parabola_in_step_or_noise_level():
    assert lagrange_weights([4, 6, 8], 10) == [1.0, -3.0, 3.0]
    assert lagrange_weights([4, 6, 8], 9) == [0.375, -1.25, 1.875]
    # steps 0-2 compute (warm-up 3 of 10), step 3 skips; noise levels 1, 0.75, 0.25, 0 (uneven, as a shifted
    # schedule's); block-stack residuals R = (s^2, 2s + 1, 1, s^3) at s = 0, 1, 2, 3; the probe adds 0.5 s on token 0
    sigmas, x = [1.0, 0.75, 0.25, 0.0], tokens(1, 1, 1, 1)
    res = [tokens(s * s, 2 * s + 1, 1, s ** 3) for s in range(4)]
    stacks = [ScriptedStack(x, tokens(0.5 * s, 0, 0, 0), r - tokens(0.5 * s, 0, 0, 0)) for s, r in enumerate(res)]
    run = lambda **kw: drive(make_policy("worldcache", threshold=1e9, ret_ratio=0.3, **{**OFF, **kw}),  # noqa: E731
                             stacks, 10, sigmas)
    # the line in sigma through R_1 (0.75), R_2 (0.25) at 0: gamma = (0 - 0.75) / (0.25 - 0.75) = 1.5
    recs, outs = run(extrapolation="sigma")
    assert [r.computed for r in recs] == [True, True, True, False] and recs[3].gamma == 1.5
    torch.testing.assert_close(outs[3], x + res[1] + 1.5 * (res[2] - res[1]))  # (5.5, 6, 1, 11.5)
    # the parabola in sigma through (1, 0.75, 0.25) at 0: weights (1, -2, 2) -> R_0 - 2 R_1 + 2 R_2 = (6, 5, 1, 14)
    assert lagrange_weights(sigmas[:3], 0.0) == [1.0, -2.0, 2.0]
    recs, outs = run(extrapolation="sigma2", parabola_min_steps=10)
    assert recs[3].gamma != recs[3].gamma  # NaN: no line coefficient
    torch.testing.assert_close(outs[3], x + tokens(6, 5, 1, 14))
    # the parabola in step index through steps 0, 1, 2 at 3: weights (1, -3, 3) -> (9, 7, 1, 21), exact but for s^3
    recs, outs = run(extrapolation="parabola", parabola_min_steps=10)
    assert recs[3].gamma != recs[3].gamma
    torch.testing.assert_close(outs[3], x + tokens(9, 7, 1, 21))
    # a prediction of fewer than parabola_min_steps steps (10 < 11; the default 30) takes the parabola's line:
    # the probe's (below) / the sigma line (above)
    for kw in ({"parabola_min_steps": 11}, {}):
        recs, outs = run(extrapolation="parabola", **kw)
        assert recs[3].gamma == 2.0
        torch.testing.assert_close(outs[3], x + res[1] + 2 * (res[2] - res[1]))
    recs, outs = run(extrapolation="sigma2", parabola_min_steps=11)
    assert recs[3].gamma == 1.5
    # the method's line ("probe", blend off): DiCache's gamma from the probe residuals, 1 / 0.5 = 2
    recs, outs = run()
    assert recs[3].gamma == 2.0
    torch.testing.assert_close(outs[3], x + res[1] + 2 * (res[2] - res[1]))
    with pytest.raises(Exception, match="extrapolation"):
        make_policy("worldcache", extrapolation="cubic")
    # residuals kept per sample and branch: three only for a parabola (each is one activation)
    assert [make_policy("worldcache", extrapolation=e).engine.keep for e in ("probe", "sigma", "parabola", "sigma2")] \
        == [2, 2, 3, 3] and make_policy("dicache").engine.keep == 2


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_the_engine_keeps_the_last_keep_computed_calls(keep):
    p = make_policy("dicache", threshold=0.0, ret_ratio=0.0)  # threshold 0: every call computes
    p.engine = ProbeEngine(p.config, keep=keep)
    x = tokens(1, 1)
    drive(p, [ScriptedStack(x, rest=torch.full_like(x, float(k))) for k in range(5)], 10)
    st = p.states(ModelCall.new(1, step=0, num_steps=10, branch="cond", sigma=0.0))[0]
    assert st.steps == list(range(5))[-keep:]
    assert [float(r.flatten()[0]) for r in st.residuals] == [float(k) for k in range(5)][-keep:]
    with pytest.raises(ValueError, match="keep=0"):
        ProbeEngine(p.config, keep=0)


def test_teacache_applies_its_rescaling_polynomial():
    # d = rel_l1(mod_1, mod_0) = 0.2; 2 d^2 + 0.5 d + 0.1 = 0.28 (the identity polynomial would give 0.2)
    p = make_policy("teacache", threshold=1.0, ret_ratio=0.0, coefficients=[2.0, 0.5, 0.1])
    x = tokens(1, 1)
    recs, _ = drive(p, [ScriptedStack(x, mod=tokens(1, 1)), ScriptedStack(x, mod=tokens(1.2, 1.2))], 10)
    assert recs[1].drift == pytest.approx(0.28, abs=1e-12)


def test_teacache_accumulates_the_change_since_the_previous_call_over_skips():
    # identity polynomial; modulated inputs 1, 1.2, 1.5: call 1 skips with 0.2 / 1 = 0.2, call 2 adds
    # 0.3 / 1.2 = 0.25 (measured against call 1's input, not the last computed call's: that gives 0.2 + 0.5)
    p = make_policy("teacache", threshold=1.0, ret_ratio=0.0, coefficients=[1.0, 0.0])
    x = tokens(1, 1)
    recs, _ = drive(p, [ScriptedStack(x, mod=tokens(m, m)) for m in (1.0, 1.2, 1.5)], 10)
    assert [r.computed for r in recs] == [True, False, False]
    assert [r.drift for r in recs[1:]] == pytest.approx([0.2, 0.2 + 0.25], abs=1e-12)


def test_fora_skip_schedule_and_reuse():
    # call t: input t, the blocks add 10 (t + 1); a skipped call returns its own input plus the residual of the last
    # computed call c, so t + 10 (c + 1)
    p = make_policy("fora", interval=3, warmup_steps=2)
    recs, outs = drive(p, [ScriptedStack(tokens(t, t), rest=tokens(10 * (t + 1), 10 * (t + 1))) for t in range(10)], 10)
    assert [r.computed for r in recs] == [True, True, True, False, False, True, False, False, True, False]
    last = [0, 1, 2, 2, 2, 5, 5, 5, 8, 8]
    assert [float(o[0, 0, 0]) for o in outs] == [t + 10 * (c + 1) for t, c in enumerate(last)]


def test_easycache_transformation_rate():
    # k = rel_l1(out_1, out_0) / rel_l1(x_1, x_0) = (1.5 / 2) / 0.5 = 1.5; call 2 predicts k * rel_l1(x_2, x_1)
    # = 1.5 * (0.3 / 1.5) = 0.3
    p = make_policy("easycache", threshold=1.0, ret_ratio=0.2)
    stacks = [ScriptedStack(tokens(1, 1), rest=tokens(1, 1)), ScriptedStack(tokens(1.5, 1.5), rest=tokens(2, 2)),
              ScriptedStack(tokens(1.8, 1.8))]
    recs, _ = drive(p, stacks, 10)
    assert [r.computed for r in recs] == [True, True, False]
    assert recs[2].drift == pytest.approx(0.3, abs=1e-12)


def test_easycache_accumulates_the_predicted_change_since_the_previous_call_over_skips():
    # as above (k = 1.5, call 2 skips with 0.3), then x_3 = 2.16: call 3 adds k * rel_l1(x_3, x_2) = 1.5 * 0.36 / 1.8
    # = 0.3 to the 0.3 kept (against the last computed input x_1 = 1.5: 1.5 * 0.66 / 1.5 = 0.66, total 0.96)
    p = make_policy("easycache", threshold=1.0, ret_ratio=0.2)
    stacks = [ScriptedStack(tokens(1, 1), rest=tokens(1, 1)), ScriptedStack(tokens(1.5, 1.5), rest=tokens(2, 2)),
              ScriptedStack(tokens(1.8, 1.8)), ScriptedStack(tokens(2.16, 2.16))]
    recs, _ = drive(p, stacks, 10)
    assert [r.computed for r in recs] == [True, True, False, False]
    assert [r.drift for r in recs[2:]] == pytest.approx([0.3, 0.3 + 0.3], abs=1e-12)
