"""Pusher's task without MuJoCo: where the positions lie in its observation, and its reward formula. The env's
default reward (the state decoder's positions) and the fidelity scores read them; importing `mujoco_data` instead
would load MuJoCo and set MUJOCO_GL for the whole process."""
from __future__ import annotations

import numpy as np

# Pusher-v5 observation: qpos[:7], qvel[:7], tips_arm (3), object (3), goal (3).
TIP, OBJ, GOAL = slice(14, 17), slice(17, 20), slice(20, 23)
# Pusher-v5's reward weights: reward = -W_DIST |object - goal| - W_NEAR |tip - object| - W_CTRL |a|^2, its position
# terms exactly (tested against gymnasium); the control term charges the end-effector command a, where Pusher-v5
# charges its 7 joint torques
W_DIST, W_NEAR, W_CTRL = 1.0, 0.5, 0.1


def control_cost(actions: np.ndarray) -> np.ndarray:
    """The task's exact control cost of (..., 3) actions: ``W_CTRL * |a|^2`` per step (a in action units)."""
    return W_CTRL * np.square(np.asarray(actions, np.float64)).sum(-1)


TERMS = ("object-goal", "tip-object")  # the reward's position terms, in `reward_terms`' order


def reward_terms(tip: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Pusher's position terms on (..., 3) positions, (..., 2): ``-W_DIST |object - goal|`` and
    ``-W_NEAR |tip - object|`` (`TERMS`). Apart, they say which one a world model's frames get wrong."""
    dist = np.linalg.norm(np.asarray(obj, np.float64) - goal, axis=-1)
    near = np.linalg.norm(np.asarray(tip, np.float64) - obj, axis=-1)
    return np.stack([-W_DIST * dist, -W_NEAR * near], axis=-1)


def reward_from_terms(terms: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The task reward from `reward_terms` (..., 2) and the end-effector actions (..., 3)."""
    return terms[..., 0] + terms[..., 1] - control_cost(actions)


def task_reward(tip: np.ndarray, obj: np.ndarray, goal: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Pusher's reward formula on (..., 3) positions, with the control cost taken on the end-effector actions."""
    return reward_from_terms(reward_terms(tip, obj, goal), actions)
