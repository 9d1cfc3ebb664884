"""Ray rollouts into the Zarr store: layout, crash recovery, resume, reading, inspection, policies.

One in-process Ray cluster (2 CPUs) for the module; a tiny random model (16x24 frames, 4 actions per chunk,
4 denoising steps) keeps every prediction at a few tens of milliseconds, so actor start-up dominates."""
import dataclasses
import os
import shutil
import signal
import time

import numpy as np
import pytest
import ray
import torch
from gymnasium import spaces

from worldcache.cache import CallRecord
from worldcache.envs.cosmos_env import START_FRAMES
from worldcache.rollouts import (POLICIES, RolloutConfig, WindowDataset, bench_rollouts, episode_id,
                                 inspect_store, make_policy, open_store, run_rollouts)
from worldcache.rollouts.actor import RECORD_ARRAYS
from worldcache.rollouts.config import policy_rng
from worldcache.rollouts.driver import format_summary
from worldcache.rollouts.identity import ROLLOUT_FORMAT, checkpoint_files, model_sha256
from worldcache.state_decoder import StateDecoder, StateDecoderConfig
from worldcache.world_model import WorldModel, WorldModelSpec

H, W, K, A = 16, 24, 4, 7
STEPS, CALLS = 2, 4  # env steps per episode, denoising steps (= model calls, no guidance) per step


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    # workers import the test policies below as "test_rollouts:..." (pytest puts tests/ on the driver's path only)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False,  # no GPU: the tests' cluster is alike on every host
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    spec = WorldModelSpec(height=H, width=W, chunk=K, num_steps=CALLS, action_dim=A, action_low=[-2.0] * A,
                          action_high=[2.0] * A)
    WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8).save_pretrained(path)
    np.save(path / START_FRAMES, np.random.default_rng(0).integers(0, 256, (5, H, W, 3), dtype=np.uint8))
    torch.manual_seed(0)
    StateDecoder(StateDecoderConfig(height=H, width=W)).save(path)
    return path


def config(ckpt, out, **kw):
    return {"checkpoint": str(ckpt), "out": str(out), "num_steps": CALLS, "steps": STEPS, "episodes": 5,
            "workers": 2, "num_envs": 2, "num_cpus": 1, "policy": "random", "cache": "worldcache", **kw}


@pytest.fixture(scope="module")
def store_run(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("roll") / "store.zarr"
    summary = run_rollouts(config(ckpt, out), progress=False)
    return out, summary


class CrashOnce:
    """Random actions, but the process dies (os._exit) on its second step the first time any worker runs it."""

    def __init__(self, marker: str):
        self.marker, self.calls = marker, 0

    def __call__(self, obs, rngs):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # mid-episode: the first step is done, nothing of this batch is written
        return np.stack([r.uniform(-1, 1, (K, A)) for r in rngs]).astype(np.float32)


def half_policy(obs, rngs):
    return np.full((len(obs), K, A), 0.5, np.float32)


class FailSecondBatch:
    """Constant actions; raises when an actor starts its second batch of episodes (counted per process: each batch
    builds a new policy, and each actor is a process of its own)."""

    batches = 0

    def reset(self, rngs):
        FailSecondBatch.batches += 1
        if FailSecondBatch.batches == 2:
            raise RuntimeError("policy failed on purpose")

    def __call__(self, obs, rngs):
        return half_policy(obs, rngs)


class CrashAfterAWrite:
    """Constant actions; once, at the start of an actor's second batch, the process dies (os._exit) after waiting
    until an episode of its first batch is in the store: an actor that dies having written episodes."""

    batches = 0  # per process, as FailSecondBatch's

    def __init__(self, marker: str, out: str):
        self.marker, self.out = marker, out

    def reset(self, rngs):
        CrashAfterAWrite.batches += 1
        if CrashAfterAWrite.batches == 2 and not os.path.exists(self.marker):
            deadline = time.time() + 60
            while not open_store(self.out).episode_ids() and time.time() < deadline:
                time.sleep(0.05)
            open(self.marker, "w").close()
            os._exit(1)

    def __call__(self, obs, rngs):
        return half_policy(obs, rngs)


def groups(out):
    """Every episode group on disk, complete or not."""
    return sorted(d.name for d in (out / "episodes").iterdir() if d.is_dir())


# --- runner -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_layout(ckpt, store_run):
    out, summary = store_run
    assert summary["episodes_written"] == 5 and summary["episodes_skipped"] == 0 and summary["workers"] == 2
    assert summary["steps"] == 5 * STEPS and 0 < summary["write_share"] < 1
    assert summary["store_s"] > 0 and summary["write_s"] > 0 and summary["nodes"] == 1
    store = open_store(out)
    assert store.episode_ids() == [episode_id(i, 0) for i in range(5)]
    ro = store.attrs["rollout"]
    assert ro["model_sha256"] == model_sha256(ckpt) and ro["cache"]["policy"] == "worldcache"
    assert ro["env"]["action_shape"] == [K, A] and ro["policy"] == "random" and ro["seed"] == 0
    assert ro["format_version"] == ROLLOUT_FORMAT == 2 and ro["env"]["fps"] == 20  # WorldModelSpec default
    want = {"obs": ((STEPS + 1, H, W, 3), np.uint8), "actions": ((STEPS, K, A), np.float32),
            "rewards": ((STEPS,), np.float32), "terminated": ((STEPS,), bool), "truncated": ((STEPS,), bool),
            "frames": ((STEPS, K, H, W, 3), np.uint8), "model_ms": ((STEPS,), np.float32),
            "denoise_ms": ((STEPS,), np.float32), "noise_seed": ((STEPS,), np.int64),
            **{f"cache/{k}": ((STEPS, CALLS), np.dtype(t)) for k, t in RECORD_ARRAYS.items()}}
    # every CallRecord field is kept: arrays, or (the same at every env step) the cache_calls attrs
    assert set(RECORD_ARRAYS) | {"step", "branch", "num_steps", "sample"} == set(CallRecord.field_names())
    seeds, computed = set(), []
    decoder = StateDecoder.load(ckpt)  # the env's default reward_fn is this decoder's chunk_reward
    for i, eid in enumerate(store.episode_ids()):
        ep = store[eid]
        assert ep["attrs"]["index"] == i
        computed.append(ep["cache/computed"])
        assert {k: (v.shape, v.dtype) for k, v in ep.items() if k != "attrs"} == want
        assert ep["attrs"]["cache_calls"] == {"step": list(range(CALLS)), "branch": ["cond"] * CALLS}
        assert ep["attrs"]["device"] == "cpu"  # where it was made: a resume on a GPU cluster would mix devices
        c = ep["cache/computed"]
        assert (ep["cache/blocks_run"][c] == 2).all() and (ep["cache/blocks_run"][~c] == 1).all()  # probe only
        assert np.isfinite(ep["cache/sigma"]).all() and (ep["cache/wall_ms"] > 0).all()
        # the line's gamma on every skip: CALLS steps are below the default parabola_min_steps
        assert np.isnan(ep["cache/gamma"][c]).all() and np.isfinite(ep["cache/gamma"][~c]).all()
        assert ep["truncated"][-1] and not ep["terminated"].any()
        assert (ep["obs"][1:] == ep["frames"][:, -1]).all()  # obs: the last frame of each chunk
        assert (ep["model_ms"] > 0).all() and ep["rewards"].std() > 0
        # "random": each step's chunk drawn uniformly in the bounds from the episode's own generator, in step order
        rng = policy_rng(0, i)
        drawn = np.stack([rng.uniform(-2.0, 2.0, (K, A)) for _ in range(STEPS)]).astype(np.float32)
        np.testing.assert_array_equal(ep["actions"], drawn)
        # each step's reward is this episode's: the decoder's reward of its own frames and actions
        rewards = [decoder.chunk_reward(ep["frames"][t], ep["actions"][t]) for t in range(STEPS)]
        np.testing.assert_allclose(ep["rewards"], rewards, rtol=1e-5, atol=1e-6)
        seeds.add(ep["attrs"]["seed"])
    assert len(seeds) == 5
    # the run's skip rate: the skipped share of all model calls of the 5 episodes
    computed = np.concatenate(computed)
    assert summary["mean_skip_rate"] == pytest.approx(1 - computed.sum() / computed.size, abs=1e-12)
    assert 0 < summary["mean_skip_rate"] < 1


@pytest.mark.slow
def test_resume_writes_only_missing(ckpt, store_run, tmp_path):
    out = tmp_path / "resume.zarr"
    shutil.copytree(store_run[0], out)
    before = {e: os.path.getmtime(out / "episodes" / e / "zarr.json") for e in open_store(out).episode_ids()}
    old = open_store(out)[episode_id(2, 0)]
    # compile is free, as num_envs: the 2 new episodes come from actors with compiled blocks
    summary = run_rollouts(config(ckpt, out, compile=True), episodes=7, progress=False)
    assert summary["episodes_written"] == 2 and summary["episodes_skipped"] == 5
    store = open_store(out)
    assert store.episode_ids() == [episode_id(i, 0) for i in range(7)]
    assert groups(out) == store.episode_ids()  # no duplicates, no leftovers
    assert {e: os.path.getmtime(out / "episodes" / e / "zarr.json") for e in before} == before
    new = store[episode_id(2, 0)]
    assert all(np.array_equal(old[k], new[k], equal_nan=True) for k in old if k != "attrs")
    again = run_rollouts(config(ckpt, out), episodes=7, progress=False)
    assert again["episodes_written"] == 0  # nothing to do, and the summary says so (no rates of nothing)
    assert format_summary(again) == f"{out}: all 7 episode(s) already there; nothing to roll out"
    assert format_summary(summary).startswith(f"{out}: 2 episodes written, 5 already there; ")
    assert "episodes/s, 1 worker on 1 node); mean skip rate" in format_summary({**summary, "workers": 1, "nodes": 1})
    assert "episodes/s, 2 workers on 3 nodes); mean skip rate" in format_summary({**summary, "workers": 2, "nodes": 3})


def test_store_with_other_settings_is_refused(ckpt, store_run, tmp_path):
    out = tmp_path / "other.zarr"
    shutil.copytree(store_run[0], out)
    with pytest.raises(ValueError, match="num_steps|env"):
        run_rollouts(config(ckpt, out, num_steps=CALLS + 1), progress=False)
    with pytest.raises(ValueError, match="bogus"):
        RolloutConfig.load({"bogus": 1})
    with pytest.raises(ValueError, match="compile"):
        RolloutConfig.load({"compile": "yes"})
    for bad in (dict(seed=-1), dict(seed=1.5), dict(max_task_retries=-1), dict(max_restarts=True)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.*must be an integer >= 0"):
            RolloutConfig.load(bad)
    with pytest.raises(ValueError, match="policy_kwargs=.*must be a mapping"):
        RolloutConfig.load({"policy_kwargs": [0.5]})
    for bad, match in [(dict(num_steps=2.5), "num_steps=2.5: must be an integer >= 1, or null"),
                       (dict(num_steps="10"), "num_steps='10'"), (dict(num_steps=-3), "num_steps=-3"),
                       (dict(torch_threads=-1), "torch_threads=-1"), (dict(num_cpus="2"), "num_cpus='2': must be"),
                       (dict(num_cpus=0), "num_cpus=0: must be a number > 0"),
                       (dict(num_gpus=-1), "num_gpus=-1: must be a number >= 0"),
                       (dict(save_chunk_frames="false"), "save_chunk_frames='false': must be true or false"),
                       (dict(out=None), "out=None: must be a store path"),
                       (dict(checkpoint=1e5), r"checkpoint=100000.0: must be a model folder, or null"),
                       # the episodes' seeds are 32-bit: refused here, not in the actors after the store is made
                       (dict(seed=2**32, episodes=1), r"seed=4294967296, episodes=1: seeds and keys must be in")]:
        with pytest.raises(ValueError, match=match):
            RolloutConfig.load(bad)
    assert RolloutConfig.load({"out": tmp_path / "p.zarr", "num_cpus": 0.5}).out == str(tmp_path / "p.zarr")
    assert RolloutConfig.load({"seed": 2**32 - 1, "episodes": 1}).seed == 2**32 - 1


@dataclasses.dataclass
class ScaledPolicy:
    scale: float = 0.1

    def __call__(self, obs, rngs):
        return np.zeros((len(obs), K, A), np.float32)


def test_a_dataclass_policy_object_reaches_the_actors_as_itself(ckpt, tmp_path):
    from worldcache.rollouts.driver import _resolve

    cfg = _resolve(RolloutConfig.load(config(ckpt, tmp_path / "d.zarr", policy=ScaledPolicy(0.3))), workers=1)
    assert cfg.policy == ScaledPolicy(0.3) and cfg.workers == 1  # not dataclasses.asdict's {"scale": 0.3}
    assert RolloutConfig(**cfg.as_kwargs()).policy == ScaledPolicy(0.3)  # what the actors are built from


class Ramp:
    """Keeps a step count and has no reset: its actions are the count. It holds a module, as TorchPolicy does
    (copy.deepcopy cannot copy one)."""

    def __init__(self, scale: float = 0.01):
        self.t, self.scale, self.np = 0, scale, np

    def __call__(self, obs, rngs):
        self.t += 1
        return np.full((len(obs), K, A), self.t * self.scale, np.float32)


@pytest.mark.parametrize("policy", ["test_rollouts:Ramp", Ramp(0.01)], ids=["module:Class", "object"])
def test_a_policys_state_never_crosses_batches(ckpt, tmp_path, policy):
    """Episode 1 after episode 0 on one worker equals episode 1 alone on a fresh one (a resumed run's, say): the
    policy is built afresh per batch, a policy object copied, so its step count restarts."""
    from worldcache.rollouts.actor import RolloutWorker
    from worldcache.rollouts.store import EpisodeStore

    acts = {}
    for name, batches in (("after", [[0], [1]]), ("alone", [[1]])):
        out = str(tmp_path / f"{name}.zarr")
        EpisodeStore(out, mode="a")
        w = RolloutWorker(RolloutConfig.load(config(ckpt, out, policy=policy, num_envs=1)).as_kwargs(),
                          checkpoint_files(ckpt), "cpu", None)  # as_kwargs: the policy object itself
        for b in batches:
            w.run(b)
        w.flush()
        acts[name] = EpisodeStore(out, mode="r").load_episode(episode_id(1, 0), keys=["actions"])["actions"][:, 0, 0]
    np.testing.assert_allclose(acts["alone"], 0.01 * np.arange(1, STEPS + 1))
    np.testing.assert_array_equal(acts["after"], acts["alone"])
    if not isinstance(policy, str):
        assert policy.t == 0  # the config's object itself is never stepped


def test_a_failed_batch_keeps_the_finished_episodes(ckpt, tmp_path):
    # one actor: batch 1 (episodes 0, 1) finishes and is queued for writing, batch 2 fails; the driver lets the
    # writer finish before it stops the actor, so episodes 0 and 1 are complete and a rerun adds only 2 and 3
    out = tmp_path / "failed.zarr"
    cfg = config(ckpt, out, episodes=4, workers=1, policy="test_rollouts:FailSecondBatch")
    with pytest.raises(Exception, match="policy failed on purpose"):
        run_rollouts(cfg, progress=False)
    assert open_store(out).episode_ids() == [episode_id(0, 0), episode_id(1, 0)]
    assert run_rollouts(cfg, progress=False)["episodes_written"] == 2  # one batch now: this actor's first
    assert open_store(out).episode_ids() == [episode_id(i, 0) for i in range(4)]


def test_a_write_that_fails_for_good_is_not_retried_round_after_round(ckpt, tmp_path):
    # a file where episode 2's group goes: its write fails every time; the others land in round 1, episode 2 fails
    # again in round 2, which writes nothing, so the driver stops there instead of rolling it out in every round
    from worldcache.rollouts.store import EpisodeStore

    out = tmp_path / "blocked.zarr"
    EpisodeStore(str(out), mode="a")
    (out / "episodes").mkdir(exist_ok=True)
    (out / "episodes" / episode_id(2, 0)).write_text("not an episode")
    cfg = config(ckpt, out, episodes=4, workers=1, max_task_retries=5)
    with pytest.raises(RuntimeError, match=r"1 episodes could not be written after 2 round\(s\).*FileExistsError"):
        run_rollouts(cfg, progress=False)
    assert open_store(out).episode_ids() == [episode_id(i, 0) for i in (0, 1, 3)]


def test_a_worker_that_cannot_see_the_lease_refuses_to_write(ckpt, tmp_path):
    # a node whose `out` is another disk than the driver's (a local path on a multi-node cluster) sees no lease
    from dataclasses import asdict

    from worldcache.rollouts.actor import RolloutWorker
    from worldcache.rollouts.store import EpisodeStore, acquire_lease, release_lease

    out = str(tmp_path / "leased.zarr")
    EpisodeStore(out, mode="a")  # as the driver: the store, then its lease
    token = acquire_lease(out)
    cfg = asdict(RolloutConfig.load(config(ckpt, out)))
    with pytest.raises(ValueError, match="does not see the driver's lease"):
        RolloutWorker(cfg, checkpoint_files(ckpt), "cpu", "another-token")
    RolloutWorker(cfg, checkpoint_files(ckpt), "cpu", token)  # the holder's token: fine
    release_lease(out, token)


def test_a_bad_policy_fails_before_the_store_is_made(ckpt, tmp_path):
    # a keyword typo: refused on the driver, before the store's attrs or any actor (no Ray needed)
    out = tmp_path / "typo.zarr"
    with pytest.raises(ValueError, match="policy 'sinusoid' with policy_kwargs .*'amplitud'"):
        run_rollouts(config(ckpt, out, policy="sinusoid", policy_kwargs={"amplitud": 0.5}), progress=False)
    with pytest.raises(ValueError, match="unknown policy 'sinusiod'"):
        run_rollouts(config(ckpt, out, policy="sinusiod"), progress=False)
    assert not out.exists()


def test_a_failed_first_run_leaves_no_store(ckpt, tmp_path):
    # 4 workers of 1 CPU on the 2-CPU cluster: refused after the store was made; the store goes with the error, so
    # a rerun with other settings is not refused by an empty store's attrs
    out = tmp_path / "short.zarr"
    with pytest.raises(ValueError, match="4 workers need"):
        run_rollouts(config(ckpt, out, workers=4, episodes=8), progress=False)
    assert not out.exists()
    assert run_rollouts(config(ckpt, out, episodes=1, num_steps=CALLS + 1), progress=False)["episodes_written"] == 1
    # a store that was there before the run is kept, even with no episode in it
    from worldcache.rollouts.store import EpisodeStore

    EpisodeStore(str(tmp_path / "made.zarr"), mode="a")
    with pytest.raises(ValueError, match="4 workers need"):
        run_rollouts(config(ckpt, tmp_path / "made.zarr", workers=4, episodes=8), progress=False)
    assert open_store(tmp_path / "made.zarr").attrs["rollout"]["env"]["num_steps"] == CALLS
    # cuda asking Ray for no GPU on a cluster with none: refused here, not in each actor's torch
    with pytest.raises(ValueError, match="device 'cuda' with num_gpus 0, but Ray has 0 GPUs"):
        run_rollouts(config(ckpt, tmp_path / "gpu.zarr", device="cuda", num_gpus=0), progress=False)
    assert not (tmp_path / "gpu.zarr").exists()


def one_episode(store, i: int = 1):
    """A complete episode in `store`: a store with none takes new settings instead of refusing them."""
    store.write_episode(episode_id(i, 0), np.zeros((2, H, W, 3), np.uint8), np.zeros((1, K, A), np.float32),
                        np.zeros(1), np.zeros(1, bool), np.ones(1, bool))


def test_a_store_with_no_complete_episode_takes_new_settings(tmp_path):
    """A first run stopped before any episode was complete (Ctrl-C in its first batch) leaves the store, its settings
    and a partial group: a corrected config is not refused, since nothing of the old settings would be mixed in."""
    from worldcache.rollouts.identity import init_or_check
    from worldcache.rollouts.store import EpisodeStore

    store = EpisodeStore.create(tmp_path / "s.zarr")
    old = {"format_version": ROLLOUT_FORMAT, "env": {"frame_shape": [H, W, 3], "num_steps": CALLS}}
    new = {**old, "env": {**old["env"], "num_steps": CALLS + 1}}
    init_or_check(store, old)
    (tmp_path / "s.zarr" / "episodes" / episode_id(0, 0)).mkdir()  # the stopped run's partial leftover
    init_or_check(store, new)
    assert store.attrs["rollout"] == new
    one_episode(store)
    with pytest.raises(ValueError, match="was written with different \\['env'\\]") as e:  # one complete: refused
        init_or_check(store, old)
    # the one setting that differs, not both whole dicts
    assert str(e.value).endswith(f"(env.num_steps: stored {CALLS + 1}, config {CALLS}); use another --out")
    # a key on one side only is "absent" (one set to None on the other side counts as a difference, said)
    from worldcache.rollouts.identity import _differences

    assert _differences({"scale": None, "n": {"a": 1}}, {"n": {"a": 2}, "m": 3}, "policy_kwargs") == (
        "policy_kwargs.m: stored absent, config 3; policy_kwargs.n.a: stored 1, config 2; "
        "policy_kwargs.scale: stored None, config absent")
    assert store.attrs["rollout"] == new


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_what_a_store_records_of_policy_file_and_batch(ckpt, tmp_path):
    from worldcache.rollouts.identity import rollout_attrs

    files = checkpoint_files(ckpt)
    attrs = lambda **kw: rollout_attrs(RolloutConfig.load(config(ckpt, tmp_path / "x.zarr", **kw)), files, ckpt)  # noqa: E731
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * 3, K * A)), tmp_path / "p.pth")
    first = attrs(policy=str(tmp_path / "p.pth"))["policy_sha256"]
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * 3, K * A)), tmp_path / "p.pth")
    assert first != attrs(policy=str(tmp_path / "p.pth"))["policy_sha256"]  # same path, other weights
    assert attrs()["policy_sha256"] is None  # a registered policy: its name and kwargs say it all
    # ... its kwargs as it is built, defaults filled in: a store made under an older default (sinusoid's amplitude
    # was 0.8) refuses to resume under the newer one
    assert attrs(policy="sinusoid", policy_kwargs={"max_period": 32})["policy_kwargs"] == {
        "amplitude": 0.25, "min_period": 16.0, "max_period": 32}
    # a file named like a registered policy in the working directory is not that policy (make_policy reads the name)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "sinusoid").write_text("notes\n")
    here = os.getcwd()
    os.chdir(tmp_path / "cwd")
    try:
        from worldcache.rollouts.identity import policy_file

        cfg = RolloutConfig.load(config(ckpt, tmp_path / "x.zarr", policy="sinusoid"))
        assert policy_file(cfg) is None and rollout_attrs(cfg, files, ckpt)["policy_sha256"] is None
    finally:
        os.chdir(here)
    # resuming with the same file named from another working directory: its bytes decide, not the path
    from worldcache.rollouts.identity import init_or_check
    from worldcache.rollouts.store import EpisodeStore

    store = EpisodeStore.create(tmp_path / "resume.zarr")
    init_or_check(store, attrs(policy=str(tmp_path / "p.pth")))
    one_episode(store)
    os.makedirs(tmp_path / "elsewhere")
    shutil.copy(tmp_path / "p.pth", tmp_path / "elsewhere" / "p.pth")
    init_or_check(store, attrs(policy=str(tmp_path / "elsewhere" / "p.pth")))  # same bytes: accepted
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * 3, K * A)), tmp_path / "p.pth")
    with pytest.raises(ValueError, match="policy_sha256"):
        init_or_check(store, attrs(policy=str(tmp_path / "p.pth")))
    # an in-process policy object by its pickle: instances, partials or lambdas of one name and other parameters
    # differ (they shared a name, and resumed into each other's stores); the same object, in any process, does not
    import subprocess
    import sys
    from functools import partial

    from worldcache.rollouts.policies import SinusoidPolicy

    space = spaces.Box(-2.0, 2.0, (K, A), np.float32)
    sha = lambda p: attrs(policy=p)["policy_sha256"]  # noqa: E731
    assert attrs(policy=SinusoidPolicy(space, 0.5))["policy"] == "worldcache.rollouts.policies:SinusoidPolicy"
    assert sha(SinusoidPolicy(space, 0.5)) == sha(SinusoidPolicy(space, 0.5)) != sha(SinusoidPolicy(space, 0.8))
    assert sha(partial(np.clip, a_min=0)) != sha(partial(np.clip, a_min=1))
    assert sha(lambda obs, rngs: 0.5 * obs) != sha(lambda obs, rngs: 0.8 * obs)
    code = ("import hashlib, pickle, numpy as np; from gymnasium import spaces; from worldcache.rollouts.policies "
            f"import SinusoidPolicy; p = SinusoidPolicy(spaces.Box(-2.0, 2.0, ({K}, {A}), np.float32), 0.5); "
            "print(hashlib.sha256(pickle.dumps(p, protocol=4)).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "7"})
    assert other.stdout.strip() == sha(SinusoidPolicy(space, 0.5))
    store = EpisodeStore.create(tmp_path / "obj.zarr")
    init_or_check(store, attrs(policy=SinusoidPolicy(space, 0.5)))
    one_episode(store)
    init_or_check(store, attrs(policy=SinusoidPolicy(space, 0.5)))  # the same parameters: resumes
    with pytest.raises(ValueError, match="policy_sha256") as e:
        init_or_check(store, attrs(policy=SinusoidPolicy(space, 0.8)))
    assert "inside a function" not in str(e.value)
    # a class made inside a function: cloudpickle's per-process class id makes a later run's hash another one
    def local():
        class Ramp(SinusoidPolicy):
            pass
        return Ramp(space, 0.5)
    store = EpisodeStore.create(tmp_path / "local.zarr")
    init_or_check(store, first := attrs(policy=local()))
    one_episode(store)
    assert first["policy"].endswith("local.<locals>.Ramp")
    with pytest.raises(ValueError, match="if the policy is an instance of a class defined inside a function, it is pickled anew"):
        init_or_check(store, {**first, "policy_sha256": "0" * 64})  # as another process hashes it
    # per-sample caches: the batch size is free on resume; diffusers' hooks decide per batch, so it is recorded
    assert attrs(num_envs=3)["decision_batch"] is None and attrs(cache="fbcache", num_envs=3)["decision_batch"] == 3


@pytest.mark.slow
def test_worker_crash_mid_episode(ckpt, tmp_path):
    marker, out = tmp_path / "died", tmp_path / "fault.zarr"
    cfg = config(ckpt, out, episodes=4, policy="test_rollouts:CrashOnce", policy_kwargs={"marker": str(marker)})
    summary = run_rollouts(cfg, progress=False)
    assert marker.exists()  # a worker did die
    assert summary["episodes_written"] == 4
    store = open_store(out)
    ids = [episode_id(i, 0) for i in range(4)]
    assert store.episode_ids() == ids and groups(out) == ids  # once each, none partial
    assert all(store[e]["attrs"]["complete"] and store[e]["actions"].shape == (STEPS, K, A) for e in ids)


@pytest.mark.slow
def test_episodes_written_counts_a_dead_actors_episodes(ckpt, tmp_path):
    # counted in the store: the tally of an actor that died after writing dies with it
    marker, out = tmp_path / "died", tmp_path / "written.zarr"
    cfg = config(ckpt, out, episodes=3, workers=1, num_envs=1, policy="test_rollouts:CrashAfterAWrite",
                 policy_kwargs={"marker": str(marker), "out": str(out)})
    summary = run_rollouts(cfg, progress=False)
    assert marker.exists()
    assert summary["episodes_written"] == 3 and open_store(out).episode_ids() == [episode_id(i, 0) for i in range(3)]


@pytest.mark.slow
def test_a_cache_yaml_is_read_on_the_driver_only(ckpt, tmp_path, monkeypatch):
    # a path relative to the driver's working directory: the actors (started elsewhere) never read it
    (tmp_path / "tuned.yaml").write_text("policy: worldcache\nthreshold: 0.2\nnum_steps: 3\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tuned.zarr"
    cfg = config(ckpt, out, episodes=1, workers=1, num_envs=1, cache="tuned.yaml", num_steps=None)
    run_rollouts(cfg, progress=False)
    store = open_store(out)
    ro = store.attrs["rollout"]
    assert ro["cache"]["threshold"] == 0.2 and ro["env"]["num_steps"] == 3
    assert store[episode_id(0, 0)]["cache/computed"].shape == (STEPS, 3)  # the YAML's step count ran


def test_rollout_main_stops_on_sigterm_as_on_ctrl_c(monkeypatch):
    import worldcache.rollouts.driver as driver

    def terminated(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(driver, "run_rollouts", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        driver.rollout_main("rollout_smoke")
    assert signal.getsignal(signal.SIGTERM) is before  # given back


def test_sigterm_stops_a_rollout_as_ctrl_c_even_after_ray_starts():
    """ray.init sets its own SIGTERM handler (an exit, with no line said and status 15): the driver takes SIGTERM
    back after it, inside `sigterm_as_interrupt` only. In a fresh process, as Ray starts in one."""
    import subprocess
    import sys

    script = """
import signal, ray
from worldcache import interrupt
from worldcache.rollouts.driver import _init_ray
with interrupt.sigterm_as_interrupt():
    assert _init_ray(None)
    inside = signal.getsignal(signal.SIGTERM) is interrupt._terminate
ray.shutdown()
ray.init(include_dashboard=False)  # outside the block: Ray's own handler is left alone
interrupt.reclaim_sigterm()
print("inside", inside, "outside", signal.getsignal(signal.SIGTERM) is not interrupt._terminate)
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["inside", "True", "outside", "True"]


def test_sigterm_to_the_whole_process_group_stops_a_rollout_and_gives_the_lease_back(ckpt, tmp_path):
    """A scheduler's or systemd's stop signals every process of the job: Ray's GCS and raylet die with the actors.
    The driver then skips the flush it would wait on (it outlasted Ray's 60 s GCS timeout, which ended the process
    with the lease left behind), says it stopped by SIGTERM (143) and keeps the finished episodes. Stopped as a
    batch has just come back, as the driver hands out the next (where the flush hung: seen)."""
    import subprocess
    import sys
    import threading

    import yaml

    out = tmp_path / "group.zarr"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(ckpt, out, episodes=400, workers=1, num_cpus=2,
                                                           steps=3)))
    run = subprocess.Popen([sys.executable, "-m", "worldcache.cli", "rollout", str(tmp_path / "c.yaml")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err, batch = [], threading.Event()

    def read():  # the progress bar's "2/400": the first batch of 2 is back
        for line in iter(lambda: run.stderr.read(64), ""):
            err.append(line)
            if "2/400" in "".join(err[-3:]):
                batch.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert batch.wait(240), "".join(err)[-3000:]
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=50)  # well before Ray's 60 s
        reader.join(10)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    said = "".join(err)
    assert run.returncode == 143, said[-3000:]
    assert "worldcache rollout: interrupted (signal 15); the complete episodes are kept" in said
    assert not (out / "lease.json").exists() and 2 <= len(open_store(out).episode_ids()) < 400


def test_a_run_whose_local_cluster_died_does_not_wait_on_its_actors(monkeypatch):
    """The hang itself needs the bundled model (an actor busy in a long model call when the group's SIGTERM comes:
    the flush then waited out Ray's 60 s GCS timeout; seen with `worldcache rollout` and a `kill -TERM -- -PGID`,
    rc 1 after 60 s before, 143 after 10 s now). Here the check that skips it: the GCS and raylet of the local
    cluster this run started are asked whether they live (another of its processes, the dashboard's say, does not
    count); a cluster joined or given is never judged."""
    from ray._private import ray_constants

    from worldcache.rollouts.driver import _cluster_alive

    def proc(code):
        return type("P", (), {"process": type("Popen", (), {"poll": lambda self: code})()})()

    procs = {ray_constants.PROCESS_TYPE_GCS_SERVER: [proc(None)], ray_constants.PROCESS_TYPE_RAYLET: [proc(None)],
             "dashboard": [proc(1)]}
    monkeypatch.setattr(ray._private.worker, "_global_node", type("Node", (), {"all_processes": procs})())
    assert _cluster_alive(True) and _cluster_alive(False)
    procs[ray_constants.PROCESS_TYPE_RAYLET] = [proc(-15)]
    assert not _cluster_alive(True) and _cluster_alive(False)
    monkeypatch.setattr(ray._private.worker, "_global_node", None)  # no handle: taken as alive
    assert _cluster_alive(True)


# --- reading ------------------------------------------------------------------------------------------------
def test_window_dataset_arguments(store_run):
    for kw, match in [({"stride": 0}, "stride"), ({"stride": -4}, "stride"), ({"window": 0}, "window"),
                      ({"cached_episodes": 0}, "cached_episodes"), ({"window": STEPS * K + 1}, "no window of")]:
        with pytest.raises(ValueError, match=match):
            WindowDataset(store_run[0], **kw)
    ds = WindowDataset(store_run[0], window=STEPS * K, cached_episodes=2)  # one window per episode
    for i in (0, 1, 0, 2):  # the least recently used goes: 1, not 0 (read again just before 2 came in)
        ds[i]
    assert list(ds._cache) == [episode_id(0, 0), episode_id(2, 0)]


def test_window_dataset(store_run):
    ds = WindowDataset(store_run[0], window=3, stride=2)
    per_ep = len(range(0, STEPS * K - 3 + 1, 2))
    assert len(ds) == 5 * per_ep
    frames, actions = ds[len(ds) - 1]
    assert frames.shape == (4, H, W, 3) and frames.dtype == torch.uint8
    assert actions.shape == (3, A) and actions.dtype == torch.float32
    store = open_store(store_run[0])
    ep = store[episode_id(0, 0)]
    f0, a0 = ds[0]  # episode 0, start 0: the reset frame obs[0], then chunk 0 frames 0..2
    assert (f0[0].numpy() == ep["obs"][0]).all() and not (f0[0].numpy() == ep["obs"][-1]).all()
    f0, a0 = ds[1]  # episode 0, start 2: frames 2..5 = chunk 0 frames 1..3 and chunk 1 frame 0
    assert (f0[0].numpy() == ep["frames"][0, 1]).all() and (f0[-1].numpy() == ep["frames"][1, 0]).all()
    assert np.allclose(a0.numpy(), ep["actions"].reshape(-1, A)[2:5])
    # every window, whole: episodes in id order, starts 0, 2, 4 of frame j (0: reset, 1 + c * K + f: chunk c's
    # frame f) and the action leading from frame j to frame j + 1 (chunk c's action f for j = c * K + f)
    k = 0
    for eid in store.episode_ids():
        ep = store[eid]
        frame = lambda j: ep["obs"][0] if j == 0 else ep["frames"][(j - 1) // K, (j - 1) % K]  # noqa: E731
        for start in (0, 2, 4):
            f, a = ds[k]
            np.testing.assert_array_equal(f.numpy(), np.stack([frame(j) for j in range(start, start + 4)]))
            np.testing.assert_array_equal(a.numpy(), np.stack([ep["actions"][j // K, j % K]
                                                               for j in range(start, start + 3)]))
            k += 1
    assert k == len(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader))[0].shape == (4, 4, H, W, 3)


def test_inspect(store_run, tmp_path, capsys):
    res = inspect_store(store_run[0], plots_dir=tmp_path / "plots")
    assert res["episodes"] == 5 and res["steps"] == 5 * STEPS and res["calls_per_step"] == CALLS
    assert res["speedup_estimate"] >= 1 and res["mean_model_ms"] > 0
    for p in res["plots"]:
        assert os.path.getsize(p) > 1000 and p.endswith(".png")
    assert "mean skip rate" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_rollouts(ckpt, tmp_path, capsys):
    rows = bench_rollouts(config(ckpt, tmp_path / "unused"), episodes=2, workers=(1, 2), out_dir=str(tmp_path),
                          num_envs=1)
    assert [r["workers"] for r in rows] == [1, 2] and all(r["episodes_written"] == 2 for r in rows)
    assert "write %" in capsys.readouterr().out


# --- policies -----------------------------------------------------------------------------------------------
SPACE = spaces.Box(-2.0, 2.0, (K, A), np.float32)


# per-dim bounds, none symmetric about 0 and 0 outside some: a policy that mixes up low, high or their middle shows
LOW = np.array([-1.0, 0.5, -3.0, -2.0, 0.0, -0.25, -4.0])
HIGH = np.array([3.0, 2.0, -1.0, 2.0, 1.0, 0.75, -2.5])
ASYM = spaces.Box(np.broadcast_to(LOW, (K, A)).astype(np.float32), np.broadcast_to(HIGH, (K, A)).astype(np.float32))


def expected_actions(name, seeds, calls):
    """(calls, envs, K, A): what each registered policy must give, from its documented formula and fresh generators
    seeded as the policy's (draws in the same order)."""
    rngs = [np.random.default_rng(s) for s in seeds]
    if name == "zero":  # 0 clipped into the bounds
        return np.broadcast_to([0.0, 0.5, -1.0, 0.0, 0.0, 0.0, -2.5], (calls, len(seeds), K, A))
    if name == "random":  # one uniform (K, A) draw per call from the env's own generator
        return np.stack([[r.uniform(LOW, HIGH, (K, A)) for r in rngs] for _ in range(calls)])
    assert name == "sinusoid"  # at reset, per env: periods in [16, 64] frames, then phases in [0, 2 pi)
    period = np.stack([r.uniform(16.0, 64.0, A) for r in rngs])[:, None, :]
    phase = np.stack([r.uniform(0.0, 2 * np.pi, A) for r in rngs])[:, None, :]
    frames = np.arange(calls * K).reshape(calls, 1, K, 1)  # frame times run on across calls
    return (LOW + HIGH) / 2 + 0.25 * (HIGH - LOW) / 2 * np.sin(2 * np.pi * frames / period + phase)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_registered_policies(name):
    seeds = [3, 4, 5]
    pol, rngs = make_policy(name, ASYM), [np.random.default_rng(s) for s in seeds]
    if hasattr(pol, "reset"):
        pol.reset(rngs)
    a = np.stack([pol(np.zeros((3, H, W, 3), np.uint8), rngs) for _ in range(3)])
    assert a.shape == (3, 3, K, A) and a.dtype == np.float32
    assert (a >= ASYM.low).all() and (a <= ASYM.high).all()
    np.testing.assert_allclose(a, expected_actions(name, seeds, 3), rtol=1e-6, atol=1e-6)
    assert not np.array_equal(a[:, 0], a[:, 1]) or name == "zero"  # each env its own draws


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_import_and_torch_policies(tmp_path):
    obs, rng = np.zeros((2, H, W, 3), np.uint8), [np.random.default_rng(0), np.random.default_rng(1)]
    assert (make_policy("test_rollouts:half_policy", SPACE)(obs, rng) == 0.5).all()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * 3, K * A))
    torch.jit.script(net).save(str(tmp_path / "p.pt"))
    torch.save(net, tmp_path / "p.pth")
    for f in ("p.pt", "p.pth"):
        assert make_policy(str(tmp_path / f), SPACE)(obs, rng).shape == (2, K, A)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", SPACE)


def test_videos(store_run, tmp_path, monkeypatch):
    import imageio.v2 as imageio

    from worldcache.rollouts import video

    assert video.mp4_available()
    paths = video.write_videos(store_run[0], tmp_path / "mp4", scale=4)
    assert len(paths) == 5 and all(p.endswith(".mp4") for p in paths)
    with imageio.get_reader(paths[0]) as r:  # playable: decode it back
        frames = [f for f in r]  # (not list(r): the reader says its length is inf)
        fps = r.get_meta_data()["fps"]
    assert len(frames) == 1 + STEPS * K and frames[0].shape == (4 * H, 4 * W, 3) and fps == 20  # the model's fps
    ep = open_store(store_run[0])[episode_id(0, 0)]
    assert np.abs(frames[-1][::4, ::4].astype(int) - ep["frames"][-1, -1]).mean() < 12  # lossy, but the frame
    wide = video.write_videos(store_run[0], tmp_path / "sbs", side_by_side=True, scale=1, episodes=[episode_id(0, 0)])
    with imageio.get_reader(wide[0]) as r:
        sbs = [f for f in r]
    # frame, 2 black columns, the panel: CALLS columns of H // STEPS = 8 pixels each
    assert len(sbs) == 1 + STEPS * K and sbs[0].shape == (H, W + 2 + CALLS * 8, 3)
    panel = video.skip_panel(np.array([[True, False], [False, True]]), 1, 4)
    # 2x2 cells of 2x2 pixels; row 1 lit: skipped (50, 50, 70), computed (120, 220, 120); row 0 at 0.45, rounded down
    assert panel.shape == (4, 4, 3)
    assert panel[-1, 0].tolist() == [50, 50, 70] and panel[-1, -1].tolist() == [120, 220, 120]
    assert panel[0, 0].tolist() == [54, 99, 54] and panel[0, -1].tolist() == [22, 22, 31]
    # the frames before encoding, exactly: frame j (0: reset) next to the pattern with its env step's row lit
    ep = open_store(store_run[0]).load_episode(episode_id(0, 0))
    frames_sbs = video.episode_frames(ep, K, side_by_side=True)
    assert frames_sbs.shape == (1 + STEPS * K, H, W + 2 + CALLS * 8, 3)
    colors = {(True, True): (120, 220, 120), (False, True): (50, 50, 70), (True, False): (54, 99, 54),
              (False, False): (22, 22, 31)}  # (computed, lit)
    for j, f in enumerate(frames_sbs):
        step = 0 if j == 0 else (j - 1) // K
        np.testing.assert_array_equal(f[:, :W], ep["obs"][0] if j == 0 else ep["frames"][step, (j - 1) % K])
        assert (f[:, W:W + 2] == 0).all()
        cells = np.array([[colors[bool(c), r == step] for c in row] for r, row in enumerate(ep["cache/computed"])])
        np.testing.assert_array_equal(f[:, W + 2:], cells.repeat(8, axis=0).repeat(8, axis=1))
    monkeypatch.setattr(video, "mp4_available", lambda: False)  # no encoder: GIF
    gif = video.write_videos(store_run[0], tmp_path / "gif", scale=1, episodes=[episode_id(1, 0)])
    assert gif[0].endswith(".gif") and len(imageio.mimread(gif[0])) == 1 + STEPS * K


def test_cli_video_and_second_driver(ckpt, store_run, tmp_path, capsys):
    import yaml

    from worldcache.cli import main
    from worldcache.rollouts import acquire_lease, release_lease

    assert main(["inspect", str(store_run[0]), "--video", str(tmp_path / "v"), "--side-by-side"]) == 0
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 5
    out = tmp_path / "held.zarr"
    shutil.copytree(store_run[0], out)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(ckpt, out)))
    token = acquire_lease(str(out))  # another driver is running on this store
    assert main(["rollout", str(tmp_path / "c.yaml")]) == 2
    assert "another driver holds this store's lease" in capsys.readouterr().err
    release_lease(str(out), token)
