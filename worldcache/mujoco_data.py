"""MuJoCo ``Pusher-v5`` data for the action-conditioned world model.

* ``PusherRenderer``: the env with a fixed camera that keeps the object, the goal and the arm in view (in scene v1,
  the bundled model's, all but the tip of the fork at the arm's end, cut by the bottom edge at reset and in some
  frames after; see `scene.CAMERA`, `scene.SCENES` and `PusherRenderer.out_of_view`),
  rendering small frames (default 80x96: 20x24 latents, 10x12 tokens per latent frame). Its actions are
  end-effector (fingertip) position deltas, x20 as the real robot model's Bridge actions are, executed by a
  damped-least-squares IK controller at the simulator's substep rate: the effect of an action is visible in the
  next frame, so a frame-conditioned model can predict it.
* Exploration policies (``make_policy``): ``random`` (uniform random deltas), ``scripted``
  (a reach-and-push controller in fingertip space with a noise level), ``mixed``, ``explore`` (motion that
  ignores the task: only the actions tell where the arm goes), ``varied`` (per episode ``mixed`` or ``explore``),
  ``explore-wide`` and ``varied-wide`` (the same over the arm's whole reach, out of view included).
* ``generate``: writes seeded, reproducible, resumable episodes into an ``EpisodeStore``.
* ``real_rollout``: one episode in the real simulator for a given policy, for fidelity checks.

Rendering is headless: MuJoCo uses OSMesa (software GL; ``scripts/setup_system.sh``
installs it) unless MUJOCO_GL is already set (e.g. to ``egl`` on a GPU machine).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # must precede any mujoco/gymnasium import
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    # PyOpenGL loads libOSMesa with RTLD_GLOBAL, and its LLVM symbols then crash triton's own LLVM when triton is
    # imported later (diffusers and torch import it): a segfault. Imported first, triton is unaffected.
    try:
        import triton  # noqa: F401
    except ImportError:
        pass

import time
import warnings
from typing import Any, Callable

import cv2
import gymnasium as gym
import mujoco
import numpy as np

from worldcache.interrupt import deferred_interrupts
from worldcache.rollouts.store import EpisodeStore, acquire_lease, release_lease
from worldcache.seeding import derived_seed
from worldcache.scene import CONTROLLER, SCENE_KEYS, SCENES, SUPERSAMPLE, scene_name, scene_of
from worldcache.scene import camera_record as _camera
from worldcache.task import (GOAL, OBJ, TERMS, TIP, W_CTRL, W_DIST, W_NEAR, control_cost,  # noqa: F401 (re-exported)
                             reward_from_terms, reward_terms, task_reward)

ENV_ID = "Pusher-v5"
# MuJoCo releases simulate differently (3.3.7 and 4.0.1, 4 episodes of seed 0: fingertips up to 3.4 cm apart within
# 48 steps, returns up to 0.23): stores and fidelity results record the release that made their episodes
MUJOCO_VERSION = mujoco.__version__
GL_BACKEND = os.environ["MUJOCO_GL"]  # what rasterizes the frames (set above unless exported): recorded beside it
HEIGHT, WIDTH = 80, 96
ACTION_SCALE = 20.0  # action = fingertip position delta per control step x 20 (m/s), as Bridge's deltas x20
ACTION_LIMIT = 1.0   # per axis: a command of at most 5 cm per 0.05 s step (the arm follows it with a lag, `step`)
ACTION_DIM = 3       # the fingertip's (x, y, z) delta
POLICIES = ("random", "scripted", "mixed", "explore", "varied", "explore-wide", "varied-wide")

Policy = Callable[[np.ndarray], np.ndarray]


Z_LOW, Z_HOVER = -0.28, -0.15            # fingertip height at the object / when travelling
REST_POSE = np.array([0.0, 0.6, 0.0, -1.4, 0.0, -0.6, 0.0])  # bent elbow: avoids the straight-arm singularity


class PusherRenderer:
    """``gymnasium.make("Pusher-v5")`` with a fixed camera, fast small-frame rendering, and end-effector actions.

    ``step(action)``: ``action`` (3,) is the fingertip's position delta for this 0.05 s step x ``ACTION_SCALE``,
    clipped to ``ACTION_LIMIT``. The target (tip + delta) is tracked at every 0.01 s simulator substep by a
    damped-least-squares inverse of the fingertip Jacobian (joint velocities toward the target, plus a
    null-space pull to a bent-elbow rest pose) and a velocity-tracking torque, clipped to Pusher's torque range.
    """

    kp, kv, k_rest, damping = (CONTROLLER[k] for k in ("kp", "kv", "k_rest", "damping"))  # `scene.CONTROLLER`

    def __init__(self, height: int = HEIGHT, width: int = WIDTH, camera: dict | None = None,
                 max_episode_steps: int | None = None, supersample: int = SUPERSAMPLE):
        self.height, self.width, self.supersample = height, width, supersample
        self.camera = _camera(camera)
        cam = {**self.camera, "lookat": np.asarray(self.camera["lookat"], dtype=np.float64)}
        kw = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self.env = gym.make(ENV_ID, render_mode="rgb_array", width=width * supersample,
                            height=height * supersample, default_camera_config=cam, **kw)
        vis = self.env.unwrapped.model.vis  # set before the first render creates the GL context
        vis.quality.shadowsize = 0   # shadow maps cost ~5x per frame in software GL
        vis.quality.offsamples = 0   # no MSAA; supersampling instead
        self.dt = float(self.env.unwrapped.dt)
        self.action_space = gym.spaces.Box(-ACTION_LIMIT, ACTION_LIMIT, (ACTION_DIM,), np.float32)
        self.torque_space = self.env.action_space
        self._body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "tips_arm")
        self._jacp = np.zeros((3, self.model.nv))
        self._seg = None  # `out_of_view`'s renderer, made on first use
        # `make_policy`'s default: explore's bounds are not in a model's scene record (`for_scene`), so they go with
        # the named scene whose camera this is (v2's explore is bounded, as its data's); a camera of one's own: free
        self.explore_bounded = any(sc["explore"] == "bounded" and _camera(sc["camera"]) == self.camera
                                   for sc in SCENES.values())

    @classmethod
    def for_scene(cls, scene: dict | None, height: int = HEIGHT, width: int = WIDTH,
                  max_episode_steps: int | None = None) -> "PusherRenderer":
        """The simulator of a model's scene (`WorldModelSpec.scene`: its data's generator record, `generate`, as
        far as it says how episodes are simulated and shown). What it leaves out is the defaults'; None: v1."""
        if unknown := set(scene or {}) - set(SCENE_KEYS):
            raise ValueError(f"scene keys {sorted(unknown)} unknown: a scene has {SCENE_KEYS}")
        full = scene_of(scene)
        if full["controller"] != cls.gains():  # gains are this code's: another's episodes are not ours
            raise ValueError(f"the scene's controller {full['controller']} is not this simulator's {cls.gains()}")
        return cls(height, width, full["camera"], max_episode_steps, full["supersample"])

    @classmethod
    def gains(cls) -> dict:
        return {"kp": cls.kp, "kv": cls.kv, "k_rest": cls.k_rest, "damping": cls.damping}

    @property
    def model(self) -> mujoco.MjModel:
        return self.env.unwrapped.model

    @property
    def data(self) -> mujoco.MjData:
        return self.env.unwrapped.data

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return obs

    def torque(self, obs: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Joint torques that move the fingertip toward ``target`` (the DLS IK controller, one substep).

        The Jacobian is the tips_arm body's centre of mass's, 0.10 m from the body origin that ``obs[TIP]`` reports
        and the target is about: on `mixed` steps J_origin pinv(J_com) is 0.29 from the identity (median of each
        step's largest entry; 0.038 with the origin's, `mj_jacBody`). Yet the origin's did not track better
        (thirty-fifth session): the velocity servo's lag, not the Jacobian, sets how well the tip follows
        (`scripts/ik_tracking.py` measures it)."""
        mujoco.mj_jacBodyCom(self.model, self.data, self._jacp, None, self._body)
        J = self._jacp[:, :7]
        J_pinv = J.T @ np.linalg.inv(J @ J.T + self.damping ** 2 * np.eye(3))
        q, qd = obs[:7], obs[7:14]
        dq = J_pinv @ (self.kp * (target - obs[TIP])) + (np.eye(7) - J_pinv @ J) @ (self.k_rest * (REST_POSE - q))
        return np.clip(self.kv * (dq - qd), self.torque_space.low, self.torque_space.high)

    def step(self, action):
        """One 0.05 s step of an end-effector action: ``(obs, reward, terminated, truncated, info)``, Pusher-v5's
        observation, and the task reward with the control cost on the action (``task_reward``).

        The target is the tip now plus the delta, and the next step starts again from where the tip got: the
        action acts as a velocity command the arm follows with a lag, not a displacement done within the step.
        From rest, a direction held at 0.5 is covered 0.07 in the first step and 0.68 over 8 (medians,
        `scripts/ik_tracking.py`).

        Positions and frames are MuJoCo's kinematics of the state before the last substep's integration, as in
        gymnasium's Pusher-v5 itself (no `mj_kinematics` after `mj_step`): the tip is 0.55 cm (median; at most
        1.66) from where the stored joint angles put it, and the reset frame has no such lag."""
        action = np.clip(np.asarray(action, np.float64).reshape(ACTION_DIM), -ACTION_LIMIT, ACTION_LIMIT)
        u = self.env.unwrapped
        obs = u._get_obs()
        target = obs[TIP] + action / ACTION_SCALE
        for _ in range(u.frame_skip):
            u.do_simulation(self.torque(obs, target), 1)
            obs = u._get_obs()
        reward = float(task_reward(obs[TIP], obs[OBJ], obs[GOAL], action))
        return obs, reward, False, False, {}

    def render(self) -> np.ndarray:
        """Current frame, uint8 (H, W, 3) RGB."""
        frame = self.env.render()
        if self.supersample > 1:
            frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame)

    def out_of_view(self) -> dict[str, tuple[int, int]]:
        """How much of each thing that matters the frame cuts off now: ``{"arm", "fork", "object", "goal": (pixels
        outside the frame, pixels in all)}`` at the render resolution (before the downsampling), by segmentation
        rendering of the same camera over twice the field of view, whose middle is the frame. "fork": the wrist
        roll link and the fingertip body, the arm's end."""
        from gymnasium.envs.mujoco.mujoco_rendering import OffScreenViewer

        m, h, w = self.model, self.height * self.supersample, self.width * self.supersample
        vis = m.vis.global_
        if self._seg is None:  # gymnasium's viewer: the GL backend its frames use (MUJOCO_GL)
            size = vis.offwidth, vis.offheight
            vis.offwidth, vis.offheight = 2 * w, 2 * h  # its framebuffer's size, read as its context is made
            try:
                self._seg = OffScreenViewer(m, self.data, 2 * w, 2 * h)
            finally:
                vis.offwidth, vis.offheight = size
            # each geom drawn in a colour that codes its index (decoded below: gymnasium's own decoding overflows
            # uint8 under numpy 2)
            self._seg.scn.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
            self._seg.scn.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        cam = self._seg.cam
        cam.distance, cam.elevation, cam.azimuth = (self.camera[k] for k in ("distance", "elevation", "azimuth"))
        cam.lookat[:] = self.camera["lookat"]
        fovy = vis.fovy  # the model's, which the frames' renderer reads too: put back at once
        vis.fovy = float(np.degrees(2 * np.arctan(2 * np.tan(np.radians(fovy) / 2))))
        try:
            self._seg.make_context_current()
            rgb = self._seg.render("rgb_array").astype(np.int64)
        finally:
            vis.fovy = fovy
            if (frames := self.env.unwrapped.mujoco_renderer.viewer) is not None:
                frames.make_context_current()  # one context is current at a time: the frames' again
        scn = self._seg.scn
        body_of = np.full(scn.ngeom + 1, -1)  # by segment id + 1 (0: nothing drawn there) -> the geom's body
        for g in (scn.geoms[i] for i in range(scn.ngeom)):
            if g.objtype == mujoco.mjtObj.mjOBJ_GEOM and g.segid >= 0:
                body_of[g.segid + 1] = m.geom_bodyid[g.objid]
        code = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        body = body_of[np.where(code <= scn.ngeom, code, 0)]
        inside = np.zeros(body.shape, bool)
        inside[h // 2:h // 2 + h, w // 2:w // 2 + w] = True
        named = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n) for n in ("r_wrist_roll_link", "tips_arm",
                                                                                "object", "goal")}
        arm = [b for b in range(1, m.nbody) if b not in (named["object"], named["goal"])]
        groups = {"arm": arm, "fork": [named["r_wrist_roll_link"], named["tips_arm"]], "object": [named["object"]],
                  "goal": [named["goal"]]}
        return {k: (int((np.isin(body, v) & ~inside).sum()), int(np.isin(body, v).sum())) for k, v in groups.items()}

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None
        self.env.close()  # free the GL context now, not in __del__ at interpreter exit

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------- policies
class ScriptedPolicy:
    """Reach the object (travel above the table, descend when close), and once the object is between the fork's
    fingers push it toward the goal: a fingertip target, and the action is the clipped delta toward it.

    ``noise`` in [0, 1] blends the action with temporally correlated random actions (0: clean controller,
    1: pure correlated noise), so policies of clearly different quality come from one knob.
    """

    cage_radius, push_step = 0.05, 0.1
    noise_rho = 0.8  # AR(1) noise: correlated over ~5 steps so it actually displaces the arm

    def __init__(self, env: PusherRenderer, rng: np.random.Generator, noise: float = 0.0):
        self.rng, self.noise = rng, float(noise)
        self._n = np.zeros(3)

    def target(self, obs: np.ndarray) -> np.ndarray:
        tip, obj, goal = obs[TIP], obs[OBJ], obs[GOAL]
        dist = np.linalg.norm(tip[:2] - obj[:2])
        if dist < self.cage_radius and tip[2] < Z_LOW + 0.04:  # object caged: move it toward the goal
            to_goal = goal[:2] - obj[:2]
            step = to_goal * min(1.0, self.push_step / (np.linalg.norm(to_goal) + 1e-6))
            return np.r_[obj[:2] + step, Z_LOW]
        return np.r_[obj[:2], Z_HOVER if dist > 0.08 else Z_LOW]  # travel high, descend when close

    def control(self, obs: np.ndarray) -> np.ndarray:
        """The clean action: the delta to the target, x20, clipped to the action box."""
        return np.clip(ACTION_SCALE * (self.target(obs) - obs[TIP]), -ACTION_LIMIT, ACTION_LIMIT)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = self.control(obs)
        if self.noise > 0:
            self._n = self.noise_rho * self._n + np.sqrt(1 - self.noise_rho ** 2) * self.rng.standard_normal(3)
            a = (1 - self.noise) * a + self.noise * ACTION_LIMIT * self._n
        return np.clip(a, -ACTION_LIMIT, ACTION_LIMIT).astype(np.float32)


class RandomPolicy:
    """Uniform i.i.d. actions in the action box."""

    def __init__(self, env, rng: np.random.Generator):
        space = env.action_space
        self.low, self.high, self.rng = space.low, space.high, rng

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class MixedPolicy:
    """Scripted controller whose noise level is drawn per episode, interleaved with bursts
    of uniform random actions, so the data covers purposeful and random motion."""

    def __init__(self, env, rng: np.random.Generator, noise: float | None = None, burst_p: float = 0.04):
        self.noise = float(rng.uniform(0.0, 0.8)) if noise is None else float(noise)
        self.scripted = ScriptedPolicy(env, rng, self.noise)
        self.random = RandomPolicy(env, rng)
        self.rng, self.burst_p, self._burst = rng, burst_p, 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = self.scripted(obs)  # always step it, so its noise state evolves identically
        if self._burst == 0 and self.rng.random() < self.burst_p:
            self._burst = int(self.rng.integers(4, 12))
        if self._burst > 0:
            self._burst -= 1
            return self.random(obs)
        return a


class ExplorePolicy:
    """Motion that ignores the task: segments of 6-24 steps, each a reach toward a random fingertip target in the
    workspace or a constant random direction, at a random speed (the largest axis at 0.4-1 of the action box).

    In ``mixed`` data the arm nearly always heads for the object (median cosine 0.81 between the action and the
    tip -> object direction), so the frame alone nearly predicts where it goes, and a sideways sweep like the
    fidelity check's "fixed" policy is rarely seen. Here only the actions say where the arm goes (cosine -0.46)."""

    kind = "explore"
    # fingertip targets: about the 1-99 % range of the tip in `mixed` data (x 0.13-0.82, y -0.76..-0.04, z up to
    # 0.21), y widened to +0.2 so sideways motion past the object area is seen too, z kept near the table
    box = np.array([[0.15, -0.75, Z_LOW], [0.85, 0.2, 0.1]])

    def __init__(self, env, rng: np.random.Generator, bounded: bool = False):
        self.rng, self._left, self._target, self._dir, self._speed = rng, 0, None, np.zeros(3), 1.0
        self.bounded = bounded

    def _new_segment(self) -> None:
        self._left = int(self.rng.integers(6, 25))
        self._speed = float(self.rng.uniform(0.4, 1.0)) * ACTION_LIMIT
        if self.rng.random() < 0.5:
            self._target = self.rng.uniform(self.box[0], self.box[1])
        else:
            d = self.rng.standard_normal(3)
            self._target, self._dir = None, d / np.abs(d).max()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self._left == 0:
            self._new_segment()
        self._left -= 1
        if self._target is None:
            a = self._speed * self._dir
        else:  # toward the target, its largest axis capped at the segment's speed
            a = ACTION_SCALE * (self._target - obs[TIP])
            a = a * min(1.0, self._speed / max(np.abs(a).max(), 1e-9))
        if self.bounded:  # no command out through a face the tip is past: free directions raise the arm out of view
            tip = obs[TIP]
            a = np.where(((tip < self.box[0]) & (a < 0)) | ((tip > self.box[1]) & (a > 0)), 0.0, a)
        return np.clip(a, -ACTION_LIMIT, ACTION_LIMIT).astype(np.float32)


class WideExplorePolicy(ExplorePolicy):
    """``explore`` over the arm's whole reach, out of the camera's view included. The fidelity check's ``away``
    takes the fingertip to y = -1.35, out of view (78 % of its steps outside ``ExplorePolicy.box``), and
    ``random-dir`` up to z = 0.33, so a state decoder must learn those poses from the visible arm."""

    kind = "explore-wide"
    box = np.array([[0.15, -1.4, Z_LOW], [0.85, 0.2, 0.35]])


class VariedPolicy:
    """Per episode (one draw), ``mixed`` or ``explore`` (`explore`: its class, e.g. ``WideExplorePolicy``) with
    equal odds: purposeful pushes and action-led motion in one store, with one held-out split across both."""

    def __init__(self, env, rng: np.random.Generator, noise: float | None = None, explore=ExplorePolicy,
                 bounded: bool = False):
        drew_explore = rng.random() < 0.5
        self.policy = explore(env, rng, bounded) if drew_explore else MixedPolicy(env, rng, noise)
        self.kind = self.policy.kind if drew_explore else "mixed"
        self.noise = getattr(self.policy, "noise", None)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.policy(obs)


def make_policy(name: str, env, rng: np.random.Generator, noise: float | None = None,
                bounded: bool | None = None) -> Policy:
    """``obs -> action`` policy for one episode. ``scripted`` (noise default 0), ``random``,
    ``mixed`` (noise drawn per episode unless given), ``explore``, ``varied`` (``mixed`` or ``explore``, drawn
    per episode), ``explore-wide`` and ``varied-wide`` (the same over the arm's whole reach). `bounded`: explore's
    directions stop at its box (`SCENES`' "explore"; None: the renderer's scene says, `explore_bounded`). Create a
    new one per episode."""
    if bounded is None:
        bounded = getattr(env, "explore_bounded", False)
    if name == "scripted":
        return ScriptedPolicy(env, rng, 0.0 if noise is None else noise)
    if name == "random":
        return RandomPolicy(env, rng)
    if name == "mixed":
        return MixedPolicy(env, rng, noise)
    if name == "explore":
        return ExplorePolicy(env, rng, bounded)
    if name == "varied":
        return VariedPolicy(env, rng, noise, bounded=bounded)
    if name == "explore-wide":
        return WideExplorePolicy(env, rng, bounded)
    if name == "varied-wide":
        return VariedPolicy(env, rng, noise, explore=WideExplorePolicy, bounded=bounded)
    raise ValueError(f"unknown policy {name!r}; choose from {POLICIES}")


# ---------------------------------------------------------------------------------- rollouts
def episode_seed(seed: int, index: int) -> int:
    """Independent, reproducible per-episode seed (for env.reset and the policy RNG)."""
    return derived_seed(seed, index)


def _rollout(renderer: PusherRenderer, policy: Policy, seed: int, steps: int) -> dict[str, np.ndarray]:
    obs = renderer.reset(seed=seed)
    frames = np.empty((steps + 1, renderer.height, renderer.width, 3), np.uint8)
    states = np.empty((steps + 1, obs.shape[0]), np.float32)
    actions = np.empty((steps, renderer.action_space.shape[0]), np.float32)
    rewards = np.empty(steps, np.float32)
    term, trunc = np.zeros(steps, bool), np.zeros(steps, bool)
    frames[0], states[0] = renderer.render(), obs
    for t in range(steps):
        # the action the simulator executes (and the reward charges): a policy's out-of-range action clipped
        actions[t] = np.clip(policy(obs), -ACTION_LIMIT, ACTION_LIMIT)
        obs, r, te, tr, _ = renderer.step(actions[t])
        frames[t + 1], states[t + 1] = renderer.render(), obs
        rewards[t], term[t] = r, te
    trunc[-1] = True  # Pusher never terminates; the episode is cut at the time limit = steps
    return {"obs": frames, "actions": actions, "rewards": rewards, "terminated": term,
            "truncated": trunc, "state": states}


def real_rollout(policy_fn: Callable[[np.ndarray], np.ndarray] | str, seed: int, steps: int = 48,
                 height: int = HEIGHT, width: int = WIDTH, camera: dict | None = None,
                 noise: float | None = None, renderer: PusherRenderer | None = None) -> dict[str, np.ndarray]:
    """Run one episode in the real simulator.

    ``policy_fn``: a policy name (see ``make_policy``; seeded from ``seed``) or a callable
    ``obs (23,) -> action (3,)`` (end-effector delta x20). Returns ``obs`` (T+1,H,W,3) uint8 frames incl. the reset
    frame, ``actions`` (T,3) float32 (clipped to the action space, as executed), ``rewards`` (T,),
    ``terminated``/``truncated`` (T,), ``state`` (T+1,23) Pusher observations (tips_arm/object/goal positions at
    [14:23]).
    Pass a ``renderer`` (with ``max_episode_steps=steps``) to reuse one across calls.
    """
    own = renderer is None
    if own:
        renderer = PusherRenderer(height, width, camera, max_episode_steps=steps)
    try:
        if isinstance(policy_fn, str):
            policy_fn = make_policy(policy_fn, renderer, np.random.default_rng([seed, 1]), noise)
        return _rollout(renderer, policy_fn, seed, steps)
    finally:
        if own:
            renderer.close()


def _resume_hint(old: dict, diff: dict) -> str:
    """The make-data flags that resume a store of other settings, where flags can give them."""
    flags = [f"{flag} {old[key]}" for key, flag in (("steps", "--env-steps"), ("height", "--height"),
                                                    ("width", "--width")) if key in diff]
    if diff.keys() & {"camera", "explore"}:
        name = scene_name(old)
        if name is None:  # a camera of its own (generate's camera=): no flag gives it
            return ""
        flags.append(f"--scene {name}")
    return f"; to resume it, give make-data {' '.join(flags)}" if flags and diff.keys() <= {
        "steps", "height", "width", "camera", "explore"} else ""


# recorded in a store's generator record, and a resume under others warned of, not refused: they change an episode
# in the last bits only (a 1e-15 change in a torque grows to at most 1e-7 m in 48 steps), unlike MuJoCo's release
NOTED = ("gymnasium", "numpy")


def generate(out_path: str | os.PathLike, episodes: int = 100, steps: int = 48, seed: int = 0,
             height: int = HEIGHT, width: int = WIDTH, policy: str = "mixed", progress: bool = True,
             camera: dict | None = None, scene: str = "v1", break_lease: bool = False) -> dict[str, Any]:
    """Generate ``episodes`` episodes of ``steps`` steps into the EpisodeStore at ``out_path``
    (created if missing). Episode ``i`` has id ``f"seed{seed}_ep{i:05d}"`` and is fully
    determined by (seed, i, policy, steps, resolution, scene), the MuJoCo version and the GL backend
    (``MUJOCO_GL``; both recorded, and a store is refused to another); episodes already complete are skipped,
    so an interrupted run resumes.
    `scene`: one of `SCENES` ("v1" made the bundled model's data); `camera` replaces its camera.
    The run holds the store's lease (`rollouts.store.acquire_lease`): another run into the store meanwhile is
    refused with `LeaseError`; `break_lease` replaces the lease a killed run left (the CLI turns SIGTERM into
    KeyboardInterrupt, so only SIGKILL or a crash of the machine leaves one).
    Returns a summary with frames/s."""
    from tqdm.auto import tqdm

    if not 0 <= seed < 2**32:  # before the store is made: episode_seed would refuse it after
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; choose from {tuple(SCENES)}")
    if height % 8 or width % 8:  # rendered and stored all the same: the frames may serve another use
        warnings.warn(f"{height}x{width} frames: `worldcache train` builds models of sizes divisible by 8 (the VAE's "
                      f"4x, then the DiT's 2x2 patches) and will refuse this store", stacklevel=2)
    sc = SCENES[scene]
    camera = _camera(sc["camera"] if camera is None else camera)
    renderer = PusherRenderer(height, width, camera, max_episode_steps=steps)
    config = {"env_id": ENV_ID, "height": height, "width": width, "camera": camera,
              "supersample": renderer.supersample, "steps": steps, "fps": 1.0 / renderer.dt,
              "dt": renderer.dt, "action_low": renderer.action_space.low.tolist(),
              "action_high": renderer.action_space.high.tolist(), "actions": "end-effector delta x20",
              "controller": renderer.gains(),
              "explore": sc["explore"],
              "mujoco": MUJOCO_VERSION,  # an episode is a function of its seed and index under one release only
              "gl": GL_BACKEND,  # and one GL backend (only osmesa is checked)
              # bit for bit also of these: Pusher's XML and reset draws; the IK's linear algebra (BLAS)
              "gymnasium": gym.__version__, "numpy": np.__version__}
    # one writer per store, as for rollouts: a second make-data run (or a rollout) into it is refused while this
    # one runs, since two runs' record updates (and episodes of one seed) would race
    lease = None
    try:
        lease = acquire_lease(out_path, break_lease=break_lease)
        store = EpisodeStore(out_path, mode="a", lease=lease)
        if "generator" not in store.attrs and len(store):  # episodes of another kind (a rollout store, say)
            raise ValueError(f"{out_path} holds episodes that make-data did not write (no 'generator' attrs): "
                             f"give another --out")
        if "generator" in store.attrs:  # resuming: refuse to mix incompatible episodes in one store
            # a store written before the MuJoCo version and the GL backend were recorded does not say which made
            # it; one written before explore's bounds were recorded had them free
            old = {"explore": "free", **store.attrs["generator"]}
            diff = {k: (old.get(k), v) for k, v in config.items()
                    if old.get(k) != v and (k in old or k not in ("mujoco", "gl")) and k not in NOTED}
            if noted := {k: (old[k], config[k]) for k in NOTED if k in old and old[k] != config[k]}:
                warnings.warn(f"{out_path} was generated under other releases (old, new): {noted}; its new episodes "
                              f"may differ from what those would have made in the last bits (not in what they show)",
                              stacklevel=2)
            if diff:
                raise ValueError(f"{out_path} was generated with different settings (old, new): {diff}"
                                 + _resume_hint(old, diff))
        else:
            store.attrs.update({"generator": config, "frame_shape": [height, width, 3],
                                "action_dim": int(renderer.action_space.shape[0])})
        runs = dict(store.attrs.get("runs", {}))
        clash = sorted({r["policy"] for r in runs.values() if r["seed"] == seed and r["policy"] != policy})
        if clash:  # episode ids are seed{seed}_ep{i}: another policy's episodes would be taken for this one's
            raise ValueError(f"{out_path}: seed {seed} already holds {clash[0]!r} episodes; give {policy!r} another "
                             f"--seed")
        key = f"seed{seed}_{policy}"  # a shorter run again must not shrink the record of what the store holds
        held = runs.get(key, {}).get("episodes", 0)
        runs[key] = {"seed": seed, "policy": policy, "episodes": held}  # the seed is this policy's from now on
        store.attrs["runs"] = runs

        written = skipped = 0
        t0 = time.perf_counter()
        for i in tqdm(range(episodes), disable=not progress, desc=f"Pusher {scene} {policy} seed={seed}",
                      unit="ep"):
            eid = f"seed{seed}_ep{i:05d}"
            if store.exists(eid):
                skipped += 1
                continue
            es = episode_seed(seed, i)
            pol = make_policy(policy, renderer, np.random.default_rng([es, 1]),  # stream apart from env's
                              bounded=sc["explore"] == "bounded")
            ep = _rollout(renderer, pol, es, steps)
            meta = {"seed": seed, "index": i, "episode_seed": es, "policy": policy,
                    "kind": getattr(pol, "kind", policy), "noise": getattr(pol, "noise", None)}
            state = ep.pop("state")
            with deferred_interrupts():  # a stop lands between writes, never inside zarr's
                store.write_episode(eid, **ep, extras={"state": state}, attrs=meta)
            written += 1
        # only now does the store hold them: an interrupted run's record claims no episode it lacks
        store.check_lease()  # root attrs are not checked on write: a run whose lease was broken records nothing
        with deferred_interrupts():
            runs[key]["episodes"] = max(episodes, held)
            store.attrs["runs"] = runs
            store.consolidate()  # index.json: listing the store then reads one file, not one per episode
    finally:
        try:
            if lease is not None:
                release_lease(out_path, lease)
        finally:
            renderer.close()
    elapsed = time.perf_counter() - t0
    frames = written * (steps + 1)
    return {"path": os.fspath(out_path), "written": written, "skipped": skipped, "seconds": elapsed,
            "frames_per_s": frames / elapsed if elapsed > 0 else float("nan"), "episodes_total": len(store)}
