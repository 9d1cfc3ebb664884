"""`bench_rollouts`: episodes/s with 1 and 2 workers, and how much of the rollout time the store writes cost."""
from __future__ import annotations

import os
import shutil

from .config import RolloutConfig
from .driver import _init_ray, run_rollouts


def bench_rollouts(config="rollout_smoke", episodes: int | None = None, workers=(1, 2), out_dir: str = "runs/bench",
                   **overrides) -> list[dict]:
    """Episodes/s with 1 vs 2 (`workers`) actors and the store's share of the rollout time (goal <= 2 %).

    Each run writes a fresh store ``out_dir/bench_w{N}.zarr``; `overrides` change config keys (e.g.
    ``num_cpus=1`` so that 2 actors fit on 2 cores). Ray starts once for all runs, and model loading is not
    timed. Columns: ``write %`` = time the actors waited for the store (queue full, final flush) / their busy
    time; ``bg write s`` = time the background writers spent writing, overlapped with prediction. Prints a
    table; returns the summaries."""
    cfg = RolloutConfig.load(config)
    cfg = RolloutConfig.load({**cfg.as_kwargs(), **overrides, **({"episodes": episodes} if episodes else {})})
    started = _init_ray(None)
    rows = []
    try:
        for w in workers:
            out = os.path.join(out_dir, f"bench_w{w}.zarr")
            shutil.rmtree(out, ignore_errors=True)
            rows.append(run_rollouts(cfg.as_kwargs(), out=out, workers=w, progress=False))
    finally:
        if started:
            import ray

            ray.shutdown()
    print(f"{cfg.episodes} episodes x {cfg.steps} steps, num_envs {cfg.num_envs}, cache {cfg.cache}, "
          f"{cfg.num_cpus} CPU per worker")
    print(f"  {'workers':>7} {'episodes/s':>10} {'steps/s':>8} {'skip':>5} {'write %':>8} {'bg write s':>10}")
    for r in rows:
        print(f"  {r['workers']:>7} {r['episodes_per_s']:10.3f} {r['steps_per_s']:8.2f} {r['mean_skip_rate']:5.2f} "
              f"{100 * r['write_share']:8.2f} {r['write_s']:10.2f}")
    if len(rows) > 1 and rows[0]["episodes_per_s"]:
        print(f"  scaling {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
              f"{rows[-1]['episodes_per_s'] / rows[0]['episodes_per_s']:.2f}x")
    return rows


__all__ = ["bench_rollouts"]
