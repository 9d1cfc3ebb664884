"""Where the benchmark's episodes come from: MuJoCo Pusher simulated on the fly (env seeds, so a benchmark
episode is a function of its seed), or (frames, actions) episodes of an episode store (`worldcache make-data`'s
format, or a rollout store with its chunk frames) for any model on the user's own data.

Disjoint sets: the benchmark measures on env seeds ``HELDOUT_SEED + i`` (a store: its held-out split, the last
`holdout` fraction of the sorted ids, as `worldcache train` splits); tuning (`worldcache tune`, the ablation's
threshold matching) uses ``TUNING_SEED + i`` (a store: the training split, from its end). Training data seeds its
episodes with 32-bit hashes (`mujoco_data.episode_seed`), so these small seeds are disjoint from it in practice."""
from __future__ import annotations

import numpy as np

HELDOUT_SEED = 10_000          # env seeds of the benchmark's episodes: HELDOUT_SEED + i
TUNING_SEED = 20_000           # env seeds of tuning episodes: TUNING_SEED + i
CALIBRATION_SEED = HELDOUT_SEED - 1  # warm-up / MagCache calibration episode, not among the measured ones


def check_simulable(spec, instead: str = "give --data, an episode store of this model's own (frames, actions)") -> None:
    """Simulated Pusher episodes drive only a model of Pusher's actions: said before the model loads (a converted
    Cosmos model takes 7-d Bridge actions), with what to do `instead`."""
    from ..mujoco_data import ACTION_DIM

    if spec.action_dim != ACTION_DIM:
        raise ValueError(f"the model ({spec.name}) takes {spec.action_dim}-d actions, and the simulated Pusher "
                         f"episodes drive it with {ACTION_DIM}-d fingertip deltas: {instead}")


def heldout_episodes(n: int, steps: int, height: int, width: int, first_seed: int = HELDOUT_SEED,
                     policy: str = "mixed", scene: dict | None = None) -> list[dict]:
    """`n` real Pusher episodes of `steps` steps (env seeds first_seed + i), the "mixed" policy so the arm moves,
    in a model's `scene` (`WorldModelSpec.scene`; None: v1)."""
    from ..mujoco_data import PusherRenderer, real_rollout

    with PusherRenderer.for_scene(scene, height, width, max_episode_steps=steps) as renderer:
        return [real_rollout(policy, first_seed + i, steps, renderer=renderer) for i in range(n)]


def store_episodes(path, n: int, frames: int, spec, tuning: bool = False, holdout: float = 0.1,
                   from_start: bool = False) -> list[dict]:
    """The first `frames` steps of up to `n` episodes of the store at `path` that have that many: from the held-out
    split (`tuning`: from the training split, last ids first; with `from_start`, first ids first, as the warm-up
    episode is taken, apart from the tuning ones). Each is ``{"obs": uint8 (frames + 1, H, W, 3),
    "actions": float32 (frames, A), "id": ...}``; chunked actions (T, chunk, A) of a rollout store are flattened,
    its ground truth then being the stored chunk frames. Frame size and action dim must be the model's."""
    from ..rollouts.store import EpisodeStore
    from ..scene import check_scene
    from ..train import split

    store = EpisodeStore(str(path), mode="r")
    check_scene(spec.scene, store.attrs, path)
    ids = sorted(store.episode_ids())
    if not ids:
        raise ValueError(f"{path}: no complete episodes")
    train, held = split(ids, holdout) if holdout > 0 else ([], ids)
    pool = (train if from_start else train[::-1]) if tuning else held
    out = []
    for eid in pool:
        ep = store.load_episode(eid)
        obs, actions = ep["obs"], np.asarray(ep["actions"], np.float32)
        if actions.ndim == 3:  # a rollout store: one chunk per step, every predicted frame in "frames"
            if "frames" not in ep:
                raise ValueError(f"{path}: episode {eid} has chunked actions but no 'frames' to compare with")
            obs = np.concatenate([obs[:1], ep["frames"].reshape(-1, *obs.shape[1:])])
            actions = actions.reshape(-1, actions.shape[-1])
        if obs.shape[1:] != (spec.height, spec.width, 3) or actions.shape[-1] != spec.action_dim:
            raise ValueError(f"{path}: episode {eid} has frames {obs.shape[1:]} and {actions.shape[-1]}-d actions; "
                             f"the model takes ({spec.height}, {spec.width}, 3) and {spec.action_dim}-d")
        if len(actions) >= frames:
            out.append({"obs": obs[:frames + 1], "actions": actions[:frames], "id": eid})
        if len(out) == n:
            break
    part = "training" if tuning else "held-out"
    if not pool:  # the split leaves this part empty (--holdout 1: no training split)
        raise ValueError(f"{path}: --holdout {holdout} leaves no {part} episode of its {len(ids)}")
    if not out:
        raise ValueError(f"{path}: none of its {len(pool)} {part} episode(s) has {frames} steps (holdout={holdout}, "
                         f"{len(ids)} episodes)")
    return out


def bench_episodes(spec, n: int, frames: int, data=None, first_seed: int = HELDOUT_SEED, holdout: float = 0.1,
                   tuning: bool = False) -> list[dict]:
    """`n` episodes of `frames` steps: from the store `data`, else simulated from env seed `first_seed`."""
    if data is not None:
        return store_episodes(data, n, frames, spec, tuning, holdout)
    return heldout_episodes(n, frames, spec.height, spec.width, first_seed, scene=spec.scene)


def calibration_episode(spec, data=None, holdout: float = 0.1) -> dict:
    """One chunk for warm-up (and MagCache's calibration), never among the measured episodes."""
    if data is not None:  # the training split from its start (tuning measures from its end); a store used whole
        # (holdout 0) warms up on its first episode
        return store_episodes(data, 1, spec.chunk, spec, tuning=holdout > 0, holdout=holdout, from_start=True)[0]
    return heldout_episodes(1, spec.chunk, spec.height, spec.width, CALIBRATION_SEED, scene=spec.scene)[0]
