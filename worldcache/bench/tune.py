"""`worldcache tune`: search (denoising steps, cache policy, threshold) on tuning episodes and write the chosen
configuration as a cache YAML with its `num_steps`, which the env (`cache=`), `worldcache rollout` (a rollout
config's `cache:`) and `worldcache bench --cache` take as is.

The search is the benchmark itself (`run_bench`) on tuning episodes, disjoint from the benchmark's (env seeds
20000+, or a store's training split), with `steps-only` among the candidates. The rule: the fastest configuration
whose PSNR against the reference (uncached, the model's default steps) is at least `min_psnr`, or the closest to
the reference whose speedup is at least `min_speedup`. Speed is the compute speedup (`measure.py`): counted from
the blocks that ran at unit times measured once, so the choice depends on the machine's load only through the
policies' own decision time, measured live (run it alone; the YAML says when the benchmark found the cores
shared)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from .episodes import TUNING_SEED
from .grid import STEPS_ONLY, THRESHOLD_SCALES, display

TUNE_SPEED = "compute_speedup"


def _psnr(row) -> float:
    return math.inf if row["psnr_vs_uncached"] is None else row["psnr_vs_uncached"]


def choose(rows: list[dict], min_psnr: float | None = None, min_speedup: float | None = None) -> dict:
    """The chosen row (see the module doc); ValueError naming the best reached when none meets the floor."""
    if (min_psnr is None) == (min_speedup is None):
        raise ValueError("give exactly one of --min-psnr and --min-speedup")
    rows = [r for r in rows if r["group"] == "policy" and r[TUNE_SPEED] is not None]
    if min_psnr is not None:
        ok = [r for r in rows if _psnr(r) >= min_psnr]
        if not ok:
            best = max(rows, key=_psnr)
            raise ValueError(f"no configuration reaches {min_psnr} dB; the closest: {best['label']} "
                             f"({best['psnr_vs_uncached']:.2f} dB)")
        return max(ok, key=lambda r: (r[TUNE_SPEED], _psnr(r)))
    ok = [r for r in rows if r[TUNE_SPEED] >= min_speedup]
    if not ok:
        best = max(rows, key=lambda r: r[TUNE_SPEED])
        raise ValueError(f"no configuration reaches {min_speedup}x; the fastest: {best['label']} "
                         f"({best[TUNE_SPEED]:.2f}x)")
    return max(ok, key=lambda r: (_psnr(r), r[TUNE_SPEED]))


def tuned_yaml(row: dict, rule: str, source: str, reference_steps: int, busy: str | None = None) -> str:
    """The cache YAML of a chosen row: ``policy``, every setting of its config, ``num_steps``; a comment says how
    it was chosen and what it measured (`source`: the episodes; `busy`: the benchmark's warning that other work
    shared the cores, which inflates the policies' own decision time in the compute speedup)."""
    q = "identical" if row["psnr_vs_uncached"] is None else f"{row['psnr_vs_uncached']:.2f} dB"
    head = (f"# worldcache tune: {rule}, on {source}.\n# Chosen: {display(row['label'])}: compute speedup "
            f"{row['compute_speedup']:.2f}x (wall clock {row['denoising_speedup']:.2f}x), PSNR vs. uncached "
            f"{reference_steps} steps {q}, computed fraction {row['computed_fraction']:.2f}.\n")
    if busy:
        head += f"# Measured on a shared machine: {busy}\n"
    config = json.loads(json.dumps(row["config"]))  # plain YAML types (tuples -> lists)
    body = {"policy": "none" if row["policy"] == STEPS_ONLY else row["policy"], **config,
            "num_steps": row["num_steps"]}
    return head + yaml.safe_dump(body, sort_keys=False)


def tune(checkpoint=None, policies=("worldcache",), denoise_steps=None, threshold_scales=THRESHOLD_SCALES,
         min_psnr: float | None = None, min_speedup: float | None = None, out="tuned.yaml", episodes: int = 2,
         chunks: int = 2, data=None, holdout: float = 0.1, first_seed: int = TUNING_SEED, json_out=None,
         device: str = "cpu", dtype: str = "fp32", seed: int = 0, reference_steps: int | None = None,
         verbose: bool = True, compile: bool = False) -> dict:
    """Search and write `out`. Returns ``{"choice": row, "yaml": path, "bench": run_bench result}``.
    `policies`: as `bench_configs` takes them (a name at its threshold grid; a YAML path or a ``{"policy": NAME,
    **settings}`` spec at those settings), each times the step axis. `reference_steps`: the uncached reference's
    steps (default: the model's)."""
    from .run import run_bench

    if (min_psnr is None) == (min_speedup is None):
        raise ValueError("give exactly one of --min-psnr and --min-speedup")
    cands = []  # as given, once each; specs ({"policy": NAME, ...}) are dicts, which dict.fromkeys cannot hold
    for p in [*policies, STEPS_ONLY]:
        if p not in cands:
            cands.append(p)
    res = run_bench(checkpoint, policies=cands, episodes=episodes, chunks=chunks, num_steps=reference_steps,
                    ablation=False, json_out=json_out,
                    seed=seed, device=device, verbose=verbose, first_seed=first_seed, dtype=dtype,
                    denoise_steps=denoise_steps, data=data, holdout=holdout, tuning=True,
                    threshold_scales=threshold_scales, compile=compile)
    row = choose(res["rows"], min_psnr, min_speedup)
    rule = (f"the fastest (compute speedup) with PSNR >= {min_psnr} dB vs. the uncached reference"
            if min_psnr is not None else f"the closest to the uncached reference with compute speedup >= "
                                         f"{min_speedup}x")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    st = res["settings"]
    source = f"{st['episodes']} episode(s) x {st['chunks']} chunk(s), {st['episode_source']}"
    out.write_text(tuned_yaml(row, rule, source, st["num_steps"], res["machine"].get("busy")))
    if verbose:
        print(f"chose {display(row['label'])} ({row['compute_speedup']:.2f}x compute, "
              f"{_psnr(row):.2f} dB); wrote {out}")
    return {"choice": row, "yaml": str(out), "bench": res}
