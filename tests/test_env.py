"""WorldCache-Cosmos-v0: single env, vector env, default reward. A tiny random model (16x24 frames, 4 actions per
chunk, 4 denoising steps) keeps every prediction at a few tens of milliseconds."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import worldcache  # noqa: F401  registers the env
from worldcache.cache import make_policy
from worldcache.envs.cosmos_env import START_FRAMES, CosmosWorldEnv, write_start_frames
from worldcache.envs.vector_env import CosmosWorldVectorEnv, bench_vector
from worldcache.mujoco_data import task_reward
from worldcache.rollouts.store import EpisodeStore
from worldcache.state_decoder import StateDecoder, StateDecoderConfig
from worldcache.world_model import CheckpointError, WorldModel, WorldModelSpec

ID = "WorldCache-Cosmos-v0"
H, W, K, A = 16, 24, 4, 7


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the tiny model's ops are too small to split; two threads on 2 shared cores only spin against each other
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    spec = WorldModelSpec(height=H, width=W, chunk=K, num_steps=4, action_dim=A, action_low=[-2.0] * A,
                          action_high=[2.0] * A)  # 7-d actions in [-2, 2]: the env is generic in both
    WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8).save_pretrained(path)
    rng = np.random.default_rng(0)
    np.save(path / START_FRAMES, rng.integers(0, 256, (5, H, W, 3), dtype=np.uint8))
    torch.manual_seed(0)
    StateDecoder(StateDecoderConfig(height=H, width=W)).save(path)  # untrained: any function of the frame will do
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return WorldModel.from_pretrained(ckpt)


def make(ckpt, model, **kw):
    return CosmosWorldEnv(checkpoint=ckpt, model=model, **{"cache": "none", **kw})


def actions(seed, n=None, scale=1.5):
    shape = (K, A) if n is None else (n, K, A)
    return np.random.default_rng(seed).uniform(-scale, scale, shape).astype(np.float32)


def rollout(env, seed, steps=2):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for t in range(steps):
        obs, r, _, _, info = env.step(actions(t))
        out += [obs, r, info["computed"]]
    return out


# --- single env ---------------------------------------------------------------------------------------------
def test_import_is_light():
    code = "import sys, worldcache, gymnasium; assert 'WorldCache-Cosmos-v0' in gymnasium.registry; " \
           "assert 'torch' not in sys.modules; print(worldcache.__version__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def strict_check_env(env, allow: str | None = None, **kw):
    """check_env reports what it finds at step time (a wrong observation dtype, say) only as warnings: each is an
    error here, but the one matching `allow`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if allow:
            warnings.filterwarnings("ignore", message=allow)
        check_env(env, **kw)


@pytest.mark.parametrize("obs_mode", ["frame", "history"])
def test_check_env(ckpt, model, obs_mode):
    # all defaults but the tiny checkpoint: check_env compares the infos of two identical steps. Made by gym.make,
    # so that the env has a spec and check_env can try the other render modes.
    env = gym.make(ID, checkpoint=ckpt, model=model, cache="worldcache", obs_mode=obs_mode, render_mode="rgb_array",
                   normalize_actions=True)
    strict_check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    info = env.step(actions(0, scale=1.0))[4]
    assert {"computed", "computed_fraction", "frames"} <= set(info) and "model_ms" not in set(info)


@pytest.mark.slow
def test_check_env_on_the_default_env():
    """`gym.make` with no arguments: the bundled model, the WorldCache cache, 35 steps, exactly as users make it."""
    env = gym.make(ID)
    strict_check_env(env.unwrapped)
    # the class's metadata (read before an env exists) is the default env's
    assert env.metadata["render_fps"] == CosmosWorldEnv.metadata["render_fps"] == 20 / 8


class _SingleView(gym.Env):
    """One sub-env of a vector env as a plain env: how check_env can look at what the vector env gives each env."""

    def __init__(self, vec):
        self.vec, self.metadata = vec, vec.metadata
        self.action_space, self.observation_space = vec.single_action_space, vec.single_observation_space
        self.render_mode = vec.render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = dict(options or {})
        if "frame" in options:
            options["frame"] = options["frame"][None]
        obs, info = self.vec.reset(seed=seed, options=options)
        return obs[0], {k: v[0] for k, v in info.items() if not k.startswith("_")}

    def step(self, action):
        obs, r, term, trunc, info = self.vec.step(np.asarray(action)[None])
        return obs[0], float(r[0]), bool(term[0]), bool(trunc[0]), {k: v[0] for k, v in info.items()
                                                                        if not k.startswith("_")}

    def render(self):
        return self.vec.render()[0]


def test_check_env_on_the_vector_envs_single_view(ckpt, model):
    vec = CosmosWorldVectorEnv(1, checkpoint=ckpt, model=model, cache="worldcache", render_mode="rgb_array")
    # a view has no spec, so check_env cannot try the other render modes: the one warning allowed
    strict_check_env(_SingleView(vec), allow=".*not having a spec", skip_render_check=False)


def test_strict_check_env_fails_on_a_wrong_step_observation(ckpt, model):
    class Float32Obs(CosmosWorldEnv):
        def step(self, action):
            obs, *rest = super().step(action)
            return (obs.astype(np.float32), *rest)

    with pytest.raises(UserWarning, match="step"):
        strict_check_env(Float32Obs(checkpoint=ckpt, model=model, cache="none"))


def test_normalized_actions_scale_onto_the_bounds(ckpt, model):
    env, twin = make(ckpt, model, normalize_actions=True), make(ckpt, model)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert (twin.action_space.low == -2).all() and (twin.action_space.high == 2).all()  # native bounds: default
    env.reset(seed=2)
    twin.reset(seed=2)
    a = actions(0, scale=1.0)
    obs, _, _, _, info = env.step(a)
    obs_t, _, _, _, info_t = twin.step(2.0 * a)  # bounds [-2, 2]: -1 -> -2, 1 -> 2
    np.testing.assert_array_equal(obs, obs_t)
    assert info["action_clipped"] is False
    assert env.step(np.full((K, A), 1.5, np.float32))[4]["action_clipped"] is True  # beyond 1: clipped to 1


def test_normalized_actions_map_affinely_onto_asymmetric_bounds(ckpt):
    # per-dim bounds, none symmetric about 0: [-1, 1] -> [low, high] is low + (a + 1) / 2 * (high - low), which
    # neither a scale (a * high) nor a shift alone matches; the model must receive exactly that
    low = np.array([-1.0, 0.0, -3.0, 0.5, -2.0, 1.0, -0.5], np.float32)
    high = np.array([3.0, 2.0, -1.0, 0.75, 6.0, 1.5, 0.5], np.float32)
    spec = WorldModelSpec(height=H, width=W, chunk=K, num_steps=4, action_dim=A, action_low=low.tolist(),
                          action_high=high.tolist())
    asym = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    seen, predict = [], asym.predict

    def spy(frames, acts, **kw):  # what the model is asked to predict from
        seen.append(np.array(acts))
        return predict(frames, acts, **kw)

    asym.predict = spy
    env = make(ckpt, asym, normalize_actions=True)
    env.reset(seed=2)
    a = actions(0, scale=1.0)
    a[0] = [-1.0, 1.0, 0.0, 0.5, -0.5, 1.5, -7.0]  # the ends, the middle, and two out of bounds (clipped to +-1)
    info = env.step(a)[4]
    assert info["action_clipped"] is True and seen[0].shape == (1, K, A) and seen[0].dtype == np.float32
    unit = np.clip(a.astype(np.float64), -1, 1)
    want = low + (unit + 1) / 2 * (high - low.astype(np.float64))
    np.testing.assert_allclose(seen[0][0], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(seen[0][0, 0], [-1.0, 2.0, -2.0, 0.6875, 0.0, 1.5, -0.5], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cache", ["none", "worldcache"])
def test_deterministic(ckpt, model, cache):
    a, b = (make(ckpt, model, cache=cache, num_steps=6) for _ in range(2))
    ra, rb = rollout(a, seed=3), rollout(b, seed=3)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(ra[1], rollout(b, seed=4)[1])
    if cache == "worldcache":
        assert not all(ra[3])  # the cache did skip, and still reproduced exactly


def test_info(ckpt, model):
    env = make(ckpt, model, cache="worldcache", num_steps=6)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions(0))
    assert isinstance(reward, float) and terminated is False and truncated is False
    assert info["frames"].shape == (K, H, W, 3) and info["frames"].dtype == np.uint8
    np.testing.assert_array_equal(info["frames"][-1], obs)
    assert info["calls"] == 6 and info["computed"].dtype == bool
    assert info["skipped"] == 6 - info["computed"].sum() > 0
    assert info["computed_fraction"] == pytest.approx(info["computed"].mean())
    assert info["action_clipped"] is False and isinstance(info["noise_seed"], int)
    # no NaN in info: WorldCache measures motion on every call, but no drift in its warm-up call, so the info
    # carries motion and leaves drift and threshold out; the full records keep them, NaN where not measured
    recs = env.sim.records[0]
    assert [r.computed for r in recs] == info["computed"].tolist()
    np.testing.assert_array_equal(info["motion"], [r.motion for r in recs])
    assert "drift" not in info and "threshold" not in info
    drift = np.array([r.drift for r in recs])
    assert np.isnan(drift[0]) and np.isfinite(drift[~info["computed"]]).all()
    assert not {"model_ms", "denoise_ms"} & set(info) and all(np.isnan(r.wall_ms) for r in recs)
    timed = make(ckpt, model, cache="worldcache", num_steps=6, timings=True)
    timed.reset(seed=0)
    info = timed.step(actions(0))[4]
    assert info["model_ms"] >= info["denoise_ms"] > 0


def test_no_nan_in_info_for_any_policy(ckpt, model):
    for cache in ("none", "fora", "teacache", "dicache", "fbcache"):
        env = make(ckpt, model, cache=cache, num_steps=6)
        env.reset(seed=0)
        info = env.step(actions(0))[4]
        env.close()
        for key, value in info.items():
            if np.asarray(value).dtype.kind == "f":
                assert np.isfinite(value).all(), (cache, key)


def test_bad_actions_leave_env_usable(ckpt, model):
    env, twin = make(ckpt, model), make(ckpt, model)
    obs0, _ = env.reset(seed=1)
    twin.reset(seed=1)
    bad = [np.zeros((K + 1, A)), np.zeros((K * A,)), np.zeros((1, K, A)), [[0.0] * A] * (K - 1)]
    for action in bad:
        with pytest.raises(ValueError, match=rf"\({K}, {A}\)"):
            env.step(action)
    for value in (np.nan, np.inf, -np.inf):
        a = actions(0)
        a[1, 2] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            env.step(a)
    np.testing.assert_array_equal(env.unwrapped._frames[-1], obs0)
    # the rejected steps changed nothing: the env continues exactly like one that never saw them
    np.testing.assert_array_equal(env.step(actions(0))[0], twin.step(actions(0))[0])


def test_out_of_bounds_actions_are_clipped(ckpt, model):
    env, twin = make(ckpt, model), make(ckpt, model)
    env.reset(seed=2)
    twin.reset(seed=2)
    a = actions(0) * 3  # beyond +-2 in places
    obs, _, _, _, info = env.step(a)
    obs_c, _, _, _, info_c = twin.step(np.clip(a, -2, 2))
    assert info["action_clipped"] is True and info_c["action_clipped"] is False
    np.testing.assert_array_equal(obs, obs_c)
    # a finite float64 beyond float32's range is clipped like any other, not cast to inf and refused
    big = np.full((K, A), 1e39, np.float64)
    obs, _, _, _, info = env.step(big)
    obs_c, _, _, _, info_c = twin.step(np.full((K, A), 2.0, np.float32))
    assert info["action_clipped"] is True
    np.testing.assert_array_equal(obs, obs_c)


def test_step_before_reset(ckpt, model):
    with pytest.raises(ResetNeeded, match="reset"):
        make(ckpt, model).step(actions(0))
    with pytest.raises(ResetNeeded):
        gym.make(ID, checkpoint=ckpt, model=model).step(actions(0))


def test_reset_options(ckpt, model):
    env = make(ckpt, model)
    frame = np.full((H, W, 3), 7, np.uint8)
    obs, info = env.reset(options={"frame": frame})
    np.testing.assert_array_equal(obs, frame)
    assert info["start_index"] == -1
    for opts, match in [({"frmae": frame}, "frmae"), ({"frame": frame[:-1]}, "frame"),
                        ({"frame": frame.astype(np.float32)}, "frame")]:
        with pytest.raises(ValueError, match=match):
            env.reset(options=opts)
    for opts in (["frame"], "frame"):
        with pytest.raises(TypeError, match="reset options must be a dict"):
            env.reset(options=opts)
    np.testing.assert_array_equal(env.unwrapped._frames[-1], frame)  # rejected resets changed nothing
    starts = np.load(ckpt / START_FRAMES)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, starts[info["start_index"]])


def test_model_without_start_frames_or_state_decoder(model):
    # the warning says where the decoder was looked for: no folder here, not "in None"
    with pytest.warns(UserWarning, match=r"no state decoder \(a model passed in without checkpoint=\): reward is 0.0"):
        env, twin = CosmosWorldEnv(model=model, cache="none"), CosmosWorldEnv(model=model, cache="none")
    with pytest.raises(ValueError, match=START_FRAMES):
        env.reset(seed=0)
    for e in (env, twin):
        e.reset(seed=5, options={"frame": np.zeros((H, W, 3), np.uint8)})
    with pytest.raises(ValueError, match=START_FRAMES):
        env.reset(seed=99)  # rejected before it reseeds: the episode goes on as if it never came
    out, out_twin = env.step(actions(0)), twin.step(actions(0))
    assert out[1] == 0.0 and out[4]["noise_seed"] == out_twin[4]["noise_seed"]
    np.testing.assert_array_equal(out[0], out_twin[0])


def test_constructor_errors(ckpt, model):
    with pytest.raises(ValueError, match="chunk"):
        make(ckpt, model, chunk=K * 2)
    with pytest.raises(ValueError, match="obs_mode"):
        make(ckpt, model, obs_mode="pixels")
    with pytest.raises(ValueError, match="render_mode"):
        make(ckpt, model, render_mode="human")
    with pytest.raises(ValueError, match="threshhold"):
        make(ckpt, model, cache="worldcache", cache_config={"threshhold": 0.1})
    policy = make_policy("fora")
    with pytest.raises(ValueError, match="cache_config only applies when cache is a policy name"):
        make(ckpt, model, cache=policy, cache_config={"interval": 2})  # a built policy: its config is fixed
    assert make(ckpt, model, cache=policy).sim.policy is policy  # without cache_config: used as given
    for history in (2.7, True, "4"):
        with pytest.raises(TypeError, match="history must be an int"):
            make(ckpt, model, history=history)
    with pytest.raises(ValueError, match="cross_chunk applies to WorldModel.rollout only"):
        make(ckpt, model, cache="worldcache", cache_config={"cross_chunk": True})
    # num_steps is checked where it is given: 0 was the default's, 2.7 became 2, -1 failed only at the first step
    for bad in (0, -1, 2.7, "3", True):
        with pytest.raises(ValueError, match=f"num_steps must be an integer >= 1 or None, got {bad!r}"):
            make(ckpt, model, num_steps=bad)
    assert make(ckpt, model, num_steps=np.int64(3)).sim.num_steps == 3
    assert make(ckpt, model, cache=None).sim.policy.name == "none"  # None: no cache, as WorldModel.predict's
    # a model passed in is used as it is: what would load it otherwise is refused, not dropped
    with pytest.raises(ValueError, match=r"dtype='bf16', but the model passed in has torch.float32 weights"):
        make(ckpt, model, dtype="bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        make(ckpt, model, dtype="bogus")
    assert make(ckpt, model, dtype="fp32").sim.model is model
    with pytest.raises(ValueError, match="compile=True, but the model passed in is not compiled"):
        make(ckpt, model, compile=True)
    with pytest.raises(CheckpointError, match=f"checkpoint folder not found: {ckpt}t"):
        make(Path(str(ckpt) + "t"), model)
    # caught where given, not after the first step's prediction (which has drawn a noise seed by then)
    with pytest.raises(TypeError, match="model must be a WorldModel .*got str"):
        make(ckpt, "notamodel")
    for name in ("reward_fn", "termination_fn"):
        with pytest.raises(TypeError, match=f"{name} must be a function .*got 3"):
            make(ckpt, model, **{name: 3})
    for name in ("timings", "normalize_actions", "compile"):  # "no" would be read as on
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            make(ckpt, model, **{name: "no"})
    assert make(ckpt, model, timings=np.bool_(True)).sim.timings


def test_a_shared_model_is_not_copied_with_the_envs_spec(ckpt, model):
    """gymnasium's wrappers deep-copy the spec, kwargs and all, at `.spec`: a model passed in (the way to share the
    real model's gigabytes between envs) stays one object there, and `gym.make(env.spec)` gets it again."""
    env = gym.make(ID, checkpoint=str(ckpt), model=model, num_steps=2)
    held = env.spec.kwargs["model"]  # through the wrappers' deep copy
    assert held.model is model and env.unwrapped.spec.kwargs["model"] is held
    again = gym.make(env.spec)
    assert again.unwrapped.sim.model is model and again.unwrapped.sim.num_steps == 2
    assert "model" not in gym.make(ID, checkpoint=str(ckpt), num_steps=2).spec.kwargs
    vec = gym.make_vec(ID, num_envs=2, checkpoint=str(ckpt), model=model, num_steps=2)  # and the vector env's
    assert vec.spec.kwargs["model"].model is model
    assert gym.make_vec(vec.spec, num_envs=2).unwrapped.sim.model is model  # make_vec deep-copies the spec it gets


def test_close_detaches_hook_policies_from_the_shared_model(ckpt, model):
    """fbcache attaches diffusers hooks to the (shared) model's transformer: close() must take them all off, or
    every later env on the model would run the cache (the check of test_baselines' test_detach_restores_plain_model)."""
    transformer = model.dit.transformer

    def hooked():
        pre = any(m._forward_pre_hooks for m in transformer.modules())
        regs = [getattr(m, "_diffusers_hook", None) for m in transformer.modules()]
        return pre, any(r and set(r.hooks) - {"frame_modulation"} for r in regs)

    assert hooked() == (False, False)
    env = make(ckpt, model, cache="fbcache", num_steps=4)
    env.reset(seed=0)
    env.step(actions(0))
    assert hooked() == (True, True)  # attached while the env runs: the check below can see them
    env.close()
    assert hooked() == (False, False) and not hasattr(transformer, "_worldcache_hook_policy")


def test_envs_sharing_a_model_with_a_hook_policy(ckpt, model):
    """An fbcache env leaves diffusers hooks on the shared model between its steps. Another env's prediction must
    take them off (else they run inside it and want their own cache context), and each env, interleaved, must give
    the frames it gives alone."""
    caches = [("fbcache", {"threshold": 1.0}), ("none", None), ("worldcache", None)]

    def run(*which):
        envs = [make(ckpt, model, cache=caches[i][0], cache_config=caches[i][1], num_steps=4) for i in which]
        for e in envs:
            e.reset(seed=0)
        out = [[e.step(actions(k)) for e in envs] for k in range(2)]
        for e in envs:
            e.close()
        return [(np.stack([o[0] for o in steps]), sum(o[4]["skipped"] for o in steps)) for steps in zip(*out)]

    alone = [run(i)[0] for i in range(len(caches))]
    together = run(*range(len(caches)))
    for (a, _), (b, _) in zip(alone, together):
        np.testing.assert_array_equal(a, b)
    assert together[0][1] > 0 and together[1][1] == 0  # fbcache skipped calls: the envs differ in what they ran


def test_reward_and_termination(ckpt, model):
    seen = []

    def reward_fn(frames, acts):
        seen.append((frames.shape, acts.shape))
        return 1.5

    env = make(ckpt, model, reward_fn=reward_fn, termination_fn=lambda frames, acts: bool(acts[0, 0] > 1.9))
    env.reset(seed=0)
    a = actions(0)
    assert env.step(a)[1:3] == (1.5, False)
    a[0, 0] = 5.0  # clipped to 2, which terminates
    assert env.step(a)[1:3] == (1.5, True)
    assert seen == [((K, H, W, 3), (K, A))] * 2
    # default: the task reward on the positions the checkpoint's decoder reads off each frame after its action,
    # plus that action's exact control cost, summed over the chunk
    env = make(ckpt, model)
    env.reset(seed=0)
    _, r, _, _, info = env.step(actions(0))
    pos = StateDecoder.load(ckpt).predict(info["frames"])
    assert r == pytest.approx(task_reward(pos[:, :3], pos[:, 3:6], pos[:, 6:], actions(0)).sum(), rel=1e-5)


def test_the_default_reward_leaves_mujoco_and_its_gl_settings_alone(ckpt):
    """The decoder's reward is numpy (`worldcache.task`): stepping the env must not import MuJoCo, which sets
    MUJOCO_GL for the process and so switched a Pusher env made later to software rendering."""
    code = ("import os, sys, gymnasium as gym, worldcache\n"
            f"env = gym.make('{ID}', checkpoint={str(ckpt)!r}, cache='none')\n"
            "env.reset(seed=0)\nenv.step(env.action_space.sample())\n"
            "print('mujoco' in sys.modules, os.environ.get('MUJOCO_GL'), os.environ.get('PYOPENGL_PLATFORM'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "None", "None"]


def test_default_reward_exact_values(model, tmp_path):
    """A stub decoder that reads fixed positions off every frame (zero weights, the positions as its mean): the
    reward is -|obj - goal| - 0.5 |tip - obj| - 0.1 |a|^2 per step, summed over the chunk."""
    dec = StateDecoder(StateDecoderConfig(height=H, width=W, mean=[0, 0, 0, 0.3, 0.4, 0, 0.3, 0.4, 1.2]))
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
    dec.save(tmp_path)
    env = make(tmp_path, model)
    env.reset(options={"frame": np.zeros((H, W, 3), np.uint8)})
    a = np.zeros((K, A), np.float32)
    a[0, 0], a[1, 1], a[2, :3] = 1, 2, 1  # |a|^2 = 1, 4, 3, 0
    assert env.step(a)[1] == pytest.approx(4 * (-1.2 - 0.25) - 0.1 * 8, abs=1e-6)  # -6.6
    StateDecoder(StateDecoderConfig(height=H + 4, width=W)).save(tmp_path)
    with pytest.raises(ValueError, match="state decoder reads"):
        make(tmp_path, model)


def test_old_reward_head_is_named_in_the_warning(model, tmp_path):
    (tmp_path / "reward_head.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="reward_head.safetensors is from an older version"):
        make(tmp_path, model)


def test_history_and_render(ckpt, model):
    env = make(ckpt, model, obs_mode="history", history=6, render_mode="rgb_array")
    assert env.metadata["render_fps"] == model.spec.fps / K  # one rendered frame per step of K frames
    obs, _ = env.reset(seed=0)
    assert obs["history"].shape == (6, H, W, 3) and (obs["history"] == obs["frame"]).all()
    obs2, _, _, _, info = env.step(actions(0))
    np.testing.assert_array_equal(obs2["history"][:2], obs["history"][:2])  # oldest first: start frame kept
    np.testing.assert_array_equal(obs2["history"][2:], info["frames"])
    np.testing.assert_array_equal(env.render(), obs2["frame"])
    assert make(ckpt, model).render() is None


@pytest.mark.parametrize("env_id", [ID, f"worldcache:{ID}"])
def test_gym_make_and_time_limit(ckpt, model, env_id):
    env = gym.make(env_id, checkpoint=ckpt, model=model, cache="none", max_episode_steps=2)
    assert isinstance(env.unwrapped, CosmosWorldEnv) and env.unwrapped.sim.model is model  # shared, not copied
    env.reset(seed=0)
    assert [env.step(actions(t))[3] for t in range(2)] == [False, True]
    assert gym.spec(ID).max_episode_steps == 12


def test_gym_make_loads_checkpoint(ckpt):
    env = gym.make(ID, checkpoint=str(ckpt), num_steps=2, cache="none")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (H, W, 3) and env.step(actions(0))[4]["calls"] == 2


def test_gym_make_compiled_steps_as_the_eager_env(ckpt):
    envs = [gym.make(ID, checkpoint=str(ckpt), num_steps=3, cache="none", compile=c) for c in (False, True)]
    assert envs[0].unwrapped.sim.model.dit.compiled_blocks is None
    assert envs[1].unwrapped.sim.model.dit.compiled_blocks is not None
    obs = [env.reset(seed=4)[0] for env in envs]
    assert np.array_equal(obs[0], obs[1])
    steps = [env.step(actions(1)) for env in envs]
    assert np.abs(steps[0][0].astype(int) - steps[1][0]).max() <= 1  # float rounding only
    assert steps[0][4]["calls"] == steps[1][4]["calls"] == 3


# --- vector env ---------------------------------------------------------------------------------------------
@pytest.fixture
def predict_calls(monkeypatch):
    calls = []
    orig = WorldModel.predict

    def counted(self, frame, acts, **kw):
        calls.append(len(frame))
        return orig(self, frame, acts, **kw)

    monkeypatch.setattr(WorldModel, "predict", counted)
    return calls


def test_make_vec_picks_vector_entry_point(ckpt, model):
    for kw in ({}, {"vectorization_mode": "vector_entry_point"}):
        env = gym.make_vec(ID, num_envs=2, checkpoint=ckpt, model=model, **kw)
        assert isinstance(env.unwrapped, CosmosWorldVectorEnv) and env.unwrapped.max_episode_steps == 12


def test_gymnasiums_async_vector_env_runs_in_forked_workers():
    """gymnasium's "async" mode forks its workers after building one env in the parent (to read its spaces): torch's
    OpenMP pool, copied by fork, used to deadlock the workers' model load. They run, and predict as "sync" does."""
    import signal

    script = f"""
import gymnasium as gym, numpy as np, worldcache
out = []
for mode in ("async", "sync"):  # async: fork, Linux's default start method
    v = gym.make_vec("{ID}", num_envs=2, vectorization_mode=mode, num_steps=2)  # the bundled model: the tiny one's
    # copies are too small for torch to run them on threads, so it never deadlocked
    assert type(v).__name__ == ("AsyncVectorEnv" if mode == "async" else "SyncVectorEnv")
    v.reset(seed=0)
    obs, r, *_ = v.step(np.zeros(v.action_space.shape, np.float32))
    out.append((obs.astype(int), r))
    v.close()
(a, ra), (b, rb) = out
print("diff", np.abs(a - b).max(), np.abs(ra - rb).max())
"""
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # its own group: a hang is killed with its workers
    try:
        out = run.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail("the async vector env hung")
    assert run.returncode == 0, out
    diff = [float(x) for x in out.split("diff")[-1].split()]
    assert diff[0] <= 1 and diff[1] < 1e-4, out  # 1 thread in a worker, all in the parent: float sums differ a bit


def test_vector_one_batched_call_and_autoreset(ckpt, model, predict_calls):
    n = 3
    env = gym.make_vec(ID, num_envs=n, checkpoint=ckpt, model=model, cache="worldcache", max_episode_steps=2,
                       termination_fn=lambda frames, acts: bool(acts[0, 0] > 1.9))
    assert env.single_action_space.shape == (K, A) and env.action_space.shape == (n, K, A)
    obs, info = env.reset(seed=0)
    assert obs.shape == (n, H, W, 3) and info["start_index"].shape == (n,)
    a = actions(0, n)
    a[1, 0, 0] = 2.0  # env 1 terminates at the first step
    obs, r, term, trunc, info = env.step(a)
    assert predict_calls == [n] and obs.shape == (n, H, W, 3) and r.shape == (n,)
    assert term.tolist() == [False, True, False] and not trunc.any()
    assert info["frames"].shape == (n, K, H, W, 3) and info["computed"].shape == (n, 4)
    np.testing.assert_array_equal(info["frames"][:, -1], obs)
    # next step: env 1 resets (its action ignored, reward 0: NaN there, a policy's answer to a terminal frame,
    # is no error; in an env that is predicted it is), envs 0 and 2 are predicted in one batch of 2
    a = actions(1, n)
    a[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(a)
    a = actions(1, n)
    a[1] = np.nan
    obs, r, term, trunc, info = env.step(a)
    assert predict_calls == [n, 2] and r[1] == 0 and not term.any()
    assert trunc.tolist() == [True, False, True]
    starts = np.load(ckpt / START_FRAMES)
    np.testing.assert_array_equal(obs[1], starts[info["start_index"][1]])
    assert info["_start_index"].tolist() == [False, True, False] and info["_frames"].tolist() == [True, False, True]
    obs, r, term, trunc, info = env.step(actions(2, n))  # envs 0 and 2 reset; env 1 predicted alone
    assert predict_calls == [n, 2, 1] and not trunc.any()
    np.testing.assert_array_equal(obs[[0, 2]], starts[info["start_index"][[0, 2]]])


@pytest.mark.parametrize("cache", ["none", "worldcache"])
def test_vector_equals_single_envs(ckpt, model, cache):
    # worldcache: each sample keeps its own cache state and decides alone, so a batch decides as its single envs.
    # Its threshold (0.12 by default, where both envs here decide alike) is set where their decisions differ (both
    # do at 0.09 to 0.1, seen): a batch deciding as one sample, or sharing one state, then shows
    n, seed, kw = 2, 5, {"cache": cache, "num_steps": 6}  # 6 steps: worldcache skips some (test_deterministic)
    if cache == "worldcache":
        kw["cache_config"] = {"threshold": 0.093}
    vec = CosmosWorldVectorEnv(n, checkpoint=ckpt, model=model, **kw)
    singles = [make(ckpt, model, **kw) for _ in range(n)]
    computed = [[] for _ in range(n)]
    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs[i], o)
        assert info["start_index"][i] == inf["start_index"]
    for t in range(2):
        a = actions(t, n)
        obs, r, _, _, info = vec.step(a)
        for i, env in enumerate(singles):
            o, ri, _, _, inf = env.step(a[i])
            assert info["noise_seed"][i] == inf["noise_seed"]
            # same noise and inputs; only batched vs. unbatched floating point may differ
            assert np.abs(obs[i].astype(int) - o).max() <= 2
            assert np.abs(info["frames"][i].astype(int) - inf["frames"]).max() <= 2
            assert r[i] == pytest.approx(ri, abs=0.05)
            np.testing.assert_array_equal(info["computed"][i], inf["computed"])
            computed[i].append(inf["computed"])
    if cache == "worldcache":  # the decisions compared include skips, and differ between the envs
        assert not np.all(computed) and not np.array_equal(computed[0], computed[1])


def test_vector_bad_input_and_options(ckpt, model):
    n = 2
    vec = CosmosWorldVectorEnv(n, checkpoint=ckpt, model=model, cache="none", obs_mode="history",
                               render_mode="rgb_array")
    with pytest.raises(ResetNeeded):
        vec.step(actions(0, n))
    frames = np.stack([np.full((H, W, 3), v, np.uint8) for v in (3, 9)])
    obs, info = vec.reset(seed=[1, 2], options={"frame": frames})
    np.testing.assert_array_equal(obs["frame"], frames)
    assert obs["history"].shape == (n, 4, H, W, 3) and (info["start_index"] == -1).all()
    for bad, match in [(actions(0), r"\(2, 4, 7\)"), (np.full((n, K, A), np.nan), "NaN")]:
        with pytest.raises(ValueError, match=match):
            vec.step(bad)
    with pytest.raises(ValueError, match=r"frame'\] must be uint8 \(2, 16, 24, 3\) or \(16, 24, 3\)"):
        vec.reset(options={"frame": frames[:, :8]})
    np.testing.assert_array_equal(vec.render(), frames)  # nothing changed
    obs, _, _, _, info = vec.step(actions(0, n) * 3)
    assert info["action_clipped"].all() and obs["history"].shape == (n, 4, H, W, 3)
    vec.close()


def test_vector_partial_reset_one_frame_for_all_and_render_before_reset(ckpt, model):
    """gymnasium's calls that its sync and async vector envs take work alike here: ``reset_mask`` resets only the
    envs it marks (the others keep their frames and step counts), one (H, W, 3) frame starts every env, and render
    before reset is ResetNeeded."""
    n, frame = 2, np.full((H, W, 3), 7, np.uint8)
    vec = CosmosWorldVectorEnv(n, max_episode_steps=2, checkpoint=ckpt, model=model, cache="none",
                               render_mode="rgb_array")
    with pytest.raises(ResetNeeded):
        vec.render()
    with pytest.raises(ResetNeeded, match="partial reset"):  # env 0 would have no frame
        vec.reset(options={"reset_mask": np.array([False, True])})
    obs, info = vec.reset(seed=3, options={"frame": frame})
    assert (obs == 7).all() and info["start_index"].tolist() == [-1, -1]
    after, *_ = vec.step(actions(0, n))
    # env 1 alone again, seeded 9 and from a drawn start frame: as a single env reset with seed 9
    obs, info = vec.reset(seed=[None, 9], options={"reset_mask": np.array([False, True])})
    single = make(ckpt, model, cache="none")
    o, inf = single.reset(seed=9)
    np.testing.assert_array_equal(obs[0], after[0])
    np.testing.assert_array_equal(obs[1], o)
    assert info["_start_index"].tolist() == [False, True] and info["start_index"][1] == inf["start_index"]
    _, _, _, trunc, _ = vec.step(actions(1, n))
    assert trunc.tolist() == [True, False]  # env 0's second step, env 1's first
    obs, _, _, _, info = vec.step(actions(2, n))  # env 0 autoresets from the frame its last reset gave it
    assert (obs[0] == 7).all() and info["start_index"][0] == -1
    for bad in (np.array([False, False]), np.array([1, 0]), [True, False], np.array([True])):
        with pytest.raises(ValueError, match=r"reset_mask'\] must be a bool numpy array of shape \(2,\)"):
            vec.reset(options={"reset_mask": bad})
    vec.close()


def test_vector_env_without_start_frames(model):
    """Autoreset starts an env again from the frame its last reset gave; a reset that needs start frames the
    checkpoint lacks is refused before anything changes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no state decoder: reward 0.0 (warned once per folder, maybe earlier)
        vec = CosmosWorldVectorEnv(2, max_episode_steps=1, model=model, cache="none")
    with pytest.raises(ValueError, match=START_FRAMES):
        vec.reset(seed=0)
    with pytest.raises(ResetNeeded):  # the refused reset left no frames to step from
        vec.step(actions(0, 2))
    frames = np.stack([np.full((H, W, 3), v, np.uint8) for v in (3, 9)])
    vec.reset(seed=0, options={"frame": frames})
    _, _, _, truncated, _ = vec.step(actions(0, 2))
    assert truncated.all()
    obs, rewards, _, _, info = vec.step(actions(1, 2))  # the autoreset step
    np.testing.assert_array_equal(obs, frames)
    assert (info["start_index"] == -1).all() and (rewards == 0).all()
    vec.close()


def test_bench_vector(ckpt, capsys, monkeypatch):
    """On a simulated clock (a single env step takes 3 s, a batched step of both envs 2 s): 2 timed steps after the
    untimed warm-up give 2 x 2 x 3 s / 4 env steps = 3 s and 2 x 2 s / 4 = 1 s per env step, speedup 3.
    No cache: every call computes in both runs."""
    from types import SimpleNamespace

    from worldcache.envs import vector_env

    clock = [0.0]
    monkeypatch.setattr(vector_env, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    for cls, cost in ((CosmosWorldEnv, 3.0), (CosmosWorldVectorEnv, 2.0)):
        def timed(self, action, _step=cls.step, _cost=cost):
            clock[0] += _cost
            return _step(self, action)
        monkeypatch.setattr(cls, "step", timed)
    res = bench_vector(num_envs=2, steps=2, checkpoint=ckpt, cache="none", num_steps=2)
    assert res == {"num_envs": 2, "steps": 2, "cache": "none", "num_steps": 2, "single_s_per_env_step": 3.0,
                   "vector_s_per_env_step": 1.0, "single_computed_fraction": 1.0, "vector_computed_fraction": 1.0,
                   "speedup": 3.0}
    out = capsys.readouterr().out
    assert "2 envs, 2 steps of one chunk each, cache=none, 2 denoising steps" in out
    assert "single envs, in turn        3.000      1.00\n" in out
    assert "vector env, batched         1.000      1.00\n" in out
    assert "speedup (single / vector): 3.00x" in out


def test_bench_vec_cli(ckpt, capsys):
    from worldcache import cli

    args = ["bench-vec", "--num-envs", "1", "--env-steps", "1", "--checkpoint", str(ckpt), "--cache", "none",
            "--denoise-steps", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out  # the options reach bench_vector: 1 env, 1 step, no cache, 1 denoising step
    assert "1 envs, 1 steps of one chunk each, cache=none, 1 denoising steps" in out
    assert re.search(r"single envs, in turn +\d+\.\d{3} +1\.00\n", out)
    assert re.search(r"vector env, batched +\d+\.\d{3} +1\.00\n", out)
    assert re.search(r"speedup \(single / vector\): \d+\.\d\dx", out)


def test_vector_constructor_and_seed_errors(ckpt, model):
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        CosmosWorldVectorEnv(0, checkpoint=ckpt, model=model, cache="none")
    vec = CosmosWorldVectorEnv(2, checkpoint=ckpt, model=model, cache="none")
    for seeds in ([1], [1, 2, 3]):
        with pytest.raises(ValueError, match=rf"seed list must have num_envs=2 entries, got {len(seeds)}"):
            vec.reset(seed=seeds)
    with pytest.raises(ResetNeeded):  # the rejected resets left the envs unreset
        vec.step(actions(0, 2))
    obs, _ = vec.reset(seed=[3, None])  # a right-length list with None is fine
    assert obs.shape == (2, H, W, 3)
    # a reset rejected for a seed changes nothing: not the generators, nor the frames the last reset gave, which
    # an autoreset (here after a one-step time limit) starts from
    twin = CosmosWorldVectorEnv(2, max_episode_steps=1, checkpoint=ckpt, model=model, cache="none")
    vec.max_episode_steps = 1
    frames = np.stack([np.full((H, W, 3), v, np.uint8) for v in (3, 9)])
    for env in (vec, twin):
        env.reset(seed=[1, 2])
    for bad in ([5, -1], [7, "x"]):
        with pytest.raises(Exception, match="[Ss]eed"):
            vec.reset(seed=bad, options={"frame": frames})
    a = actions(0, 2)
    for _ in range(3):  # the step, the autoreset, a step from the new start
        got, want = vec.step(a), twin.step(a)
        np.testing.assert_array_equal(got[0], want[0])
        if "noise_seed" in want[4]:
            np.testing.assert_array_equal(got[4]["noise_seed"], want[4]["noise_seed"])
    # max_episode_steps as gym.make's TimeLimit takes it: else 0 or -3 truncated every episode after one step
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"max_episode_steps must be an integer >= 1 or None, got {bad!r}"):
            CosmosWorldVectorEnv(2, max_episode_steps=bad, checkpoint=ckpt, model=model, cache="none")


# --- start frames -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eps.zarr"
    st = EpisodeStore.create(path)
    rng = np.random.default_rng(0)
    for e in range(6):
        T = 8
        obs = rng.integers(0, 256, (T + 1, H, W, 3), dtype=np.uint8)
        st.write_episode(f"ep{e}", obs, rng.uniform(-2, 2, (T, A)).astype(np.float32), np.zeros(T, np.float32),
                         np.zeros(T, bool), np.zeros(T, bool))
    return path


def test_write_start_frames(store, tmp_path):
    """The reset frame (obs[0]) of episodes spread evenly over the sorted ids: of 6, count=4 picks
    round(linspace(0, 5, 4)) = ids 0, 2, 3, 5; a count beyond the store's size takes every episode."""
    st = EpisodeStore(store, mode="r")
    ids = st.episode_ids()
    assert ids == [f"ep{e}" for e in range(6)]

    def first_frames(picked):
        return np.stack([st.episode_array(ids[i], "obs")[0] for i in picked])

    for count, picked in [(4, [0, 2, 3, 5]), (10, range(6)), (1, [0])]:
        frames = write_start_frames(store, tmp_path, count=count)
        np.testing.assert_array_equal(frames, first_frames(picked))
        np.testing.assert_array_equal(np.load(tmp_path / START_FRAMES), frames)
    EpisodeStore.create(tmp_path / "empty.zarr")
    (tmp_path / START_FRAMES).unlink()
    with pytest.raises(ValueError, match="no complete episodes"):
        write_start_frames(tmp_path / "empty.zarr", tmp_path)
    assert not (tmp_path / START_FRAMES).exists()


def test_history_never_changes_the_dynamics_of_a_five_frame_model():
    """A model on two conditioning latent frames reads the last 5 frames: the env keeps them whatever `history`
    shows, so history=1 and history=8 step to the same frames, single and vector env alike."""
    spec = WorldModelSpec(height=H, width=W, chunk=K, num_steps=2, action_dim=A, action_low=[-2.0] * A,
                          action_high=[2.0] * A, cond_latent_frames=2, cond_frame_timestep=None)
    torch.manual_seed(0)
    five = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    start = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    runs = {}
    for history in (1, 8):
        env = CosmosWorldEnv(model=five, cache="none", obs_mode="history", history=history)
        env.reset(seed=0, options={"frame": start})
        vec = CosmosWorldVectorEnv(1, model=five, cache="none", obs_mode="history", history=history)
        vec.reset(seed=0, options={"frame": start[None]})
        for t in range(3):  # from the 2nd step on, the model reads frames of earlier steps
            obs, *_ = env.step(actions(t))
            vobs, *_ = vec.step(actions(t, 1))
            assert obs["history"].shape == (history, H, W, 3) and vobs["history"].shape == (1, history, H, W, 3)
        runs[history] = (obs["frame"], vobs["frame"][0])
    np.testing.assert_array_equal(runs[1][0], runs[8][0])
    np.testing.assert_array_equal(runs[1][1], runs[8][1])
