import json
import os

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from worldcache import mujoco_data as md
from worldcache.rollouts.store import EpisodeStore, LeaseError, acquire_lease, read_lease

STEPS = 8


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    a = md.generate(root / "a.zarr", episodes=2, steps=STEPS, seed=3, progress=False)
    b = md.generate(root / "b.zarr", episodes=2, steps=STEPS, seed=3, progress=False)
    return root, a, b


def test_generate_shapes_dtypes_and_attrs(generated):
    root, summary, _ = generated
    assert summary["written"] == 2 and summary["frames_per_s"] > 0
    store = EpisodeStore(root / "a.zarr", mode="r")
    assert store.episode_ids() == ["seed3_ep00000", "seed3_ep00001"]
    assert store.num_steps == 2 * STEPS
    gen = store.attrs["generator"]
    assert gen["env_id"] == "Pusher-v5" and (gen["height"], gen["width"]) == (80, 96)
    assert gen["steps"] == STEPS and gen["fps"] == pytest.approx(20.0) and gen["camera"] == md._camera(None)
    for eid in store:
        ep = store.load_episode(eid)
        assert ep["obs"].shape == (STEPS + 1, 80, 96, 3) and ep["obs"].dtype == np.uint8
        assert ep["actions"].shape == (STEPS, 3) and ep["actions"].dtype == np.float32
        assert np.all(np.abs(ep["actions"]) <= 1.0)
        st = ep["state"]  # the stored reward is the task formula on the simulator's positions
        np.testing.assert_allclose(ep["rewards"], md.task_reward(st[1:, md.TIP], st[1:, md.OBJ], st[1:, md.GOAL],
                                                                 ep["actions"]), rtol=1e-5)
        assert ep["rewards"].shape == (STEPS,) and ep["rewards"].dtype == np.float32
        assert not ep["terminated"].any()
        assert ep["truncated"].tolist() == [False] * (STEPS - 1) + [True]  # time limit = steps
        assert ep["state"].shape == (STEPS + 1, 23)
        assert ep["attrs"]["policy"] == "mixed" and ep["attrs"]["seed"] == 3


def test_generate_is_reproducible_and_resumable(generated, monkeypatch):
    root, _, _ = generated
    a, b = EpisodeStore(root / "a.zarr", mode="r"), EpisodeStore(root / "b.zarr", mode="r")
    for eid in a:
        ea, eb = a.load_episode(eid), b.load_episode(eid)
        for k in ("obs", "actions", "rewards", "state"):
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
    o0, o1 = a.load_episode("seed3_ep00000")["obs"], a.load_episode("seed3_ep00001")["obs"]
    assert not np.array_equal(o0, o1)  # different episodes differ
    again = md.generate(root / "a.zarr", episodes=3, steps=STEPS, seed=3, progress=False)
    assert (again["written"], again["skipped"], again["episodes_total"]) == (1, 2, 3)
    # episode 2 written alone by the resumed call equals episode 2 of one call of 3: nothing carries over from
    # one episode to the next (a policy RNG shared within a call would)
    md.generate(root / "c.zarr", episodes=3, steps=STEPS, seed=3, progress=False)
    resumed, one_go = (EpisodeStore(root / n, mode="r").load_episode("seed3_ep00002") for n in ("a.zarr", "c.zarr"))
    for k in ("obs", "actions", "rewards", "state"):
        np.testing.assert_array_equal(resumed[k], one_go[k], err_msg=k)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):  # before the store is made
        md.generate(root / "big.zarr", episodes=1, steps=STEPS, seed=2**32, progress=False)
    assert not (root / "big.zarr").exists()
    with pytest.raises(ValueError, match=rf"different settings.*; to resume it, give make-data --env-steps {STEPS}$"):
        md.generate(root / "a.zarr", episodes=1, steps=STEPS + 1, seed=3, progress=False)
    # the MuJoCo version is part of what made the episodes: another one may not add to the store; a store written
    # before the version was recorded does not say, so it is not refused for it
    store = EpisodeStore(root / "a.zarr", mode="a")
    gen = dict(store.attrs["generator"])
    assert gen["mujoco"] == mujoco.__version__
    store.attrs["generator"] = {**gen, "mujoco": "3.3.7"}
    with pytest.raises(ValueError, match=r"different settings.*'mujoco': \('3.3.7', '" + mujoco.__version__
                       + r"'\)\}$"):  # no flag resumes it
        md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, progress=False)
    # so is the GL backend that rasterized the frames (osmesa, unless MUJOCO_GL says otherwise)
    assert gen["gl"] == os.environ["MUJOCO_GL"]
    store.attrs["generator"] = {**gen, "gl": "another"}
    with pytest.raises(ValueError, match=rf"different settings.*'gl': \('another', '{gen['gl']}'\)"):
        md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, progress=False)
    # gymnasium's and numpy's releases are recorded, and another one warned of, not refused (last bits only)
    assert (gen["gymnasium"], gen["numpy"]) == (gym.__version__, np.__version__)
    store.attrs["generator"] = {**gen, "numpy": "1.0"}
    with pytest.warns(UserWarning, match=r"generated under other releases \(old, new\): \{'numpy': \('1.0', "):
        assert md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, progress=False)["written"] == 0
    # nor (v1) for explore's bounds, recorded since scene v2
    store.attrs["generator"] = {k: v for k, v in gen.items() if k not in ("mujoco", "gl", "explore", "gymnasium",
                                                                          "numpy")}
    assert md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, progress=False)["written"] == 0
    store.attrs["generator"] = gen
    # another policy under the same seed would find "its" episodes there already: refused before writing
    with pytest.raises(ValueError, match="seed 3 already holds 'mixed' episodes; give 'random' another --seed"):
        md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, policy="random", progress=False)
    # a shorter run again writes nothing and keeps the record of the 3 the store holds
    assert md.generate(root / "a.zarr", episodes=1, steps=STEPS, seed=3, progress=False)["written"] == 0
    assert EpisodeStore(root / "a.zarr", mode="r").attrs["runs"]["seed3_mixed"]["episodes"] == 3
    # an interrupted run (here: its third episode's write fails) records no episode the store lacks, and still
    # claims its seed for its policy; the run done again completes the record
    write = EpisodeStore.write_episode

    def failing(self, eid, *args, **kwargs):
        if eid.endswith("00002"):
            raise OSError("disk full")
        return write(self, eid, *args, **kwargs)

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr(EpisodeStore, "write_episode", failing)
        md.generate(root / "cut.zarr", episodes=4, steps=STEPS, seed=3, progress=False)
    cut = EpisodeStore(root / "cut.zarr", mode="r")
    assert len(cut) == 2 and cut.attrs["runs"] == {"seed3_mixed": {"seed": 3, "policy": "mixed", "episodes": 0}}
    with pytest.raises(ValueError, match="seed 3 already holds 'mixed' episodes"):
        md.generate(root / "cut.zarr", episodes=1, steps=STEPS, seed=3, policy="random", progress=False)
    assert md.generate(root / "cut.zarr", episodes=4, steps=STEPS, seed=3, progress=False)["written"] == 2
    assert EpisodeStore(root / "cut.zarr", mode="r").attrs["runs"]["seed3_mixed"]["episodes"] == 4

    assert read_lease(root / "cut.zarr") is None  # given back after the failed run and after this one
    index = json.loads((root / "cut.zarr" / "index.json").read_text())["episodes"]  # a run ends by indexing the store
    assert index == {f"seed3_ep{i:05d}": STEPS for i in range(4)}
    # one run at a time: while another holds the store's lease (a run that is writing, or one that was killed),
    # a run is refused before it writes anything, even its record; --break-lease replaces a dead run's lease
    token = acquire_lease(root / "cut.zarr")
    before = dict(EpisodeStore(root / "cut.zarr", mode="r").attrs)
    with pytest.raises(LeaseError, match="another driver holds this store's lease .*--break-lease"):
        md.generate(root / "cut.zarr", episodes=5, steps=STEPS, seed=9, policy="random", progress=False)
    assert dict(EpisodeStore(root / "cut.zarr", mode="r").attrs) == before
    assert read_lease(root / "cut.zarr")["token"] == token  # the holder's lease is left alone
    assert md.generate(root / "cut.zarr", episodes=5, steps=STEPS, seed=3, progress=False, break_lease=True)[
        "written"] == 1
    assert read_lease(root / "cut.zarr") is None
    assert EpisodeStore(root / "cut.zarr", mode="r").attrs["runs"]["seed3_mixed"]["episodes"] == 5
    # a run whose lease another broke meanwhile (here: while it skips the episodes there) records nothing at its end
    exists = EpisodeStore.exists

    def broken(self, eid):
        if eid.endswith("00000"):  # another run takes the store over and records itself
            new = EpisodeStore(root / "cut.zarr", mode="a", lease=acquire_lease(root / "cut.zarr", break_lease=True))
            new.attrs["runs"] = {**new.attrs["runs"], "seed9_random": {"seed": 9, "policy": "random", "episodes": 0}}
        return exists(self, eid)

    with monkeypatch.context() as m, pytest.raises(LeaseError, match="held by another driver"):
        m.setattr(EpisodeStore, "exists", broken)
        md.generate(root / "cut.zarr", episodes=5, steps=STEPS, seed=3, progress=False)
    assert "seed9_random" in EpisodeStore(root / "cut.zarr", mode="r").attrs["runs"]  # not overwritten
    assert read_lease(root / "cut.zarr") is not None  # the new holder's lease stays
    other = EpisodeStore.create(root / "other.zarr")  # a store make-data did not write (a rollout store, say)
    other.write_episode("e", np.zeros((2, 4, 4, 3), np.uint8), np.zeros((1, 3), np.float32), np.zeros(1, np.float32),
                        np.zeros(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match="holds episodes that make-data did not write"):
        md.generate(root / "other.zarr", episodes=1, steps=STEPS, seed=3, progress=False)


def test_frames_change_when_the_arm_moves(generated):
    root, _, _ = generated
    ep = EpisodeStore(root / "a.zarr", mode="r").load_episode("seed3_ep00000")
    moved = np.abs(ep["state"][-1, :7] - ep["state"][0, :7]).max()
    assert moved > 0.05  # the arm moved ...
    diff = np.abs(ep["obs"][-1].astype(int) - ep["obs"][0].astype(int))
    assert diff.mean() > 0.5 and (diff.max(-1) > 30).sum() > 20  # ... and the image shows it
    assert ep["obs"].std() > 10  # not a blank frame


def test_scripted_reaches_the_object_random_does_not():
    steps, seeds = 30, [11, 12, 13]
    with md.PusherRenderer(max_episode_steps=steps) as r:
        def final_dist(policy):
            out = []
            for s in seeds:
                st = md.real_rollout(policy, s, steps=steps, renderer=r)["state"]
                d = np.linalg.norm(st[:, md.TIP] - st[:, md.OBJ], axis=1)
                out.append((d[0], d[-1]))
            return np.mean(out, axis=0)

        (s0, s_end), (r0, r_end) = final_dist("scripted"), final_dist("random")
        quality = md.real_rollout(lambda obs: np.zeros(3, np.float32), 11, steps=steps, renderer=r)
    assert s0 == pytest.approx(r0)  # same seeds -> same start
    assert s_end < 0.5 * s0  # purposeful: the fingertip closes in on the object
    assert s_end < 0.5 * r_end  # far better than random actions
    assert quality["obs"].shape == (steps + 1, 80, 96, 3)  # callable policies work too


def test_end_effector_action_moves_the_fingertip_that_way():
    """The IK controller executes a delta: from rest (the arm starts straight, so along y), the fingertip moves
    along the commanded direction from the first step on, and speeds up toward the commanded delta."""
    with md.PusherRenderer() as r:
        for sign in (1.0, -1.0):
            obs = r.reset(seed=5)
            a = np.array([0.0, 0.6 * sign, 0.0], np.float32)  # 3 cm in 0.05 s
            tips = [obs[md.TIP]]
            for _ in range(4):
                obs, reward, *_ = r.step(a)
                tips.append(obs[md.TIP])
            moved = np.diff(np.array(tips), axis=0)[:, 1] * sign
            assert (moved > 0.001).all() and (np.diff(moved) > 0).all()  # along y, faster every step
            assert moved[-1] > 0.4 * 0.6 / md.ACTION_SCALE  # reaching 40 % of the delta within 4 steps
            off = np.abs(np.diff(np.array(tips), axis=0)[:, [0, 2]]).mean()
            assert off < 0.5 * moved.mean()  # mostly along the commanded axis
            assert reward == pytest.approx(float(md.task_reward(obs[md.TIP], obs[md.OBJ], obs[md.GOAL], a)))


def test_a_policys_out_of_range_action_is_stored_as_executed():
    # the simulator clips to [-1, 1]; the store held the unclipped action, so the stored reward's control cost
    # (on the clipped one) did not follow from the stored actions
    ep = md.real_rollout(lambda obs: np.array([0.0, 3.0, -0.5]), seed=0, steps=2, height=32, width=40)
    np.testing.assert_array_equal(ep["actions"], [[0.0, 1.0, -0.5]] * 2)
    st = ep["state"][1:]
    np.testing.assert_allclose(ep["rewards"], md.task_reward(st[:, md.TIP], st[:, md.OBJ], st[:, md.GOAL],
                                                             ep["actions"]), rtol=1e-5)


def test_the_default_rollout_policy_keeps_the_arm_within_the_datas_reach():
    # the sinusoid's actions are fingertip velocity commands: at amplitude 0.8 (its default until 2026-12-07) the tip
    # rose to z 0.52 and reached y -1.10, where no training episode takes the arm (mixed data: z <= 0.26, y >= -0.84)
    from gymnasium import spaces

    from worldcache.rollouts.config import RolloutConfig, policy_rng
    from worldcache.rollouts.policies import make_policy

    cfg = RolloutConfig()
    n, chunk = 8, 8
    pol = make_policy(cfg.policy, spaces.Box(-1.0, 1.0, (chunk, 3), np.float32), **cfg.policy_kwargs)
    rngs = [policy_rng(0, i) for i in range(n)]
    acts = np.concatenate([pol(np.zeros((n, 1)), rngs) for _ in range(48 // chunk)], axis=1)  # (n, 48, 3)
    tips = []
    with md.PusherRenderer(32, 40, max_episode_steps=48) as r:
        for i in range(n):
            r.reset(seed=md.episode_seed(0, 10_000 + i))
            tips += [r.step(a)[0][md.TIP] for a in acts[i]]
    tips = np.array(tips)
    assert tips[:, 2].max() <= 0.26 and tips[:, 1].min() >= -0.84, (tips[:, 2].max(), tips[:, 1].min())


def test_task_reward_formula():
    tip, obj, goal = np.array([0.0, 0.0, 0.0]), np.array([0.3, 0.4, 0.0]), np.array([0.3, 0.4, 1.0])
    # -1 * |obj - goal| - 0.5 * |tip - obj| - 0.1 * |a|^2 = -1 - 0.25 - 0.1 * 0.5
    assert md.task_reward(tip, obj, goal, np.array([0.5, 0.5, 0.0])) == pytest.approx(-1.3)
    # its two position terms apart, in TERMS' order, and the reward rebuilt from them bit for bit
    assert md.TERMS == ("object-goal", "tip-object")
    np.testing.assert_allclose(md.reward_terms(tip, obj, goal), [-1.0, -0.25], rtol=1e-12)
    pos = np.random.default_rng(0).normal(size=(3, 5, 3))
    acts = np.random.default_rng(1).normal(size=(5, 3))
    assert np.array_equal(md.reward_from_terms(md.reward_terms(*pos), acts),
                          -np.linalg.norm(pos[1] - pos[2], axis=-1) - 0.5 * np.linalg.norm(pos[0] - pos[1], axis=-1)
                          - md.control_cost(acts))
    np.testing.assert_allclose(md.control_cost(np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])), [0.1, 0.1])


def test_the_position_terms_are_gymnasiums_pusher_v5s_own():
    """The README's claim, against gymnasium itself: mid-episode, Pusher-v5's reward_dist and reward_near on its own
    state equal `reward_terms` on the stored observation's positions. (The control term differs by design: ours
    charges the end-effector command, Pusher-v5 the joint torques.)"""
    with md.PusherRenderer(max_episode_steps=STEPS) as r:
        obs = r.reset(seed=md.episode_seed(0, 0))
        policy = md.make_policy("mixed", r, np.random.default_rng(0))
        for _ in range(STEPS):
            obs, *_ = r.step(policy(obs))
            _, gym_terms = r.env.unwrapped._get_rew(np.zeros(7))
            ours = md.reward_terms(obs[md.TIP], obs[md.OBJ], obs[md.GOAL])
            np.testing.assert_allclose(ours, [gym_terms["reward_dist"], gym_terms["reward_near"]], rtol=0,
                                       atol=1e-12)
            assert gym_terms["reward_ctrl"] == 0.0


def test_make_policy_names_and_noise():
    with md.PusherRenderer() as r:
        rng = np.random.default_rng(0)
        assert md.make_policy("scripted", r, rng, noise=0.6).noise == 0.6
        assert md.make_policy("scripted", r, rng).noise == 0.0  # a clean controller unless told
        # mixed draws its noise level from U(0, 0.8) on the episode rng (scripted drew nothing: it is the first draw)
        assert md.make_policy("mixed", r, rng).noise == np.random.default_rng(0).uniform(0.0, 0.8)
        assert md.make_policy("mixed", r, rng, noise=0.3).noise == 0.3
        r.reset(seed=0)
        a = md.make_policy("random", r, rng)(np.zeros(23))
        assert a.shape == (3,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        with pytest.raises(ValueError, match="unknown policy"):
            md.make_policy("expert", r, rng)


@pytest.mark.parametrize("cls", [md.ExplorePolicy, md.WideExplorePolicy])
@pytest.mark.parametrize("seed", [7, 1])  # the first segment holds a direction (seed 7) or reaches a target (seed 1)
def test_explore_segments_reach_random_targets_or_hold_a_direction(cls, seed):
    obs = np.zeros(23)
    obs[md.TIP] = [0.5, -0.3, 0.0]
    rng = np.random.default_rng(seed)
    # the same draws, in the policy's order: length, speed, kind, then the target or the direction
    length, speed, kind = int(rng.integers(6, 25)), float(rng.uniform(0.4, 1.0)), rng.random()
    pol = cls(None, np.random.default_rng(seed))
    a = pol(obs)
    if kind < 0.5:
        target = rng.uniform(cls.box[0], cls.box[1])
        want = md.ACTION_SCALE * (target - obs[md.TIP])
        want *= min(1.0, speed / np.abs(want).max())
    else:
        d = rng.standard_normal(3)
        want = speed * d / np.abs(d).max()
    np.testing.assert_allclose(a, want, rtol=1e-6)
    assert np.abs(a).max() == pytest.approx(speed, rel=1e-6)  # 20x the delta to any target exceeds the speed
    for _ in range(length - 1):  # the segment holds: the same action while the tip stands still
        np.testing.assert_array_equal(pol(obs), a)
    assert pol._left == 0


def test_explore_actions_do_not_follow_the_object_and_varied_draws_both():
    """In mixed data the action points at the object (so the frame predicts it); explore's do not."""
    steps, cos = 48, {}
    with md.PusherRenderer(max_episode_steps=steps) as r:
        for name in ("mixed", "explore"):
            out = []
            for s in range(4):
                ep = md.real_rollout(md.make_policy(name, r, np.random.default_rng([s, 1])), s, steps=steps,
                                     renderer=r)
                to_obj = (ep["state"][:-1, md.OBJ] - ep["state"][:-1, md.TIP])[:, :2]
                a = ep["actions"][:, :2]
                out.append((to_obj * a).sum(1) / (np.linalg.norm(to_obj, axis=1) * np.linalg.norm(a, axis=1) + 1e-9))
            cos[name] = np.concatenate(out)
        kinds = {md.make_policy("varied", r, np.random.default_rng([s, 1])).kind for s in range(8)}
    assert np.median(cos["mixed"]) > 0.7  # measured 0.81 (mean 0.45)
    assert abs(cos["explore"].mean()) < 0.3 and np.median(cos["explore"]) < 0.2  # measured -0.20, -0.46
    assert kinds == {"mixed", "explore"}


def test_explore_wide_takes_the_arm_where_away_goes_and_varied_wide_draws_like_varied():
    """The fidelity check's away policy takes the fingertip to y = -1.35, out of view; explore's targets stop at
    y = -0.75. explore-wide's reach to y = -1.4, so its episodes spend more steps beyond that. varied-wide draws
    mixed or explore-wide exactly where varied draws mixed or explore."""
    np.testing.assert_array_equal(md.WideExplorePolicy.box, [[0.15, -1.4, md.Z_LOW], [0.85, 0.2, 0.35]])
    beyond = {}
    with md.PusherRenderer(max_episode_steps=48) as r:
        for name in ("explore", "explore-wide"):
            tips = np.concatenate([md.real_rollout(name, s, 48, renderer=r)["state"][:, md.TIP] for s in range(8)])
            beyond[name] = (tips[:, 1] < -0.75).mean()
        kinds = [md.make_policy("varied", r, np.random.default_rng([s, 1])).kind for s in range(8)]
        wide = [md.make_policy("varied-wide", r, np.random.default_rng([s, 1])).kind for s in range(8)]
    assert beyond["explore-wide"] > 2 * beyond["explore"]  # measured 0.13 against 0.038
    assert set(kinds) == {"mixed", "explore"} and wide == [k.replace("explore", "explore-wide") for k in kinds]


def test_out_of_view_counts_what_the_frame_cuts_off():
    """v1's camera (the bundled model's data) cuts the fork at the arm's end at reset, v2's keeps everything; and
    what `out_of_view` counts inside is what a segmentation rendering of the frame's own view shows."""
    with md.PusherRenderer() as r:
        r.reset(seed=0)
        before = r.render()
        assert r.out_of_view() == {"arm": (39, 3191), "fork": (39, 307), "object": (0, 117), "goal": (0, 222)}
        np.testing.assert_array_equal(r.render(), before)  # the frames' field of view is put back
        h, w = r.height * r.supersample, r.width * r.supersample
        with mujoco.Renderer(r.model, h, w) as seg:  # the frame's own field of view
            seg.enable_segmentation_rendering()
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.distance, cam.elevation, cam.azimuth = (r.camera[k] for k in ("distance", "elevation", "azimuth"))
            cam.lookat[:] = r.camera["lookat"]
            seg.update_scene(r.data, camera=cam)
            ids = seg.render()[..., 0]
        arm = np.isin(ids, [g for g in range(r.model.ngeom) if 1 <= r.model.geom_bodyid[g] <= 10]).sum()
        assert abs(int(arm) - (3191 - 39)) <= 10  # the same pixels, up to rasterisation at the edges
    with md.PusherRenderer(camera=md.SCENES["v2"]["camera"]) as r:
        r.reset(seed=0)
        assert {k: out for k, (out, _) in r.out_of_view().items()} == {"arm": 0, "fork": 0, "object": 0, "goal": 0}


def test_scene_v2_is_recorded_refused_to_v1_and_simulated_again_from_its_record(tmp_path):
    from worldcache.scene import SCENE_KEYS

    md.generate(tmp_path / "v2.zarr", episodes=1, steps=STEPS, seed=3, scene="v2", progress=False)
    store = EpisodeStore(tmp_path / "v2.zarr", mode="r")
    gen = store.attrs["generator"]
    assert gen["camera"] == md.SCENES["v2"]["camera"] and gen["explore"] == "bounded"
    with pytest.raises(ValueError, match="different settings.*'camera'.*give make-data --scene v2$"):  # v1's may not join
        md.generate(tmp_path / "v2.zarr", episodes=2, steps=STEPS, seed=3, progress=False)
    own = {**md.SCENES["v2"]["camera"], "distance": 3.0}  # a camera of its own: no flag resumes it, none is named
    md.generate(tmp_path / "own.zarr", episodes=1, steps=STEPS, seed=3, camera=own, progress=False)
    with pytest.raises(ValueError, match=r"different settings.*'camera'.*\)\}$"):
        md.generate(tmp_path / "own.zarr", episodes=1, steps=STEPS + 1, seed=3, progress=False)
    with pytest.warns(UserWarning, match=r"60x88 frames: `worldcache train` builds models of sizes divisible by 8"):
        md.generate(tmp_path / "odd.zarr", episodes=1, steps=2, height=60, width=88, progress=False)
    with pytest.raises(ValueError, match=r"unknown scene 'v3'; choose from \('v1', 'v2'\)"):
        md.generate(tmp_path / "v3.zarr", episodes=1, steps=STEPS, scene="v3", progress=False)
    # a model trained on it records the generator's scene keys (`Trainer`); from them the simulator shows its
    # episodes again, frame for frame
    scene = {k: gen[k] for k in SCENE_KEYS}
    with md.PusherRenderer.for_scene(scene, max_episode_steps=STEPS) as r:
        again = md.real_rollout("mixed", md.episode_seed(3, 0), STEPS, renderer=r)
    ep = store.load_episode("seed3_ep00000")
    for k in ("obs", "actions", "state"):
        np.testing.assert_array_equal(again[k], ep[k], err_msg=k)
    with pytest.raises(ValueError, match=r"scene keys \['lens'\] unknown"):
        md.PusherRenderer.for_scene({**scene, "lens": 1})
    with pytest.raises(ValueError, match="controller .* is not this simulator's"):
        md.PusherRenderer.for_scene({**scene, "controller": {**scene["controller"], "kp": 30.0}})


def test_bounded_explore_keeps_the_arm_in_v2s_view():
    """v2's camera alone leaves explore's free directions lifting the arm out of view; bounded, they stop at the
    box's faces. Episode 10 of seed 0 is one that leaves it free (found by `out_of_view` over 30 episodes)."""
    es = md.episode_seed(0, 10)

    def frames_cut(bounded):
        with md.PusherRenderer(camera=md.SCENES["v2"]["camera"], max_episode_steps=48) as r:
            obs = r.reset(seed=es)
            policy, cut = md.make_policy("explore", r, np.random.default_rng([es, 1]), bounded=bounded), 0
            for _ in range(48):
                obs, *_ = r.step(policy(obs))
                cut += any(out for out, _ in r.out_of_view().values())
        return cut

    assert frames_cut(False) > 0 and frames_cut(True) == 0


def test_a_scenes_simulator_runs_its_datas_explore_bounded_or_free():
    """evaluate-policies and bench simulate a model's scene from its record (`for_scene`), which holds the camera but
    not explore's bounds: v2's camera brings v2's bounded explore, as its data's (a free one left the view: above),
    by name and through `make_control`; v1 and a camera of one's own keep it free."""
    from worldcache.fidelity import make_control
    from worldcache.scene import scene_record

    own = {**md.SCENES["v2"]["camera"], "distance": 3.0}
    for camera, bounded in ((md.SCENES["v2"]["camera"], True), (md.SCENES["v1"]["camera"], False), (own, False)):
        with md.PusherRenderer.for_scene(scene_record({"camera": camera})) as r:
            assert r.explore_bounded == bounded
            for name in ("explore", "explore-wide"):
                assert md.make_policy(name, r, np.random.default_rng(0)).bounded == bounded, name
            assert make_control("explore", None, r, 0).bounded == bounded
            assert not md.make_policy("explore", r, np.random.default_rng(0), bounded=False).bounded  # as given
        with md.PusherRenderer(camera=camera) as r:  # as `real_rollout(camera=...)` makes one
            assert r.explore_bounded == bounded
