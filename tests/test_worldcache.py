"""WorldCache / DiCache: decisions, block savings, and one test per switchable part."""
import pytest
import torch

from worldcache.cache import ConfigError, load_policy, make_policy
from worldcache.cache.base import CallRecord
from worldcache.cache.config import CACHE_CONFIG_DIR
from worldcache.motion import token_flow, warp_tokens
from worldcache.sampler import denoise, default_scheduler
from worldcache.tiny import tiny_inputs

from test_motion import GRID, shifted_pair

STEPS = 20


def run(dit, policy, batch=1, scale=0.0, mode="separate", seed=0):
    noise, cond, emb, neg = tiny_inputs(batch=batch, seed=seed)
    return denoise(dit, default_scheduler(), noise, emb, num_steps=STEPS, policy=policy, cond_latents=cond,
                   num_cond_frames=1, negative_encoder_hidden_states=neg, guidance_scale=scale, guidance=mode)


def count_ff(dit):
    counts = []
    hooks = [b.ff.register_forward_hook(lambda *a: counts.append(1)) for b in dit.transformer.transformer_blocks]
    return counts, hooks


@pytest.mark.parametrize("name", ["worldcache", "dicache"])
def test_skips_when_permissive_and_never_at_zero(tiny_dit, name):
    assert run(tiny_dit, make_policy(name, threshold=0.0)).computed_fraction == 1.0
    out = run(tiny_dit, make_policy(name, threshold=1.0))
    assert out.computed_fraction < 0.6


@pytest.mark.parametrize("name", ["worldcache", "dicache"])
def test_skipped_calls_run_only_the_probe(tiny_dit, name):
    counts, hooks = count_ff(tiny_dit)
    try:
        out = run(tiny_dit, make_policy(name, threshold=1.0, probe_depth=1))
    finally:
        for h in hooks:
            h.remove()
    skipped = [r for r in out.records if not r.computed]
    assert skipped and all(r.blocks_run == 1 for r in skipped)
    assert all(r.blocks_run == 4 for r in out.records if r.computed)
    assert len(counts) == sum(r.blocks_run for r in out.records)  # the blocks really did not run


def test_warmup_last_step_and_cap(tiny_dit):
    out = run(tiny_dit, make_policy("worldcache", threshold=10.0, ret_ratio=0.25, max_consecutive_skips=2))
    # a threshold no drift reaches: the 5 warm-up steps (0.25 of 20) compute, then every third call (at most 2
    # skips in a row), and the last step
    computed = [r.computed for r in out.records]
    assert computed == [True] * 5 + [False, False, True] * 5
    uncapped = [r.computed for r in run(tiny_dit, make_policy("worldcache", threshold=10.0, ret_ratio=0.25)).records]
    assert uncapped == [True] * 5 + [False] * 14 + [True]


def test_guidance_branches_keep_separate_state(tiny_dit):
    sep = run(tiny_dit, make_policy("worldcache", threshold=0.5), scale=3.0, mode="separate")
    assert {r.branch for r in sep.records} == {"cond", "uncond"}
    for branch in ("cond", "uncond"):
        recs = [r for r in sep.records if r.branch == branch]
        assert len(recs) == STEPS and recs[-1].computed and not all(r.computed for r in recs)
    bat = run(tiny_dit, make_policy("worldcache", threshold=0.5), scale=3.0, mode="batched", batch=2)
    # one record per sample of each batched call: 2 cond + 2 uncond samples
    assert len(bat.records) == 4 * STEPS and len(bat.sample_records(0)) == STEPS and torch.isfinite(bat.latents).all()


def test_skipping_stays_close_to_uncached(tiny_dit):
    ref = run(tiny_dit, make_policy("none")).latents
    out = run(tiny_dit, make_policy("worldcache", threshold=0.3))
    assert out.computed_fraction < 1.0
    err = (out.latents - ref).abs().mean() / ref.abs().mean()
    assert err < 0.1


# --- one test per WorldCache part: each fails if the part were a no-op ---------------------------------------
BASE = dict(motion_adaptive=False, saliency=False, blend=False, warp=False, phase_aware=False,
            extrapolation="probe")  # the method's line; the parabola is tested on its own


@pytest.mark.slow
def test_motion_adaptive_threshold(tiny_dit):
    off = run(tiny_dit, make_policy("worldcache", threshold=0.5, **BASE))
    on = run(tiny_dit, make_policy("worldcache", threshold=0.5, **{**BASE, "motion_adaptive": True, "alpha": 50.0}))
    pairs = [(a, b) for a, b in zip(on.records, off.records) if a.threshold == a.threshold]
    assert pairs and all(a.motion > 0 for a, _ in pairs)
    assert all(a.threshold < b.threshold for a, b in pairs)  # tau / (1 + alpha v)
    fractions = [(run(tiny_dit, make_policy("worldcache", threshold=t, **{**BASE, "motion_adaptive": True,
                                                                          "alpha": 50.0})).computed_fraction,
                  run(tiny_dit, make_policy("worldcache", threshold=t, **BASE)).computed_fraction)
                 for t in (0.05, 0.1, 0.2, 0.5, 1.0)]
    assert all(a >= b for a, b in fractions) and any(a > b for a, b in fractions)  # fast change -> compute more


@pytest.mark.slow
def test_saliency_weighted_drift(tiny_dit):
    off = run(tiny_dit, make_policy("worldcache", threshold=0.0, **BASE))
    on = run(tiny_dit, make_policy("worldcache", threshold=0.0, **{**BASE, "saliency": True, "beta": 5.0}))
    measured = [(a, b) for a, b in zip(on.records, off.records) if a.drift == a.drift]
    assert measured and all(a.drift > 1.01 * b.drift for a, b in measured)  # weights >= 1, some > 1
    assert all(a.saliency > 1 for a, _ in measured)
    fractions = {t: (run(tiny_dit, make_policy("worldcache", threshold=t, **{**BASE, "saliency": True})).computed_fraction,
                     run(tiny_dit, make_policy("worldcache", threshold=t, **BASE)).computed_fraction)
                 for t in (0.05, 0.1, 0.2, 0.4)}
    assert any(a > b for a, b in fractions.values())  # heavier drift -> fewer skips at some threshold


def test_blend_least_squares_coefficient(tiny_dit):
    off = run(tiny_dit, make_policy("worldcache", threshold=1.0, **BASE))
    on = run(tiny_dit, make_policy("worldcache", threshold=1.0, **{**BASE, "blend": True}))
    g_on = [r.gamma for r in on.records if not r.computed and r.gamma == r.gamma]
    g_off = [r.gamma for r in off.records if not r.computed and r.gamma == r.gamma]
    assert g_on and g_off and g_on != g_off
    assert all(0.2 <= g <= 1.8 for g in g_on) and all(1.0 <= g <= 2.0 for g in g_off)
    assert not torch.allclose(on.latents, off.latents)


def test_warp_resamples_cached_residual(tiny_dit):
    off = run(tiny_dit, make_policy("worldcache", threshold=1.0, **BASE))
    on = run(tiny_dit, make_policy("worldcache", threshold=1.0, **{**BASE, "warp": True, "warp_check": False}))
    assert [r.computed for r in on.records] == [r.computed for r in off.records]
    assert all(r.warped == 1.0 for r in on.records if not r.computed)
    assert not torch.allclose(on.latents, off.latents, atol=1e-6)


def _warp_case(moving_probe: bool):
    """Cached state whose inputs moved one token along x; the probe residual moved with them or stayed put."""
    src, dst = shifted_pair()
    policy = make_policy("worldcache", **{**BASE, "warp": True})
    rho_now = dst if moving_probe else src
    call = CallRecord(step=10, num_steps=20, branch="cond")
    out = policy._warp(src.clone(), src, rho_now, src, dst, GRID, call)
    flow = token_flow(src, dst, GRID)
    return out, warp_tokens(src, flow, GRID), src, call


def test_warp_check_keeps_a_warp_the_probe_confirms():
    out, warped, _, call = _warp_case(moving_probe=True)
    assert call.warped == 1.0 and torch.equal(out, warped)


def test_warp_check_counts_no_warp_where_nothing_moved(monkeypatch):
    import worldcache.cache.worldcache as wc

    src, _ = shifted_pair()
    target = src * 1.01
    # Resampling along a zero flow can differ from the input by rounding; here it "fits" the probe better on purpose.
    monkeypatch.setattr(wc, "warp_tokens", lambda feat, flow, grid: feat + 0.5 * (target - feat))
    policy = make_policy("worldcache", **{**BASE, "warp": True})
    call = CallRecord(step=10, num_steps=20, branch="cond")
    out = policy._warp(src.clone(), src, target, src, src, GRID, call)  # inputs equal: zero flow
    assert call.warped == 0.0 and torch.equal(out, src)


def test_warp_check_warps_no_frame_whose_input_did_not_change():
    """On the bundled model's 10 x 12 token grid the flow between identical inputs is not exactly zero (~1e-7, the
    resampling's rounding), so the flow cannot say that nothing moved; here the probe even fits the rounding's warp
    exactly. Identical inputs: no frame warped. Frame 1 changed: only it may be (and, the probe fitting, is)."""
    grid = (3, 10, 12)
    torch.manual_seed(0)
    x, approx, rho_hat = (torch.randn(1, 360, 32) for _ in range(3))
    flow = token_flow(x, x, grid)  # here ~1e-7, which the old check read as motion (exactly 0 on some machines)
    policy = make_policy("worldcache", **{**BASE, "warp": True})
    call = CallRecord(step=10, num_steps=20, branch="cond")
    out = policy._warp(approx.clone(), rho_hat, warp_tokens(rho_hat, flow, grid), x, x, grid, call)
    assert call.warped == 0.0 and torch.equal(out, approx)
    moved = x.clone()
    moved[:, 120:240] += 0.1 * torch.randn(1, 120, 32)  # frame 1's tokens
    flow = token_flow(x, moved, grid)
    out = policy._warp(approx.clone(), rho_hat, warp_tokens(rho_hat, flow, grid), x, moved, grid, call)
    assert call.warped == pytest.approx(1 / 3)
    assert torch.equal(out[:, :120], approx[:, :120]) and torch.equal(out[:, 240:], approx[:, 240:])
    assert torch.equal(out[:, 120:240], warp_tokens(approx, flow, grid)[:, 120:240])


def test_warp_check_refuses_a_warp_the_probe_contradicts():
    out, warped, unwarped, call = _warp_case(moving_probe=False)  # inputs moved, features did not
    assert call.warped == 0.0 and torch.equal(out, unwarped) and not torch.allclose(warped, unwarped)


def test_warp_check_decides_per_latent_frame():
    """Frames 0 and 2 of the probe moved with the inputs (the warp fits them better), frame 1 stayed put (the warp
    fits it worse): the warp is kept in frames 0 and 2 only, each frame's tokens taken whole from the warped or the
    unwarped residual."""
    src, dst = shifted_pair()
    frame = lambda v: v.view(1, 3, 80, -1)  # noqa: E731  (1, T, H*W, C): tokens frame-major
    rho_now = torch.cat([frame(dst)[:, 0], frame(src)[:, 1], frame(dst)[:, 2]], dim=1)
    approx = src.flip(-1) * 2 + 1  # a residual unlike the probe's, so the output shows which one was warped
    policy = make_policy("worldcache", **{**BASE, "warp": True})
    call = CallRecord(step=10, num_steps=20, branch="cond")
    out = policy._warp(approx.clone(), src, rho_now, src, dst, GRID, call)
    assert call.warped == pytest.approx(2 / 3, abs=1e-7)  # a float32 mean
    warped = warp_tokens(approx, token_flow(src, dst, GRID), GRID)
    assert not torch.allclose(frame(warped)[:, 1], frame(approx)[:, 1])
    for f, src_of in enumerate((warped, approx, warped)):
        assert torch.equal(frame(out)[:, f], frame(src_of)[:, f]), f


@pytest.mark.parametrize("flow_scale", [0.5, 1.0])
def test_warp_follows_the_flow_from_the_last_computed_input_at_flow_scale(flow_scale):
    """Call 0 computes (warm-up), calls 1 and 2 skip. Call 2's cached residual is warped along the flow from the last
    computed input x_0 = src to x_2 = dst, estimated at `flow_scale` of the grid; call 1's input is already dst, so
    the flow from the previous call's input would be ~0."""
    from test_formulas import ScriptedStack, drive

    src, dst = shifted_pair()
    rest = src.flip(-1) * 2 + 1  # the block stack's residual at call 0 (the probe adds nothing)
    stacks = [ScriptedStack(src, rest=rest), ScriptedStack(dst), ScriptedStack(dst)]
    for st in stacks:
        st.ctx.grid = GRID
    p = make_policy("worldcache", threshold=1e9, ret_ratio=0.1, flow_scale=flow_scale,
                    **{**BASE, "warp": True, "warp_check": False})
    recs, outs = drive(p, stacks, 10)
    assert [r.computed for r in recs] == [True, False, False] and recs[2].warped == 1.0
    r0 = rest.double()  # one computed residual: the extrapolation is it (gamma 1)
    expected = dst.double() + warp_tokens(r0, token_flow(src.double(), dst.double(), GRID, flow_scale), GRID)
    torch.testing.assert_close(outs[2], expected, rtol=0, atol=1e-12)
    other = token_flow(src.double(), dst.double(), GRID, 1.5 - flow_scale)  # the other scale gives another flow
    assert not torch.allclose(outs[2], dst.double() + warp_tokens(r0, other, GRID), atol=1e-3)


def test_phase_aware_schedule(tiny_dit):
    off = run(tiny_dit, make_policy("worldcache", threshold=0.1, **BASE))
    on = run(tiny_dit, make_policy("worldcache", threshold=0.1, **{**BASE, "phase_aware": True}))
    th_off = [r.threshold for r in off.records if r.threshold == r.threshold]
    th_on = [(r.step, r.threshold) for r in on.records if r.threshold == r.threshold]
    assert len(set(th_off)) == 1
    assert all(t == pytest.approx(0.1 * (1 + 4 * s / STEPS)) for s, t in th_on)
    assert on.computed_fraction < off.computed_fraction  # relaxed late threshold -> more reuse


def test_uncond_reuse_skips_only_late_uncond_calls(tiny_dit):
    ref = run(tiny_dit, make_policy("none"), scale=3.0)
    out = run(tiny_dit, make_policy("worldcache", threshold=0.0, uncond_reuse=True), scale=3.0)
    for r in out.records:
        reused = r.branch == "uncond" and STEPS // 2 <= r.step < STEPS - 1
        assert r.computed != reused and (r.blocks_run == 0) == reused
    err = (out.latents - ref.latents).abs().mean() / ref.latents.abs().mean()
    assert 0 < err < 0.1
    with pytest.raises(ValueError, match="guidance='separate'"):
        run(tiny_dit, make_policy("worldcache", uncond_reuse=True), scale=3.0, mode="batched")


def test_uncond_reuse_returns_the_input_plus_the_branchs_last_computed_residual():
    """Scripted calls, 10 steps, reuse from step 5: the uncond branch computes steps 0-4 (residual 100 + step at
    step s, the cond branch 200 + step), then each reused call returns its own input plus step 4's uncond residual,
    not an older one, nor the cond branch's."""
    from test_formulas import ScriptedStack, tokens

    from worldcache.cache.base import ModelCall

    p = make_policy("worldcache", threshold=0.0, ret_ratio=0.1, uncond_reuse=True, uncond_reuse_start=0.5, **BASE)
    p.begin(10)
    outs = {}
    for step in range(8):
        for branch, base in (("cond", 200.0), ("uncond", 100.0)):
            x = tokens(1.0 + step, 2.0 - step)
            call = ModelCall.new(1, step=step, num_steps=10, branch=branch)
            out = p.run_stack(ScriptedStack(x, rest=torch.full_like(x, base + step)), call)
            outs[branch, step] = (out, call[0].computed)
    assert [outs["uncond", s][1] for s in range(8)] == [True] * 5 + [False] * 3
    assert all(outs["cond", s][1] for s in range(8))  # threshold 0: the cond branch always computes
    for step in (5, 6, 7):
        assert torch.equal(outs["uncond", step][0], tokens(1.0 + step, 2.0 - step) + 104.0)


def test_uncond_reuse_keeps_the_warm_up_and_the_skip_cap(tiny_dit):
    def uncond_computed(**kw):
        out = run(tiny_dit, make_policy("worldcache", threshold=0.0, uncond_reuse=True, uncond_reuse_start=0.0, **kw),
                  scale=3.0)
        return [int(r.computed) for r in out.records if r.branch == "uncond"]

    assert STEPS == 20
    assert uncond_computed(ret_ratio=0.5) == [1] * 10 + [0] * 9 + [1]  # warm-up: floor(0.5 * 20 + 0.5) steps
    assert uncond_computed(ret_ratio=0.1, max_consecutive_skips=1) == [1, 1] + [0, 1] * 9


def test_hf_veto_forbids_skips(tiny_dit):
    free = run(tiny_dit, make_policy("worldcache", threshold=10.0))
    veto = run(tiny_dit, make_policy("worldcache", threshold=10.0, hf_veto=True, hf_threshold=0.0))
    assert free.computed_fraction < 1.0 and veto.computed_fraction == 1.0


# --- configs ---------------------------------------------------------------------------------------------------
def test_yaml_defaults_load():
    # the shipped YAML and the dataclass agree, so an install without configs/ behaves the same
    # load_policy(name) falls back to the dataclass when the YAML is missing: the files must be there
    assert all((CACHE_CONFIG_DIR / f"{n}.yaml").is_file() for n in ("worldcache", "dicache"))
    assert load_policy("worldcache").config == make_policy("worldcache").config
    paper = load_policy(CACHE_CONFIG_DIR / "worldcache_paper.yaml").config  # ../shared/METHOD.md's defaults
    assert (paper.threshold, paper.ret_ratio, paper.alpha, paper.beta, paper.phase_slope) == (0.08, 0.2, 5, 5, 4)
    assert paper.warp and not paper.warp_check and not paper.hf_veto and not paper.uncond_reuse
    assert load_policy("dicache").config == make_policy("dicache").config


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-0.1), "threshold"),
    (dict(ret_ratio=1.0), "ret_ratio"),
    (dict(thresold=0.1), "thresold"),
    (dict(alpha="fast"), "alpha"),
    (dict(gamma_min=1.5, gamma_max=1.0), "gamma_max"),
    (dict(uncond_reuse_start=1.5), "uncond_reuse_start"),
    (dict(probe_depth=1.5), "probe_depth must be a whole number, got 1.5"),
    (dict(max_consecutive_skips=0.5), "max_consecutive_skips must be a whole number"),
    (dict(extrapolation=["line"]), "extrapolation must be a string"),
])
def test_bad_configs_raise_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_policy("worldcache", **kwargs)


def test_config_types_are_checked_for_every_policy():
    # a whole float is the integer it names (YAML users write 2.0); a list stays a list
    assert make_policy("fora", interval=2.0).config.interval == 2 and type(make_policy("fora", interval=2.0).config.interval) is int
    with pytest.raises(ConfigError, match="interval must be a whole number, got 2.5"):
        make_policy("fora", interval=2.5)
    with pytest.raises(ConfigError, match="taylor_factors_dtype must be a string"):
        make_policy("taylorseer", taylor_factors_dtype=["bfloat16"])
    with pytest.raises(ConfigError, match="coefficients must be a list"):
        make_policy("teacache", coefficients=3.0)


def test_unknown_policy_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown cache policy 'warpdrive'"):
        make_policy("warpdrive")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: worldcache\nthreshold: 0.1\nbetaa: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*betaa"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.yaml")
    bad.write_text("policy: worldcache\nthreshold: -1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: threshold=-1.0: must be [^(]*$"):  # the file's own error
        load_policy(bad)
    # a bad value the caller set over a good file is named as the caller's, not the file's alone
    bad.write_text("policy: worldcache\nthreshold: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: threshold=-1.0: must be .* \(set by the caller: threshold\)$"):
        load_policy(bad, threshold=-1)
    with pytest.raises(ConfigError, match=r"^policy 'fora': interval must be a whole number, got 2.5 \(set by the caller: interval\)$"):
        make_policy("fora", interval=2.5)
    # where the message names another key (a check across keys), the caller's value is shown there
    with pytest.raises(ConfigError, match=r"gamma_max=1.8: must be >= gamma_min \(set by the caller: gamma_min=5\)$"):
        make_policy("worldcache", gamma_min=5)


def test_yaml_names_the_file_and_reads_floats_as_yaml_1_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("policy: wordcache\n")  # misspelled: the file is named
    with pytest.raises(ConfigError, match=r"c.yaml: unknown cache policy 'wordcache'; known: \["):
        load_policy(cfg)
    cfg.write_text("policy: [worldcache]\n")  # was: TypeError unhashable type 'list'
    with pytest.raises(ConfigError, match=r"c.yaml: policy must be a cache policy's name, got \['worldcache'\]"):
        load_policy(cfg)
    cfg.write_text("policy: worldcache\nthreshold: 1e-2\n")  # PyYAML alone reads the string '1e-2'
    assert load_policy(cfg).config.threshold == 0.01
    cfg.write_text("policy: worldcache\nthreshold: 5E-1\nextrapolation: 1e\n")  # '1e' is no number
    with pytest.raises(ConfigError, match="extrapolation="):
        load_policy(cfg)


def test_a_plugin_package_registers_its_policies_by_entry_point(tmp_path, monkeypatch):
    """An installed package (a dist-info on sys.path, as pip leaves it) whose entry point in the
    `worldcache.cache_policies` group names the module that registers its policy: the name then works wherever a
    built-in's does, with the threshold grid of its config's default."""
    import worldcache.cache as cache
    from worldcache.bench import bench_configs

    monkeypatch.setattr(cache, "POLICIES", dict(cache.POLICIES))  # the plugin's registration ends with the test
    (tmp_path / "mydrift.py").write_text(
        "from worldcache.cache import register\nfrom worldcache.cache.teacache import TeaCache\n\n\n"
        "@register\nclass InputDrift(TeaCache):\n    name = 'inputdrift'\n")
    info = tmp_path / "mydrift-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mydrift\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[worldcache.cache_policies]\ninputdrift = mydrift\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "mydrift", raising=False)
    assert "inputdrift" not in cache.POLICIES
    assert make_policy("inputdrift", threshold=0.2).name == "inputdrift"
    assert "inputdrift" in cache.policy_names()
    (tmp_path / "mine.yaml").write_text("policy: inputdrift\nthreshold: 0.3\n")
    assert load_policy(tmp_path / "mine.yaml").config.threshold == 0.3
    labels = [c.label for c in bench_configs(["inputdrift"], ablation=False, denoise_steps=[35], reference_steps=35)]
    assert labels == ["inputdrift threshold=0.05", "inputdrift", "inputdrift threshold=0.2"]
    # a plugin that fails to import is named
    (info / "entry_points.txt").write_text("[worldcache.cache_policies]\nbroken = not_a_module_here\n")
    with pytest.raises(ConfigError, match=r"cache policy plugin 'broken' \(not_a_module_here, from "
                                          r"worldcache.cache_policies\) failed to load: ModuleNotFoundError"):
        make_policy("whatever")


def test_probe_depth_must_leave_blocks(tiny_dit):
    with pytest.raises(ValueError, match="probe_depth"):
        run(tiny_dit, make_policy("worldcache", probe_depth=4))


def test_the_stack_context_counts_the_conditioning_frames_and_generated_only_uses_them(tiny_dit):
    seen = []
    policy = make_policy("worldcache", generated_only=True)
    run_stack = policy.run_stack
    policy.run_stack = lambda stack, call: (seen.append((stack.ctx.cond_frames, stack.ctx.grid)),
                                            run_stack(stack, call))[1]
    on = run(tiny_dit, policy)  # one conditioning latent frame of 3
    assert {s[0] for s in seen} == {1} and seen[0][1][0] == 3
    off = run(tiny_dit, make_policy("worldcache"))
    # the drift differs once the conditioning frame's tokens are left out (same threshold)
    drifts = lambda out: [r.drift for r in out.records if r.drift == r.drift]  # noqa: E731  (not NaN)
    assert drifts(on) and drifts(on) != drifts(off)
