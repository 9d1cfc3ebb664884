"""Baseline cache policies (FORA, TeaCache, EasyCache; diffusers' FBCache, FasterCache, MagCache, TaylorSeer, SeaCache
and PAB) on a tiny random Cosmos DiT: they skip, skipped calls run no blocks, outputs stay close, guidance branches
keep separate state, configs are validated, YAML defaults load, and hook policies leave the model clean on detach."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldcache.cache import ConfigError, load_policy, make_policy
from worldcache.cache.config import CACHE_CONFIG_DIR
from worldcache.dit import DiT
from worldcache.sampler import default_scheduler, denoise
from worldcache.tiny import tiny_inputs, tiny_transformer

STEPS = 10
RATIOS = [1.0] + [0.99] * 11  # MagCache ratios for the tests: every step adds error, so threshold 0 never skips
HOOKS = ["fbcache", "fastercache", "magcache", "taylorseer", "seacache", "pab"]
ALL = ["fora", "teacache", "easycache"] + HOOKS

# name -> (permissive settings, settings that must never skip, moderate settings)
SETTINGS = {
    "fora": (dict(interval=3), dict(interval=1), dict(interval=2)),
    "teacache": (dict(threshold=1.0), dict(threshold=0.0), dict(threshold=0.05)),
    "easycache": (dict(threshold=1.0), dict(threshold=0.0), dict(threshold=0.02)),
    "fbcache": (dict(threshold=1.0), dict(threshold=0.0), dict(threshold=0.05)),
    "fastercache": (dict(), dict(spatial_attention_block_skip_range=1), dict()),
    "magcache": (dict(threshold=1.0, mag_ratios=RATIOS), dict(threshold=0.0, mag_ratios=RATIOS),
                 dict(mag_ratios=RATIOS)),
    "taylorseer": (dict(cache_interval=2, disable_cache_before_step=2), dict(cache_interval=1),
                   dict(taylor_factors_dtype="float32")),
    "seacache": (dict(threshold=10.0), dict(threshold=0.0), dict()),
    "pab": (dict(cross_attention_block_skip_range=2),
            dict(spatial_attention_block_skip_range=1, cross_attention_block_skip_range=1), dict()),
    "worldcache": (dict(threshold=1.0), dict(threshold=0.0), dict(threshold=0.1)),
    "dicache": (dict(threshold=1.0), dict(threshold=0.0), dict(threshold=0.1)),
}


@pytest.fixture
def make():
    """make_policy, detaching every policy made at teardown so a failing test leaves no hooks on the shared model."""
    made = []
    yield lambda name, **kw: made.append(make_policy(name, **kw)) or made[-1]
    for p in made:
        p.detach()


@pytest.fixture(scope="module")
def setup():
    model = tiny_transformer(seed=0)
    noise, cond, emb, neg = tiny_inputs(batch=1)
    return DiT(model), dict(cond_latents=cond, num_cond_frames=1), noise, emb, neg


def run(setup, policy=None, **kw):
    dit, base, noise, emb, _ = setup
    return denoise(dit, default_scheduler(), noise, emb, num_steps=STEPS, policy=policy, **base, **kw)


def rel_err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


def count_forwards(model, what):
    """Forward pre-hooks on a leaf linear per block: `ff` = the feed-forward's output linear (inside `ff`, so a
    TaylorSeer-predicted `ff` does not count), `attn1` = self-attention's query projection."""
    counter = {"n": 0}
    mods = [b.ff.net[-1] if what == "ff" else b.attn1.to_q for b in model.transformer_blocks]
    handles = [m.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1)) for m in mods]
    return counter, handles


@pytest.mark.parametrize("name", ALL)
def test_skips_when_permissive_and_never_at_zero(setup, make, name):
    permissive, never, _ = SETTINGS[name]
    p = make(name, **permissive)
    out = run(setup, p)
    p.detach()
    assert any(not r.computed for r in out.records), f"{name} never skipped at {permissive}"
    p = make(name, **never)
    out = run(setup, p)
    p.detach()
    assert all(r.computed for r in out.records), f"{name} skipped at {never}"


@pytest.mark.parametrize("name", ALL)
def test_skipped_calls_run_no_blocks(setup, make, name):
    dit = setup[0]
    model, nb = dit.transformer, len(dit.transformer.transformer_blocks)
    what = "attn1" if name in ("fastercache", "pab") else "ff"  # they reuse attention, blocks still run
    counter, handles = count_forwards(model, what)
    try:
        run(setup)
        plain = counter["n"]
        counter["n"] = 0
        p = make(name, **SETTINGS[name][0])
        out = run(setup, p)
        p.detach()
    finally:
        for h in handles:
            h.remove()
    assert plain == nb * STEPS
    skipped = [r for r in out.records if not r.computed]
    assert skipped and counter["n"] < plain
    if what == "ff":
        # The record's block count is truthful, and a skipped call runs at most the first block (FBCache's probe).
        assert counter["n"] == sum(r.blocks_run for r in out.records)
        assert all(r.blocks_run <= (1 if name == "fbcache" else 0) for r in skipped)
    else:
        assert counter["n"] == nb * sum(r.computed for r in out.records)


# Which calls compute (C) and which reuse (.), at 10 steps: these policies' schedules follow from their settings
# alone, not from the activations. FORA: 2 warm-up steps, then every 2nd call. FasterCache: attention reused every
# 2nd call once the step-based timestep 1000 (1 - step / 10) is inside (-1, 681). MagCache with ratios 0.99 a step,
# after its 2 retention steps: its accumulated error, the sum of 1 - 0.99^j over the skips j = 1.., is 0.0596 after
# 3 skips (<= 0.06) and 0.0990 after 4, and its cap is 3 skips. TaylorSeer and PAB: diffusers' rules for their YAMLs'
# intervals and timestep ranges.
SCHEDULES = {"fora": "CCC.C.C.C.", "fastercache": "CCCCC.C.C.", "magcache": "CC...C...C", "taylorseer": "CCC.C....C",
             "pab": "CCC...C..C"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_that_follow_from_the_settings_alone(setup, make, name):
    out = run(setup, make(name, **SETTINGS[name][2]))
    assert "".join("C" if r.computed else "." for r in out.records) == SCHEDULES[name]


@pytest.mark.parametrize("name", ALL)
def test_close_to_uncached(setup, make, name):
    ref = run(setup).latents
    p = make(name, **SETTINGS[name][2])
    out = run(setup, p)
    p.detach()
    assert torch.isfinite(out.latents).all()
    assert rel_err(out.latents, ref) < 0.01
    if name in ("teacache", "easycache"):
        measured = [r for r in out.records if r.drift == r.drift]
        assert measured and all(r.threshold == SETTINGS[name][2]["threshold"] for r in measured)


@pytest.mark.parametrize("guidance", ["separate", "batched"])
@pytest.mark.parametrize("name", ALL + ["worldcache", "dicache"])
def test_guidance_branches_keep_separate_state(setup, make, name, guidance):
    _, _, _, emb, neg = setup
    # Negative prompt == prompt: each branch sees exactly the unguided calls, so with per-branch state the guided
    # prediction must equal the unguided one (shared state would let one branch feed the other's decisions/cache).
    p = make(name, **SETTINGS[name][2])
    unguided = run(setup, p)
    same = run(setup, p, guidance_scale=3.0, negative_encoder_hidden_states=emb, guidance=guidance)
    assert torch.allclose(same.latents, unguided.latents, rtol=1e-4, atol=1e-5)
    branches = {"separate": ["cond", "uncond"], "batched": ["batched"]}[guidance]
    assert sorted({r.branch for r in same.records}) == branches
    for b in branches:  # batched: sample 0 is the conditional half, sample 1 the unconditional one
        for i in range(len(same.records) // len(unguided.records) // len(branches)):
            assert ([r.computed for r in same.sample_records(i) if r.branch == b]
                    == [r.computed for r in unguided.records])
    # A real negative prompt: finite and close to the uncached guided prediction.
    p = make(name, **SETTINGS[name][0])
    guided = run(setup, p, guidance_scale=3.0, negative_encoder_hidden_states=neg, guidance=guidance)
    p.detach()
    ref = run(setup, guidance_scale=3.0, negative_encoder_hidden_states=neg, guidance=guidance)
    assert torch.isfinite(guided.latents).all()
    assert any(not r.computed for r in guided.records)
    assert rel_err(guided.latents, ref.latents) < 0.02


@pytest.mark.parametrize("name", ALL)
def test_unknown_key_rejected(name):
    with pytest.raises(ConfigError, match="bogus"):
        make_policy(name, bogus=1)


@pytest.mark.parametrize("name,key,value", [
    ("teacache", "threshold", -0.1), ("easycache", "threshold", -0.1), ("fbcache", "threshold", -0.1),
    ("magcache", "threshold", -0.1), ("fora", "interval", 0), ("fora", "warmup_steps", -1),
    ("teacache", "coefficients", "x"), ("teacache", "ret_ratio", 1.0), ("easycache", "ret_ratio", 1.0),
    ("fastercache", "spatial_attention_block_skip_range", 0),
    ("fastercache", "spatial_attention_timestep_skip_range", [700, 100]),
    ("magcache", "mag_ratios", [1.0, -2.0]), ("magcache", "max_skip_steps", -1),
    ("taylorseer", "cache_interval", 0), ("taylorseer", "taylor_factors_dtype", "int8"),
    ("taylorseer", "cache_identifiers", ["("]), ("seacache", "threshold", -0.1), ("seacache", "residual_order", 2),
    ("seacache", "retention_steps", -1), ("seacache", "max_consecutive_cached", -1), ("seacache", "power_exp", 0.0),
    ("pab", "spatial_attention_block_skip_range", 0), ("pab", "cross_attention_block_skip_range", 1.5),
    ("pab", "cross_attention_timestep_skip_range", [800, 100]),
])
def test_bad_values_rejected(name, key, value):
    with pytest.raises(ConfigError, match=key):
        make_policy(name, **{key: value})


@pytest.mark.parametrize("value", [[], ["a"], [True], [1.0, None]])
def test_teacache_coefficients_must_be_a_non_empty_list_of_numbers(value):
    # lists pass build_config's type check: these reach TeaCacheConfig.check (an empty polynomial is 0: never compute)
    with pytest.raises(ConfigError, match=r"coefficients=.*must be a non-empty list of numbers"):
        make_policy("teacache", coefficients=value)


def test_fora_warmup_longer_than_schedule(setup):
    with pytest.raises(ValueError, match="warmup_steps"):
        run(setup, make_policy("fora", warmup_steps=STEPS + 1))


@pytest.mark.parametrize("name", ALL)
def test_yaml_defaults_load(name):
    # load_policy(name) falls back to the dataclass defaults when the YAML is missing: check the file is there, and
    # that it agrees with the dataclass, so an install without configs/ behaves the same
    assert (CACHE_CONFIG_DIR / f"{name}.yaml").is_file()
    p = load_policy(name)
    assert p.name == name and type(p.config) is type(make_policy(name, **SETTINGS[name][2]).config)
    loaded, default = p.config.as_dict(), make_policy(name).config.as_dict()
    if name == "teacache":  # the YAML carries the fitted polynomial and how it was fitted; the dataclass the identity
        fitted, how = loaded.pop("coefficients"), loaded.pop("calibration")
        del default["coefficients"], default["calibration"]
        assert fitted != [1.0, 0.0] and len(fitted) == how["degree"] + 1
    assert loaded == default


@pytest.mark.parametrize("name", HOOKS)
def test_detach_restores_plain_model(setup, make, name):
    dit = setup[0]
    ref = run(setup).latents
    p = make(name, **SETTINGS[name][0])
    run(setup, p)
    p.detach()
    assert torch.equal(run(setup).latents, ref)
    for m in dit.transformer.modules():
        assert not m._forward_pre_hooks
        registry = getattr(m, "_diffusers_hook", None)  # only DiT's own per-frame modulation stays
        assert not registry or set(registry.hooks) <= {"frame_modulation"}


@pytest.mark.parametrize("name", HOOKS)
def test_hooks_follow_the_model(setup, make, name):
    """A different model in the stack: hooks leave the old model and attach to the new one."""
    dit, base, noise, emb, _ = setup
    other = DiT(tiny_transformer(seed=1))
    ref = run(setup).latents
    p = make(name, **SETTINGS[name][0])
    run(setup, p)
    out = denoise(other, default_scheduler(), noise, emb, num_steps=STEPS, policy=p, **base)
    assert any(not r.computed for r in out.records)
    assert torch.equal(run(setup).latents, ref)  # the first model is clean again
    p.detach()


def test_magcache_calibrates_on_first_prediction(setup, make, capsys):
    p = make("magcache", threshold=1.0)
    capsys.readouterr()
    first = run(setup, p)
    assert all(r.computed for r in first.records) and p.mag_ratios is None
    assert capsys.readouterr().out == ""  # diffusers' "Copy these values to MagCacheConfig" print, mid-benchmark
    second = run(setup, p)
    assert p.mag_ratios is not None and len(p.mag_ratios) == STEPS
    # the threshold in force: none while calibrating, the config's from the first call after
    assert all(math.isnan(r.threshold) for r in first.records) and all(r.threshold == 1.0 for r in second.records)
    # what results record of it (bench rows, fidelity settings): its config with the ratios it calibrated
    assert p.settings() == {**p.config.as_dict(), "mag_ratios": [round(float(v), 6) for v in p.mag_ratios]}
    assert any(not r.computed for r in second.records)
    # A different schedule length re-applies the hooks with the ratios resized.
    dit, base, noise, emb, _ = setup
    third = denoise(dit, default_scheduler(), noise, emb, num_steps=STEPS + 2, policy=p, **base)
    assert len(third.records) == STEPS + 2 and torch.isfinite(third.latents).all()
    p.detach()


def test_magcache_calibrates_again_on_another_model_and_keeps_configured_ratios(setup, make):
    """Calibrated ratios are the model's: a policy that follows another model calibrates on it (it reused the first
    model's); ratios given in the config are used on any model."""
    _, base, noise, emb, neg = setup
    other = (DiT(tiny_transformer(seed=1)), base, noise, emb, neg)
    p = make("magcache", threshold=1.0)
    run(setup, p)
    run(setup, p)
    first = list(p.mag_ratios)
    on_other = run(other, p)
    assert all(r.computed for r in on_other.records) and p.mag_ratios is None  # calibrating again
    run(other, p)
    assert len(p.mag_ratios) == STEPS and p.mag_ratios != first
    fixed = make("magcache", threshold=1.0, mag_ratios=RATIOS)
    run(setup, fixed)
    assert any(not r.computed for r in run(other, fixed).records) and fixed.mag_ratios == RATIOS


def test_fastercache_keeps_diffusers_experimental_banner_to_itself(setup, make):
    """diffusers warns at every `apply_faster_cache` (its logger's own stderr handler, mid-benchmark)."""
    import logging

    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    log = logging.getLogger("diffusers.hooks.faster_cache")
    log.addHandler(handler)
    try:
        run(setup, make("fastercache"))
    finally:
        log.removeHandler(handler)
    assert not [r for r in seen if "purely experimental" in r.getMessage()]


def _sea_indicator(latents: np.ndarray, sigma: float, power_exp: float = 3.0) -> np.ndarray:
    """SeaCache's indicator (arXiv 2602.18993, Eq. 7), in numpy: the latents (C, T, H, W) filtered over (T, H, W) by
    the product of per-axis Wiener gains under a clean-signal power prior 1/|f|^p, normalised to unit mean gain."""
    x = np.moveaxis(latents.astype(np.float64), 0, -1)
    s = min(max(sigma, 1e-6), 1 - 1e-6)
    gain = np.ones(x.shape[:3])
    for axis in range(3):
        f = np.fft.fftfreq(x.shape[axis])
        prior = 1.0 / (np.abs(f) ** power_exp + 1e-16)
        shape = [1, 1, 1]
        shape[axis] = -1
        gain = gain * ((1 - s) * prior / ((1 - s) ** 2 * prior + s ** 2 + 1e-16)).reshape(shape)
    gain = gain / gain.mean()
    return np.fft.ifftn(np.fft.fftn(x, axes=(0, 1, 2)) * gain[..., None], axes=(0, 1, 2)).real


@pytest.mark.parametrize("batch", [1, 2])
def test_seacache_decides_on_the_filtered_input_latents_and_extrapolates_the_residual(setup, make, monkeypatch,
                                                                                      batch):
    """The policy fills SeaCache's per-call record itself (diffusers fills it in a model-forward hook our split
    forward never calls): the gate must read each call's own sigma and its input latents, conditioning frame
    included, every sample's (a whole-batch decision on the mean of their changes), and a skipped call must return
    its input plus the residual extrapolated from the last two computed calls. Pinned against a numpy reference of
    the indicator and the gate, on the latents the cached run fed in."""
    dit = setup[0]
    if batch > 1:  # samples that differ: a vector env's
        noise, cond, emb, neg = tiny_inputs(batch=batch, seed=1)
        setup = (dit, dict(cond_latents=cond, num_cond_frames=1), noise, emb, neg)
    seen, stacks = [], []
    embed = dit.embed
    monkeypatch.setattr(dit, "embed", lambda **kw: seen.append(kw["hidden_states"].numpy().copy()) or embed(**kw))
    p = make("seacache", threshold=0.6, max_consecutive_cached=0, retention_steps=2)
    run_stack, before, meta, held = p.run_stack, p._before_call, [], []
    monkeypatch.setattr(p, "run_stack", lambda stack, call: stacks.append(
        (stack.x.clone(), run_stack(stack, call))) or held.append(any(  # tensors of the call kept past it
            st.gen_input is not None or st.cached_gen_residual is not None
            for st in p._manager._state_cache.values())) or stacks[-1][1])
    monkeypatch.setattr(p, "_before_call", lambda *a: before(*a) or meta.append(p._shared.forward_metadata))
    out = run(setup, p)
    records = out.sample_records(0)
    assert [(m.step_index, m.sigma, m.num_inference_steps) for m in meta] == [
        (r.step, r.sigma, STEPS) for r in records]
    assert all(len(m.raw_vision) == batch and all(np.array_equal(v.numpy(), x) for v, x in zip(m.raw_vision, lat))
               for m, lat in zip(meta, seen))
    computed = [r.computed for r in records]
    assert all([r.computed for r in out.sample_records(i)] == computed for i in range(batch))
    assert held == [False] * STEPS
    # the reference gate: steps 0-1 retained, the last step computes, otherwise compute once the relative L1 change
    # of the indicator, accumulated since the last computed call, reaches the threshold
    expected, acc, prev, drifts = [], 0.0, None, []
    for r, lat in zip(records, seen):
        ind = [_sea_indicator(x, r.sigma) for x in lat]
        if r.step < 2 or r.step == STEPS - 1 or prev is None:
            compute = True
        else:
            d = np.mean([np.abs(a - b).mean() / (np.abs(b).mean() + 1e-16) for a, b in zip(ind, prev)])
            drifts.append(d)
            compute = acc + d >= 0.6
            acc = 0.0 if compute else acc + d
        if compute:
            acc = 0.0
        expected.append(compute)
        prev = ind
    assert computed == expected
    assert 0 < computed.count(False) < STEPS - 3 and min(drifts) < 0.6 < max(drifts)  # the threshold decides here
    assert seen[0].shape[2] == 3  # the conditioning frame is in the latents the gate read (1 + 2 generated)
    history = []  # (step, residual) of computed calls
    for r, (x, h) in zip(records, stacks):
        if r.computed:
            history.append((r.step, h - x))
            continue
        (s0, r0), (s1, r1) = history[-2:]
        assert torch.allclose(h, x + r1 + (r1 - r0) * (r.step - s1) / (s1 - s0), atol=1e-6)
        assert r.blocks_run == 0


def test_pab_reuses_each_attention_on_its_own_schedule_in_the_step_based_timestep_range(setup, make, monkeypatch):
    """At 10 steps the step-based timestep 1000 * (1 - step / 10) lies strictly inside (100, 800) at steps 3-8. Each
    hooked module counts every call of its branch and computes outside the range or when its count is a multiple
    of its skip range: self-attention (2) at steps 0-2, 4, 6, 8, 9; cross-attention (6) at steps 0-2, 6, 9."""
    dit = setup[0]
    block = dit.transformer.transformer_blocks[0]
    ran = []
    handles = [m.register_forward_pre_hook(lambda *_, tag=tag: ran[-1].add(tag))
               for tag, m in (("attn1", block.attn1.to_q), ("attn2", block.attn2.to_q))]
    p = make("pab")
    run_stack = p.run_stack
    monkeypatch.setattr(p, "run_stack", lambda stack, call: ran.append(set()) or run_stack(stack, call))
    try:
        out = run(setup, p)
    finally:
        for h in handles:
            h.remove()
    assert [s for s, r in enumerate(ran) if "attn1" in r] == [0, 1, 2, 4, 6, 8, 9]
    assert [s for s, r in enumerate(ran) if "attn2" in r] == [0, 1, 2, 6, 9]
    assert [r.computed for r in out.records] == [s in (0, 1, 2, 6, 9) for s in range(STEPS)]
    nb = len(dit.transformer.transformer_blocks)
    assert all(r.blocks_run == nb for r in out.records)  # the blocks (and their feed-forwards) still run



@pytest.mark.parametrize("name", HOOKS)
def test_a_model_switch_inside_a_prediction_is_refused(setup, make, name):
    """diffusers' hook state holds the model's features and schedule (PAB's and FasterCache's per-branch attention
    states would feed model A's attention outputs to model B). A new model is taken at the start of a prediction
    (`test_hooks_follow_the_model`); inside one it is an error, not a silent mix."""
    dit, base, noise, emb, _ = setup
    other = DiT(tiny_transformer(seed=1))

    class Switch:  # model A for steps 0-3, model B from step 4 on, in one `denoise` (one `begin`)
        transformer, calls = dit.transformer, 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return (dit if self.calls <= 4 else other)(*args, **kwargs)

    p = make(name, **SETTINGS[name][0])
    with pytest.raises(ValueError, match=f"{name}: the model changed inside a prediction"):
        denoise(Switch(), default_scheduler(), noise, emb, num_steps=STEPS, policy=p, **base)
    out = denoise(other, default_scheduler(), noise, emb, num_steps=STEPS, policy=p, **base)  # the next one: fine
    assert any(not r.computed for r in out.records)
