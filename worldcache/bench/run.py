"""`run_bench`: every configuration of the grid on the same episodes, against the uncached reference.

Every configuration predicts the same start frames and action sequences with the same noise seeds, open loop
through `WorldModel.rollout`. Runs are INTERLEAVED and SHUFFLED: each episode runs the reference (uncached,
reference steps) and every configuration in its own order (`run_order`), so a slow phase of a shared machine falls
on random rows rather than on one policy's, whose rows are listed next to one another. Every
configuration and the reference make one warm-up prediction first, at their own steps, on a calibration episode
(where MagCache calibrates its `mag_ratios` when its YAML has none). On a noisy machine pass ``repeats=3``: each
rollout is timed three times and the fastest kept (the frames are identical across repeats)."""
from __future__ import annotations

import numpy as np

from ..quality import psnr, ssim
from .ablation import match_ablation
from .episodes import HELDOUT_SEED, TUNING_SEED, bench_episodes, calibration_episode, check_simulable
from .frontier import equal_speed_comparison, frontier_at, frontiers
from .grid import THRESHOLD_SCALES, bench_configs
from .measure import (Runs, TimedNoCache, _finite, busy, cpu_sample, machine_info, measure_row, run_episode,
                      unit_times, warm_up)
from .report import format_table, write_outputs


def run_bench(checkpoint=None, policies=None, episodes: int = 10, chunks: int = 2, num_steps: int | None = None,
              ablation: bool = True, json_out=None, seed: int = 0, grid: bool = True, device: str = "cpu",
              repeats: int = 1, verbose: bool = True, first_seed: int = HELDOUT_SEED, dtype: str = "fp32",
              denoise_steps=None, data=None, holdout: float = 0.1, tuning: bool = False,
              threshold_scales=THRESHOLD_SCALES, match_episodes: int = 1, match_compute: bool = True,
              compile: bool = False) -> dict:
    """Benchmark cache policies on `episodes` episodes of `chunks` env steps each.

    `num_steps`: the reference's steps (default: the model's); `denoise_steps`: the step axis every policy runs on
    (default: `grid.QUICK_DENOISE_STEPS` up to the reference's). `data`: an episode store to take the episodes
    from (its held-out split, the last `holdout` fraction; ``tuning=True``: its training split) instead of
    simulating Pusher from env seed `first_seed` (another range, e.g. 20000, gives tuning episodes). The
    WorldCache ablation runs at the reference steps, at compute matched to the default's on `match_episodes`
    tuning episodes (``match_compute=False``: at the default threshold). `dtype`: the weights'. `compile`:
    torch.compile the DiT's blocks (`WorldModel.compile_dit`); diffusers' hook policies still run the eager blocks,
    so their wall clock is then not comparable with the others', and their compute counts their blocks at the
    compiled unit times without their hooks' own time (an upper bound on their compute speedup; for
    fastercache and pab, which reuse attention inside blocks that still run, a lower bound: README, "Compiled
    blocks").

    Returns ``{"rows", "uncached", "frontiers", "at_worldcache_speed", "frontier_at", "machine", "settings"}``; with `json_out`
    the JSON and the figures are written (`report.write_outputs`)."""
    from ..world_model import WorldModel, read_spec

    if episodes < 1 or chunks < 1 or repeats < 1:
        raise ValueError(f"episodes, chunks and repeats must be >= 1, got {episodes}, {chunks}, {repeats}")
    # Bad cache names and settings, and a missing store, fail before the model loads (seconds).
    spec = read_spec(checkpoint)
    if data is None:
        check_simulable(spec)
    ref_steps = num_steps or spec.num_steps
    configs = bench_configs(policies, ablation, grid, denoise_steps, ref_steps, threshold_scales)
    if not configs:  # e.g. steps-only at the reference's own steps, which is the reference
        raise ValueError(f"nothing to measure against the reference (uncached, {ref_steps} steps): steps-only runs "
                         f"at fewer steps than it; give --denoise-steps below {ref_steps}, or a cache policy")
    if data is not None:
        from ..rollouts.store import EpisodeStore

        EpisodeStore(str(data), mode="r")
    model = WorldModel.from_pretrained(checkpoint, device=device, dtype=dtype, compile=compile)
    s = model.spec
    frames = chunks * s.chunk
    eps = bench_episodes(s, episodes, frames, data, first_seed, holdout, tuning)
    real = np.stack([ep["obs"][1:] for ep in eps])
    if len(eps) < episodes and verbose:
        part = "the whole store" if holdout == 0 else f"its {'training' if tuning else 'held-out'} split"
        print(f"{data}: {len(eps)} of the {episodes} episodes asked for are there ({part}, --holdout {holdout}, "
              f"episodes of at least {frames} steps); measuring those")
    if match_compute and any(c.group == "ablation" for c in configs):
        if data is not None and holdout == 0:  # the thresholds are matched on the training split, never measured
            raise ValueError("--holdout 0 measures the whole store and leaves no training episodes to match the "
                             "ablation's thresholds on: add --no-ablation, or keep a --holdout")
        match_eps = bench_episodes(s, match_episodes, frames, data, TUNING_SEED, holdout, tuning=True)
        match_ablation(model, configs, match_eps, ref_steps, seed, verbose)
    built = [c.build() for c in configs]
    ref_policy = TimedNoCache()

    warm_up(model, [ref_policy, *built], [ref_steps] + [c.num_steps for c in configs], seed,
            calibration_episode(s, data, holdout), progress=verbose,
            labels=["the uncached reference"] + [c.policy if c.policy.endswith((".yaml", ".yml")) else c.label
                                                 for c in configs])
    ref_policy.stack_ms.clear()  # warm-up timings are not used
    ref, runs = Runs(), [Runs() for _ in configs]
    jobs = [(ref_policy, ref, ref_steps)] + [(p, r, c.num_steps) for p, r, c in zip(built, runs, configs)]
    progress = _progress(len(eps) * len(jobs), verbose)
    before = cpu_sample()  # what busy() compares: was the machine ours during the rows?
    for i, ep in enumerate(eps):
        ep_seed = seed + 1000 * (i + 1)  # noise seeds: the same for every configuration of this episode
        for k in run_order(len(configs), i, seed):
            policy, r, n = jobs[k]
            run_episode(model, ep, policy, r, n, ep_seed, repeats)
            progress.update()
    progress.close()

    fixed_ms, block_ms = unit_times(ref)
    rows = [measure_row(c, p, r, ref, real, fixed_ms, block_ms, compile) for c, p, r in zip(configs, built, runs)]
    ref_pred = np.stack(ref.frames)
    result = {
        "rows": rows,
        "uncached": {"num_steps": ref_steps, "psnr": _finite(psnr(ref_pred, real)),
                     "ssim": _finite(ssim(ref_pred, real)),
                     "denoise_ms_per_step": ref.loop_ms / ref.predictions,
                     "env_step_ms": 1e3 * ref.rollout_s / ref.predictions,
                     "fixed_ms_per_call": fixed_ms, "block_ms": block_ms,
                     "call_ms": float(np.mean([r.wall_ms for r in ref.records]))},
        "frontiers": frontiers(rows),
        "at_worldcache_speed": {"compute": equal_speed_comparison(rows, speed_key="compute_speedup"),
                                "wall": equal_speed_comparison(rows, speed_key="denoising_speedup")},
        "frontier_at": {"compute": frontier_at(rows, speed_key="compute_speedup"),
                        "wall": frontier_at(rows, speed_key="denoising_speedup"),
                        "latent": frontier_at(rows, speed_key="compute_speedup", quality_key="latent_psnr")},
        "machine": {**machine_info(device), "busy": busy(before)},
        "settings": {"checkpoint": str(checkpoint) if checkpoint else "bundled", "episodes": len(eps),
                     "chunks": chunks, "frames_per_episode": frames, "num_steps": ref_steps,
                     "denoise_steps": sorted({c.num_steps for c in configs}, reverse=True), "seed": seed,
                     "repeats": repeats, "dtype": dtype, "compile": compile, "frontier_speed": "compute_speedup",
                     **_source(eps, data, first_seed, holdout, tuning)},
    }
    for p in built:
        p.detach()
    if verbose:
        print(format_table(result))
        if result["machine"]["busy"]:
            print(result["machine"]["busy"])
    if json_out is not None:
        result["files"] = write_outputs(result, json_out, eps, ref.frames,
                                        {c.label: r.frames for c, r in zip(configs, runs)}, real)
        if verbose:
            print("wrote " + ", ".join(result["files"]))
    return result


def run_order(n: int, episode: int, seed: int = 0) -> list[int]:
    """The order in which episode `episode` runs the reference (0) and the `n` configurations (1..n): a permutation
    drawn from (seed, episode). In list order one policy's rows ran back to back, and a slow phase of the machine
    read as that policy's overhead (two runs of one grid: WorldCache's rows timed 5 % slower than DiCache's for
    their compute counts in one, 5 % faster in the other). Frames and latents do not depend on the order."""
    return np.random.default_rng([seed, episode]).permutation(n + 1).tolist()


def _source(eps, data, first_seed: int, holdout: float, tuning: bool) -> dict:
    if data is not None:
        part = "training" if tuning else "held-out"
        return {"episode_source": f"{part} episodes of {data}", "data": str(data), "holdout": holdout,
                "episode_ids": [ep["id"] for ep in eps]}
    return {"episode_source": f"Pusher, env seeds {first_seed}+", "episode_policy": "mixed",
            "env_seeds": [first_seed + i for i in range(len(eps))]}


def _progress(total: int, verbose: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench rollouts", unit="rollout", disable=not verbose)
