"""How the fingertip follows an end-effector action (the figures in README, "Actions are end-effector deltas").

From the reset pose of episodes `episode_seed(0, i)`, i < 20, a constant command s·d for 8 steps, d a random unit
direction (numpy `default_rng([i])`): the share of the commanded displacement the tip covers along d, in the first
step ((tip_1 - tip_0)·d / (s / 20)) and over the 8 steps ((tip_8 - tip_0)·d / (8 s / 20)); then, from the same
starts, 32 steps of speed s in a new random direction each step: the cosine between each step's command and the
tip's motion in it. Medians over starts (over starts × steps for the cosine).

    python scripts/ik_tracking.py
"""
from __future__ import annotations

import numpy as np

from worldcache import mujoco_data as md

SPEEDS = (0.25, 0.5, 1.0)


def unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def main() -> None:
    first, over8, cosines = ({s: [] for s in SPEEDS} for _ in range(3))
    with md.PusherRenderer(max_episode_steps=64) as r:
        for i in range(20):
            for s in SPEEDS:
                d = unit(np.random.default_rng([i]))
                tips = [r.reset(seed=md.episode_seed(0, i))[md.TIP]]
                for _ in range(8):
                    tips.append(r.step(s * d)[0][md.TIP])
                first[s].append((tips[1] - tips[0]) @ d / (s / md.ACTION_SCALE))
                over8[s].append((tips[8] - tips[0]) @ d / (8 * s / md.ACTION_SCALE))
                rng, tip = np.random.default_rng([i, 1]), r.reset(seed=md.episode_seed(0, i))[md.TIP]
                for _ in range(32):
                    d = unit(rng)
                    new = r.step(s * d)[0][md.TIP]
                    cosines[s].append((new - tip) @ d / max(np.linalg.norm(new - tip), 1e-12))
                    tip = new
    for s in SPEEDS:
        print(f"speed {s}: first step covers {np.median(first[s]):.3f} of its delta, 8 steps "
              f"{np.median(over8[s]):.3f}; median cosine of command and motion, a new direction each step: "
              f"{np.median(cosines[s]):.3f}")


if __name__ == "__main__":
    main()
