"""Typed cache state, the probe engine DiCache and WorldCache share, and WorldCache's reuse across chunks."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from worldcache.cache import POLICIES, make_policy, policy_names
from worldcache.cache.base import ModelCall, PolicyState
from worldcache.cache.dicache import DiCache
from worldcache.cache.probe import ProbeEngine, ProbePolicy, ProbeState
from worldcache.cache.worldcache import WorldCache
from worldcache.sampler import denoise, default_scheduler
from worldcache.tiny import tiny_inputs

from test_formulas import OFF, ScriptedStack, tokens


def call(policy, stack, step, num_steps, branch="cond"):
    rec = ModelCall.new(stack.x.shape[0], step=step, num_steps=num_steps, branch=branch)
    return policy.run_stack(stack, rec), rec[0]


# --- typed state ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["worldcache", "dicache", "teacache", "easycache", "fora", "fastercache"])
def test_every_policy_state_is_a_dataclass_whose_reset_restores_the_defaults(name):
    policy_names()
    cls = POLICIES[name].state_cls
    assert dataclasses.is_dataclass(cls) and issubclass(cls, PolicyState) and cls is not PolicyState
    st, fresh = cls(), cls()
    for f in dataclasses.fields(st):  # every field away from its default ...
        setattr(st, f.name, {"changed": 1} if isinstance(getattr(st, f.name), dict) else [1] if isinstance(
            getattr(st, f.name), list) else 7)
    st.reset()  # ... and back
    for f in dataclasses.fields(st):
        assert getattr(st, f.name) == getattr(fresh, f.name), f.name
    if any(isinstance(getattr(fresh, f.name), (list, dict)) for f in dataclasses.fields(fresh)):
        st.reset()  # a reset gives new containers, never shared ones
        mutable = next(f.name for f in dataclasses.fields(st) if isinstance(getattr(st, f.name), (list, dict)))
        assert getattr(st, mutable) is not getattr(cls(), mutable)


@pytest.mark.parametrize("name", ["worldcache", "dicache", "teacache", "easycache", "fora"])
def test_policies_keep_typed_state_per_branch_and_sample_and_begin_clears_it(name):
    p = make_policy(name, **({"warmup_steps": 0} if name == "fora" else {}))
    p.begin(10)
    # a batch of two samples whose block stacks add different residuals (10 and 20): one state each
    x = torch.cat([tokens(1, 1), tokens(2, 2)])
    stack = ScriptedStack(x, rest=torch.cat([tokens(10, 10), tokens(20, 20)]), mod=x)
    call(p, stack, 0, 10)
    call(p, stack, 0, 10, branch="uncond")
    assert set(p._states) == {"cond", "uncond"}
    assert all(type(st) is p.state_cls and len(sts) == 2 for sts in p._states.values() for st in sts)
    for branch in ("cond", "uncond"):
        a, b = p._states[branch]
        assert a is not b
        residual = (lambda st: st.residual) if hasattr(a, "residual") else (lambda st: st.residuals[-1])
        assert residual(a).flatten().tolist() == [10, 10] and residual(b).flatten().tolist() == [20, 20]
    p.begin(10)
    assert p._states == {}


# --- the shared probe engine ------------------------------------------------------------------------------------
def test_dicache_and_worldcache_share_the_probe_engine_not_a_subclass():
    assert not issubclass(DiCache, WorldCache) and not issubclass(WorldCache, DiCache)
    for name in ("dicache", "worldcache"):
        p = make_policy(name)
        assert isinstance(p, ProbePolicy) and isinstance(p.engine, ProbeEngine) and p.state_cls is ProbeState


def test_worldcache_with_every_part_off_makes_dicache_decisions_and_outputs(tiny_dit):
    # the ablation's "-all" row: the same engine with WorldCache's additions off is DiCache, to the bit
    noise, cond, emb, _ = tiny_inputs(batch=2, seed=3)
    outs = []
    for p in (make_policy("dicache", threshold=0.3, ret_ratio=0.1),
              make_policy("worldcache", threshold=0.3, ret_ratio=0.1, **OFF)):
        outs.append(denoise(tiny_dit, default_scheduler(), noise, emb, num_steps=12, policy=p, cond_latents=cond,
                            num_cond_frames=1))
    a, b = outs
    assert [r.computed for r in a.records] == [r.computed for r in b.records]
    assert 0 < a.computed_fraction < 1
    assert [r.gamma for r in a.records if not r.computed] == [r.gamma for r in b.records if not r.computed]
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)


# --- across chunks ----------------------------------------------------------------------------------------------
N = 4  # steps per prediction: warm-up ret_ratio 0.9 -> steps 0..3 are all warm-up, so only a cross-chunk reuse
       # can skip; step 3 is the forced final step


def chunk(policy, index, probe, rest, x=(1.0, 1.0), steps=N):
    """One prediction of `steps` calls; `probe` and `rest` are the residuals of every step, or lists of one per step."""
    probes = probe if isinstance(probe, list) else [probe] * steps
    rests = rest if isinstance(rest, list) else [rest] * steps
    policy.begin_chunk(index)
    policy.begin(steps)
    return [call(policy, ScriptedStack(tokens(*x), tokens(*pr), tokens(*rs)), s, steps)
            for s, (pr, rs) in enumerate(zip(probes, rests))]


def test_cross_chunk_reuses_the_previous_chunks_rest_residual_at_the_same_step():
    p = make_policy("worldcache", threshold=1e9, ret_ratio=0.9, cross_chunk=True, **OFF)
    first = chunk(p, 0, probe=(1, 2), rest=(10, 20))
    assert [r.computed for _, r in first] == [True] * N  # nothing to reuse in the first chunk
    second = chunk(p, 1, probe=(1.5, 2), rest=(99, 99))
    assert [r.computed for _, r in second] == [False, False, False, True]  # the forced final step computes
    # a reused call: this chunk's probe output + the previous chunk's rest residual (not this chunk's 99s)
    torch.testing.assert_close(second[0][0], tokens(2.5, 3) + tokens(10, 20))
    # drift: mean|p_now - p_then| / mean|p_then| = mean(0.5, 0) / mean(2, 3) = 0.25 / 2.5
    assert second[0][1].drift == pytest.approx(0.1, abs=1e-12)
    torch.testing.assert_close(second[3][0], tokens(2.5, 3) + tokens(99, 99))


def test_cross_chunk_reuse_reads_the_same_step_against_the_phase_aware_tau_and_keeps_the_chunks_drift():
    """5 steps, warm-up 2 (steps 0-1), step 4 forced; tau_s = 0.1 (1 + 4 s / 5) = 0.1, 0.18, 0.26, 0.34. x = (1, 1);
    the probe outputs p and the rest residuals differ per step. Chunk 0 computes every step (p doubles each step:
    drift 1). In chunk 1:
      step 0: p (3, 3) vs chunk 0's (2, 3): 0.5 / 2.5 = 0.2 >= 0.1 -> computes (residual 2 + 99);
      step 1: (4, 4.5) vs (4, 6): 0.75 / 5 = 0.15 < 0.18 -> reuses step 1's rest (11, 21) (a flat tau 0.1 would
              compute; step 0's entry, 0.7 away, would be refused); in warm-up, nothing accumulated (0);
      step 2: the chunk's own drift vs step 1, 4.75 / 4.25 = 19/17 >= 0.26, refuses; (8, 10) vs (8, 12): 0.1 < 0.26
              -> reuses step 2's rest (12, 22), keeping 19/17 as its accumulated drift;
      step 3: probe as step 2: accumulated 19/17 + 0 >= 0.34 (had the reuse reset it, 0 would skip); vs chunk 0's
              (16, 24): 0.55 >= 0.34 -> computes."""
    p = make_policy("worldcache", threshold=0.1, ret_ratio=0.4, cross_chunk=True, **{**OFF, "phase_aware": True})
    num = 5
    outputs = lambda ps: [tuple(v - 1 for v in o) for o in ps]  # noqa: E731  (probe outputs, x = (1, 1) + residual)
    first = chunk(p, 0, outputs([(2, 3), (4, 6), (8, 12), (16, 24), (32, 48)]), [(10 + s, 20 + s) for s in range(num)],
                  steps=num)
    assert [r.computed for _, r in first] == [True] * num
    second = chunk(p, 1, outputs([(3, 3), (4, 4.5), (8, 10), (8, 10), (9, 9)]), (99, 99), steps=num)
    assert [r.computed for _, r in second] == [True, False, False, True, True]
    (o1, r1), (o2, r2), (_, r3) = second[1:4]
    torch.testing.assert_close(o1, tokens(4, 4.5) + tokens(11, 21))  # this probe + chunk 0's step-1 rest
    torch.testing.assert_close(o2, tokens(8, 10) + tokens(12, 22))
    assert (r1.drift, r1.threshold) == pytest.approx((0.15, 0.18), abs=1e-12)
    assert (r2.drift, r2.threshold) == pytest.approx((0.1, 0.26), abs=1e-12)
    assert (r3.drift, r3.threshold) == pytest.approx((19 / 17, 0.34), abs=1e-12)


def test_cross_chunk_state_is_dropped_for_a_new_rollout_an_unannounced_prediction_and_when_off():
    p = make_policy("worldcache", threshold=1e9, ret_ratio=0.9, cross_chunk=True, **OFF)
    chunk(p, 0, probe=(1, 2), rest=(10, 20))
    assert all(r.computed for _, r in chunk(p, 0, probe=(1, 2), rest=(10, 20)))  # chunk 0: a new rollout
    assert not all(r.computed for _, r in chunk(p, 1, probe=(1, 2), rest=(10, 20)))  # chunk 1 carries it ...
    assert p.previous != {}
    p.begin(N)  # ... a prediction nobody announced as the next chunk does not (begin sets the chunk back to 0)
    assert p.previous == {}
    off = make_policy("worldcache", threshold=1e9, ret_ratio=0.9, **OFF)
    chunk(off, 0, probe=(1, 2), rest=(10, 20))
    assert off._states["cond"][0].trajectory == {}  # nothing kept when off
    assert all(r.computed for _, r in chunk(off, 1, probe=(1, 2), rest=(10, 20))) and off.previous == {}


def test_cross_chunk_refuses_when_the_probe_drifted_past_the_threshold():
    p = make_policy("worldcache", threshold=0.1, ret_ratio=0.9, cross_chunk=True, **OFF)
    chunk(p, 0, probe=(1, 2), rest=(10, 20))
    assert all(r.computed for _, r in chunk(p, 1, probe=(3, 5), rest=(10, 20)))  # drift 1 > 0.1


def test_cross_chunk_reuse_obeys_the_consecutive_skip_cap_and_the_hf_veto():
    """Reuses from the previous chunk are skips: with a cap of 1 the second chunk alternates reuse and compute (it
    reused 3 calls in a row uncapped, above); the veto at 0 forbids every one after the first call, whose input has
    no previous one to compare with (x = (1, 3) doubles each step: its Laplacian, (2, -2) at first, moves)."""
    p = make_policy("worldcache", threshold=1e9, ret_ratio=0.9, cross_chunk=True, max_consecutive_skips=1, **OFF)
    chunk(p, 0, probe=(1, 2), rest=(10, 20))
    assert [r.computed for _, r in chunk(p, 1, probe=(1.5, 2), rest=(99, 99))] == [False, True, False, True]
    p = make_policy("worldcache", threshold=1e9, ret_ratio=0.9, cross_chunk=True, hf_veto=True, hf_threshold=0.0,
                    **OFF)
    for index in (0, 1):
        p.begin_chunk(index)
        p.begin(N)
        recs = [call(p, ScriptedStack(tokens(1, 3) * 2 ** s, tokens(1, 2), tokens(10, 20)), s, N)[1] for s in range(N)]
    assert [r.computed for r in recs] == [False, True, True, True]


def test_the_engine_keeps_residuals_in_fp32_and_low_precision_drift_stays_finite():
    """Residuals are kept in fp32 from fp16/bf16 activations (an extrapolation multiplies their rounding: a parabola 9
    steps out by weights summing to 199). x = 3; steps 0-1 (warm-up) compute probe residuals 2, 3 and block-stack
    residuals 7, 9; step 2 (probe residual 4) skips: γ = <4-2, 3-2> / <3-2, 3-2> = 2, clamped to 1.8, so the output is
    3 + 7 + 1.8 (9 - 7) = 13.6. Those sums, over 20000 x 64 fp16 values, overflow 65504 (γ was inf / inf = NaN), and
    fp16 rounds the 1e-12 floors to 0 (0 / 0 = NaN drift for zero probes)."""
    from worldcache.cache.base import rel_l1

    for dtype in (torch.float16, torch.bfloat16):
        p = make_policy("worldcache", threshold=1e9, ret_ratio=0.3, **{**OFF, "blend": True})  # warm-up: 2 of 6
        p.begin(6)
        x = torch.full((1, 20000, 64), 3.0, dtype=dtype)
        outs = [call(p, TypedStack(x, torch.full_like(x, 2.0 + s), torch.full_like(x, 5.0 + s)), s, 6)
                for s in range(3)]
        st = p._states["cond"][0]
        assert all(r.dtype == torch.float32 for r in st.residuals + st.probe_residuals)
        assert [r.computed for _, r in outs] == [True, True, False]
        out, rec = outs[2]
        assert rec.gamma == pytest.approx(1.8) and out.dtype == dtype
        assert torch.equal(out, torch.full_like(x, 13.6))  # rounded once, to the weights' dtype
        zero = torch.zeros(1, 4, 8, dtype=dtype)
        assert float(rel_l1(zero, zero)) == 0.0
        assert make_policy("worldcache")._drift(zero, zero, (1, 2, 2)) == (0.0, 1.0)


class TypedStack(ScriptedStack):
    """`ScriptedStack` in the dtype of its tensors (it computes in float64)."""

    def __init__(self, x, probe, rest):
        super().__init__(x.double(), probe.double(), rest.double())
        self.x, self.probe, self.rest = x, probe, rest


def test_rollout_carries_cross_chunk_state_between_its_chunks(tmp_path):
    from worldcache.world_model import WorldModel, WorldModelSpec

    spec = WorldModelSpec(height=32, width=40, chunk=4, num_steps=6)
    model = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    frame = torch.zeros(1, 32, 40, 3, dtype=torch.uint8)
    actions = torch.zeros(1, 8, spec.action_dim)
    seen = []

    class Spy(WorldCache):
        def begin(self, num_steps):
            super().begin(num_steps)
            seen.append(sorted(self.previous))

    p = Spy(make_policy("worldcache", cross_chunk=True).config)
    model.rollout(frame, actions, policy=p)
    assert seen == [[], ["cond"]]  # chunk 1 sees chunk 0's trajectory
    model.predict(frame, actions[:, :4], policy=p)
    assert seen[-1] == []
