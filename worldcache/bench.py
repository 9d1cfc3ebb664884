"""Speed and quality of every cache policy side by side, on held-out MuJoCo Pusher episodes.

`run_bench` predicts the same start frames and action sequences (same noise seeds) through the world model with
every cache configuration and without a cache. Runs are INTERLEAVED: for each episode the uncached reference runs
first, then every configuration, so slow phases of a shared machine hit all of them alike. Every configuration and
the reference make one warm-up prediction first (on a separate calibration episode), which is also where MagCache
calibrates its `mag_ratios` when its YAML has none.

Episodes are real simulator episodes generated on the fly (`mujoco_data.real_rollout`, the "mixed" exploration
policy so the arm moves) with env seeds ``HELDOUT_SEED + i``. Training data (`mujoco_data.generate`) seeds its
episodes with `episode_seed` (32-bit hashes), so these small seeds are disjoint from it in practice.

Measured per configuration (totals over all episodes, then ratios):

* ``denoising_speedup``: uncached / cached time of the denoising loop (sum of `CallRecord.wall_ms`).
* ``env_step_speedup``: uncached / cached end-to-end time of `WorldModel.rollout` (VAE encode/decode included),
  i.e. what a world-model env step costs.
* ``computed_fraction``: model calls whose block stack ran in full.
* ``overhead_ms``: the cache's decision overhead per model call. The uncached reference times its block stack per
  call, which splits a call into ``fixed_ms`` (embed + head, the same whatever the cache) and ``block_ms`` per
  transformer block. For a cached call, overhead = ``wall_ms - fixed_ms - blocks_run * block_ms``: everything the
  call spent beyond the blocks it really ran (probing maths, drift, extrapolation, warping, hook bookkeeping).
  It is a difference of timings between runs, so it is noisy (the ``none`` row shows how much). Hook policies
  (diffusers) are detached after every rollout so the next configuration runs on a clean model; re-attaching costs
  ~1-2 ms per rollout, inside the first call's time and negligible next to a rollout. FasterCache reuses attention
  *inside* blocks it still counts as run, so its figure can be negative (its saving shows up there, not in
  `blocks_run`).
* ``decision_ms``: the same overhead measured inside each call: the time the policy spent in ``run_stack`` outside
  block forwards (`CallRecord.policy_ms`), averaged over all calls. Precise, but blind to work done inside the
  blocks: ``null`` for the diffusers-hook policies, whose skipping runs in hooks within the blocks; read
  ``overhead_ms`` for those. Compare it with ``uncached.call_ms``, one full model call.
* ``psnr``/``ssim`` vs. the simulator's real frames, ``psnr_retention``/``ssim_retention`` = cached / uncached of
  those, and ``psnr_vs_uncached``/``ssim_vs_uncached`` between cached and uncached predictions. A PSNR between
  identical frames is infinite and written as ``null`` in the JSON.

On a noisy shared machine pass ``repeats=3``: each rollout is timed three times and the fastest is kept (the
frames are identical across repeats). Each row also lists the per-episode denoising speedups, to show the spread.
A ``none`` row (the default grid has one) re-runs the uncached model as if it were a cache: its speedup shows how
much timing noise there is (ideally 1.00).

With `json_out`, two figures are written next to the JSON: ``<stem>_pareto.png`` (denoising speedup vs. PSNR
against the uncached prediction and vs. PSNR retention, one marker per policy, WorldCache highlighted) and
``<stem>_strip.png``/``.gif`` (the episode with the most motion: uncached | WorldCache | the baseline closest to
the uncached prediction at a similar speedup | ground truth).
"""
from __future__ import annotations

import datetime
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import load_policy
from .cache.base import NoCache
from .cache.config import CACHE_CONFIG_DIR, read_yaml
from .quality import psnr, ssim
from .dit import sync

HELDOUT_SEED = 10_000          # env seeds of the held-out episodes: HELDOUT_SEED + i
CALIBRATION_SEED = HELDOUT_SEED - 1  # warm-up / MagCache calibration episode, not among the measured ones
THRESHOLD_POLICIES = ("worldcache", "dicache", "teacache", "easycache", "fbcache", "magcache")
THRESHOLD_SCALES = (0.5, 1.0, 2.0)
# Non-threshold policies: extra settings besides their YAML defaults (fora: both intervals are listed).
EXTRA_SETTINGS = {
    "fora": [{"interval": 2}, {"interval": 3}],
    "fastercache": [{}, {"spatial_attention_block_skip_range": 3}],
    "taylorseer": [{}, {"cache_interval": 8}],
}
ABLATION_PARTS = ("motion_adaptive", "saliency", "blend", "warp", "phase_aware")
ALL_POLICIES = ("none", "worldcache", "dicache", "fora", "teacache", "easycache", "fbcache", "fastercache",
                "magcache", "taylorseer")
METRICS = ("denoising_speedup", "env_step_speedup", "computed_fraction", "overhead_ms", "decision_ms", "psnr", "ssim",
           "psnr_retention", "ssim_retention", "psnr_vs_uncached", "ssim_vs_uncached")


# --- configurations -----------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """One row of the benchmark: a policy name (or YAML path) plus setting overrides."""

    label: str
    policy: str
    overrides: dict = field(default_factory=dict)
    group: str = "policy"  # "policy" or "ablation"

    def build(self):
        return load_policy(self.policy, **self.overrides)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def policy_grid(name: str) -> list[BenchConfig]:
    """The small grid one policy is benchmarked at: threshold x {0.5, 1, 2} of its default, or the settings in
    `EXTRA_SETTINGS`, or just its default configuration."""
    default = CACHE_CONFIG_DIR / f"{name}.yaml"
    if name in THRESHOLD_POLICIES and default.is_file():
        tau = float(read_yaml(default)["threshold"])
        return [BenchConfig(name if s == 1 else f"{name} threshold={_fmt(round(tau * s, 6))}", name,
                            {} if s == 1 else {"threshold": round(tau * s, 6)}) for s in THRESHOLD_SCALES]
    settings = EXTRA_SETTINGS.get(name, [{}])
    return [BenchConfig(" ".join([name] + [f"{k}={_fmt(v)}" for k, v in o.items()]), name, dict(o))
            for o in settings]


def ablation_grid() -> list[BenchConfig]:
    """WorldCache (YAML defaults) with one of its parts toggled per row ("-part" off, "+part" on), then all of them
    off (DiCache's decisions and extrapolation at WorldCache's threshold and warm-up), then the method's own
    defaults (`worldcache_paper.yaml`)."""
    default = load_policy("worldcache").config
    rows = [BenchConfig(f"worldcache {'-' if getattr(default, p) else '+'}{p}", "worldcache",
                        {p: not getattr(default, p)}, "ablation") for p in ABLATION_PARTS]
    rows.append(BenchConfig("worldcache -all", "worldcache", dict.fromkeys(ABLATION_PARTS, False), "ablation"))
    paper = str(CACHE_CONFIG_DIR / "worldcache_paper.yaml")
    rows.append(BenchConfig("worldcache paper defaults", paper, {}, "ablation"))
    return rows


def bench_configs(policies=None, ablation: bool = True, grid: bool = True) -> list[BenchConfig]:
    """Rows to run. `policies`: None (every policy) or a list of policy names (each at its grid, or at its default
    only with ``grid=False``), YAML paths (exactly that file), or dicts ``{"policy": name, **settings}``."""
    out: list[BenchConfig] = []
    for spec in ALL_POLICIES if policies is None else policies:
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("policy")
            label = " ".join([name] + [f"{k}={_fmt(v)}" for k, v in spec.items()])
            out.append(BenchConfig(label, name, spec))
        elif str(spec).endswith((".yaml", ".yml")):
            out.append(BenchConfig(Path(spec).stem, str(spec)))
        else:
            out.extend(policy_grid(spec) if grid else [BenchConfig(spec, spec)])
    names = {c.build().name if c.policy.endswith((".yaml", ".yml")) else c.policy for c in out}
    if ablation and "worldcache" in names:
        out.extend(ablation_grid())
    labels = [c.label for c in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"configurations listed twice: {dup}")
    return out


# --- episodes and runs --------------------------------------------------------------------------------------------
def heldout_episodes(n: int, steps: int, height: int, width: int, first_seed: int = HELDOUT_SEED,
                     policy: str = "mixed") -> list[dict]:
    """`n` real Pusher episodes of `steps` steps (env seeds first_seed + i)."""
    from .mujoco_data import PusherRenderer, real_rollout

    with PusherRenderer(height, width, max_episode_steps=steps) as renderer:
        return [real_rollout(policy, first_seed + i, steps, renderer=renderer) for i in range(n)]


def needs_calibration(policy) -> bool:
    """MagCache without `mag_ratios` calibrates on its first prediction (and skips nothing there)."""
    return getattr(policy, "mag_ratios", ()) is None


def warm_up(model, policies, num_steps: int | None, seed: int = 0) -> None:
    """One prediction per policy on the calibration episode: warms caches/allocators, calibrates MagCache."""
    if not policies:
        return
    s = model.spec
    ep = heldout_episodes(1, s.chunk, s.height, s.width, first_seed=CALIBRATION_SEED)[0]
    for policy in policies:
        model.predict(ep["obs"][:1], ep["actions"][None], policy=policy, num_steps=num_steps, seed=seed)
        policy.detach()


class _TimedNoCache(NoCache):
    """The uncached reference; also times its block stack per call (see `overhead_ms` in the module docstring)."""

    def __init__(self, config=None):
        super().__init__(config)
        self.stack_ms: list[float] = []

    def run_stack(self, stack, call):
        out = stack(stack.x)
        self.stack_ms.append(stack.block_ms)  # the stack times its own block forwards
        return out


@dataclass
class _Runs:
    """Everything measured for one configuration, accumulated over episodes."""

    frames: list = field(default_factory=list)      # (T, H, W, 3) uint8 per episode
    records: list = field(default_factory=list)     # CallRecords of all predictions
    episode_loop_ms: list = field(default_factory=list)  # denoising-loop time per episode
    episode_rollout_s: list = field(default_factory=list)  # end-to-end rollout time per episode
    predictions: int = 0                            # env steps (chunks) predicted
    stack_ms: list = field(default_factory=list)    # block-stack time per call (timed reference only)

    @property
    def loop_ms(self) -> float:
        return sum(self.episode_loop_ms)

    @property
    def rollout_s(self) -> float:
        return sum(self.episode_rollout_s)


def _rollout(model, ep: dict, policy, runs: _Runs, num_steps, seed: int, repeats: int = 1) -> None:
    """Roll the episode's actions out from its start frame; with repeats > 1 keep the fastest of the repeats
    (same inputs and seeds, so the same frames: only the timing differs)."""
    best = None
    for _ in range(repeats):
        stack_ms = getattr(policy, "stack_ms", [])  # the timed reference's per-call block-stack times
        start = len(stack_ms)
        sync(model.device)
        t0 = time.perf_counter()
        frames, outs = model.rollout(ep["obs"][:1], ep["actions"][None], policy=policy, num_steps=num_steps,
                                     seed=seed, timing=True)
        sync(model.device)
        elapsed = time.perf_counter() - t0
        policy.detach()  # hook policies leave the shared model clean for the next configuration
        times = stack_ms[start:]
        del stack_ms[start:]
        if best is None or elapsed < best[0]:
            best = (elapsed, frames, outs, times)
    elapsed, frames, outs, times = best
    records = [r for o in outs for r in o.records]
    runs.frames.append(frames[0].cpu().numpy())
    runs.records.extend(records)
    runs.stack_ms.extend(times)
    runs.episode_loop_ms.append(sum(r.wall_ms for r in records))
    runs.episode_rollout_s.append(elapsed)
    runs.predictions += len(outs)


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _row(cfg: BenchConfig, policy, runs: _Runs, ref: _Runs, real: np.ndarray, fixed_ms: float,
         block_ms: float) -> dict:
    pred, ref_pred = np.stack(runs.frames), np.stack(ref.frames)
    q = {"psnr": _finite(psnr(pred, real)), "ssim": _finite(ssim(pred, real))}
    q_ref = {"psnr": _finite(psnr(ref_pred, real)), "ssim": _finite(ssim(ref_pred, real))}
    n = len(runs.records)
    config = policy.config.as_dict() if policy.config is not None else {}
    if getattr(policy, "mag_ratios", None):  # MagCache calibrated in the warm-up: record what it used
        config["mag_ratios"] = [round(float(v), 6) for v in policy.mag_ratios]
    overhead = sum(r.wall_ms - fixed_ms - r.blocks_run * block_ms for r in runs.records) / n
    return {
        "policy": policy.name, "label": cfg.label, "group": cfg.group,
        "config": config,
        "denoising_speedup": _finite(ref.loop_ms / runs.loop_ms),
        "env_step_speedup": _finite(ref.rollout_s / runs.rollout_s),
        "computed_fraction": sum(r.computed for r in runs.records) / n,
        "overhead_ms": _finite(overhead),
        "decision_ms": _finite(float(np.mean([r.policy_ms for r in runs.records]))),
        **q,
        "psnr_retention": _finite(_ratio(q["psnr"], q_ref["psnr"])),
        "ssim_retention": _finite(_ratio(q["ssim"], q_ref["ssim"])),
        "psnr_vs_uncached": _finite(psnr(pred, ref_pred)),
        "ssim_vs_uncached": _finite(ssim(pred, ref_pred)),
        "denoising_speedup_per_episode": [round(a / b, 4) for a, b in zip(ref.episode_loop_ms,
                                                                           runs.episode_loop_ms)],
        "denoise_ms_per_step": runs.loop_ms / runs.predictions,
        "env_step_ms": 1e3 * runs.rollout_s / runs.predictions,
        "blocks_per_call": sum(r.blocks_run for r in runs.records) / n,
    }


def machine_info(device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.device(device)
    if dev.type == "cuda":
        dev_name = torch.cuda.get_device_name(dev)
    else:
        dev_name = str(dev)
    import diffusers

    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "device": dev_name, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# --- the benchmark ------------------------------------------------------------------------------------------------
def run_bench(checkpoint=None, policies=None, episodes: int = 10, chunks: int = 2, num_steps: int | None = None,
              ablation: bool = True, json_out=None, seed: int = 0, grid: bool = True, device: str = "cpu",
              repeats: int = 1, verbose: bool = True, first_seed: int = HELDOUT_SEED, dtype: str = "fp32") -> dict:
    """Benchmark cache policies on `episodes` held-out Pusher episodes of `chunks` env steps each.

    Returns ``{"rows": [...], "machine": {...}, "settings": {...}}`` (one row per configuration, the keys listed in
    `METRICS` plus label/group/config and per-step times). With `json_out` the JSON and the figures are written.
    `repeats` > 1 times every rollout that many times and keeps the fastest (for noisy shared machines).
    `dtype`: the weights' (bf16/fp16/fp32). `first_seed`: env seed of the first episode; another range (e.g.
    20000) gives tuning episodes disjoint from the benchmark's, so settings can be chosen without looking at the
    episodes they are reported on.
    """
    from .world_model import WorldModel

    if episodes < 1 or chunks < 1 or repeats < 1:
        raise ValueError(f"episodes, chunks and repeats must be >= 1, got {episodes}, {chunks}, {repeats}")
    model = WorldModel.from_pretrained(checkpoint, device=device, dtype=dtype)
    s = model.spec
    steps = num_steps or s.num_steps
    configs = bench_configs(policies, ablation, grid)
    built = [c.build() for c in configs]
    ref_policy = _TimedNoCache()
    eps = heldout_episodes(episodes, chunks * s.chunk, s.height, s.width, first_seed)
    real = np.stack([ep["obs"][1:] for ep in eps])

    warm_up(model, [ref_policy, *built], steps, seed)
    ref_policy.stack_ms.clear()  # warm-up timings are not used
    ref, runs = _Runs(), [_Runs() for _ in configs]
    for i, ep in enumerate(eps):
        ep_seed = seed + 1000 * (i + 1)  # noise seeds: the same for every configuration of this episode
        _rollout(model, ep, ref_policy, ref, steps, ep_seed, repeats)
        for policy, r in zip(built, runs):
            _rollout(model, ep, policy, r, steps, ep_seed, repeats)
        if verbose:
            print(f"episode {i + 1}/{episodes} done ({len(configs)} configurations + uncached)", flush=True)

    # Split an uncached call into embed/head ("fixed") and per-block time (for overhead_ms).
    assert len(ref.stack_ms) == len(ref.records), "one block-stack timing per uncached call"
    block_ms = sum(ref.stack_ms) / sum(r.blocks_run for r in ref.records)
    fixed_ms = float(np.mean([r.wall_ms - st for r, st in zip(ref.records, ref.stack_ms)]))
    rows = [_row(c, p, r, ref, real, fixed_ms, block_ms) for c, p, r in zip(configs, built, runs)]
    ref_psnr, ref_ssim = psnr(np.stack(ref.frames), real), ssim(np.stack(ref.frames), real)
    result = {
        "rows": rows,
        "uncached": {"psnr": _finite(ref_psnr), "ssim": _finite(ref_ssim),
                     "denoise_ms_per_step": ref.loop_ms / ref.predictions,
                     "env_step_ms": 1e3 * ref.rollout_s / ref.predictions,
                     "fixed_ms_per_call": fixed_ms, "block_ms": block_ms,
                     "call_ms": float(np.mean([r.wall_ms for r in ref.records]))},
        "machine": machine_info(device),
        "settings": {"checkpoint": str(checkpoint) if checkpoint else "bundled", "episodes": episodes,
                     "chunks": chunks, "frames_per_episode": chunks * s.chunk, "num_steps": steps, "seed": seed,
                     "repeats": repeats, "dtype": dtype,
                     "env_seeds": [first_seed + i for i in range(episodes)], "episode_policy": "mixed"},
    }
    result["at_worldcache_speed"] = equal_speed_comparison(rows)
    for p in built:
        p.detach()
    if verbose:
        print(format_table(result))
    if json_out is not None:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        stem = json_out.with_suffix("")
        pareto_plot(rows, f"{stem}_pareto.png")
        motion = [float(np.abs(np.diff(ep["obs"].astype(np.int16), axis=0)).mean()) for ep in eps]
        k = int(np.argmax(motion))
        panels = strip_panels(rows, ref.frames[k], {c.label: r.frames[k] for c, r in zip(configs, runs)}, real[k])
        save_strip(panels, f"{stem}_strip.png", f"{stem}_strip.gif")
        result["files"] = [str(json_out), f"{stem}_pareto.png", f"{stem}_strip.png", f"{stem}_strip.gif"]
        if verbose:
            print("wrote " + ", ".join(result["files"]))
    return result


# --- output -------------------------------------------------------------------------------------------------------
def _text(key: str, v, spec: str) -> str:
    if v is None:  # PSNR between identical frames, or a value that is not finite
        return "inf" if key == "psnr_vs_uncached" else "n/a"
    return format(v, spec)


def format_table(result: dict) -> str:
    width = max([6] + [len(r["label"]) for r in result["rows"]])
    cols = [("config", "label", width, None), ("denoise x", "denoising_speedup", 9, ".2f"),
            ("step x", "env_step_speedup", 7, ".2f"), ("computed", "computed_fraction", 8, ".2f"),
            ("ovh ms", "overhead_ms", 7, ".2f"), ("dec ms", "decision_ms", 7, ".2f"),
            ("PSNR", "psnr", 6, ".2f"), ("SSIM", "ssim", 6, ".3f"),
            ("PSNR ret", "psnr_retention", 8, ".3f"), ("SSIM ret", "ssim_retention", 8, ".3f"),
            ("PSNR/unc", "psnr_vs_uncached", 8, ".2f"), ("SSIM/unc", "ssim_vs_uncached", 8, ".3f")]

    def cell(k, v, width, spec):
        return f"{v:<{width}}" if spec is None else f"{_text(k, v, spec):>{width}}"

    u, st = result["uncached"], result["settings"]
    lines = [f"{st['episodes']} episodes x {st['frames_per_episode']} frames, {st['num_steps']} denoising steps; "
             f"uncached: {u['denoise_ms_per_step']:.0f} ms denoising / {u['env_step_ms']:.0f} ms per env step "
             f"({u['call_ms']:.1f} ms per model call), "
             f"PSNR {u['psnr']:.2f} SSIM {u['ssim']:.3f} vs. the simulator",
             " ".join(f"{h:<{w}}" if spec is None else f"{h:>{w}}" for h, _, w, spec in cols)]
    lines.append("-" * len(lines[-1]))
    for row in result["rows"]:
        lines.append(" ".join(cell(k, row[k], w, spec) for _, k, w, spec in cols))
    cmp = result.get("at_worldcache_speed")
    if cmp:
        lines.append(f"\nAt WorldCache's speedup ({cmp['speedup']:.2f}x, PSNR vs. uncached "
                     f"{_text('psnr_vs_uncached', cmp['psnr_vs_uncached'], '.2f')} dB), each baseline's PSNR vs. "
                     "uncached, interpolated along its grid:")
        for name, c in cmp["baselines"].items():
            span = f"its grid spans {c['min_speedup']:.2f}-{c['max_speedup']:.2f}x"
            lines.append(f"  {name:<12} " + (f"n/a ({span})" if c["psnr_vs_uncached"] is None else
                                             f"{c['psnr_vs_uncached']:.2f} dB" + (
                                                 f" (nearest point; {span})" if c["nearest"] else "")))
    return "\n".join(lines)


NEAR_SPEED = 1.05  # a grid point this close in speedup stands for "equal speed" when the grid stops short of it


def equal_speed_comparison(rows: list[dict], label: str = "worldcache") -> dict | None:
    """PSNR vs. uncached of every baseline at the denoising speedup of the row `label`, linearly interpolated
    between the baseline's grid points. Where the grid stops short, its end point is used if it lies within 5 % of
    that speedup (``"nearest": true``); otherwise None: no extrapolation."""
    ref = next((r for r in rows if r["label"] == label), None)
    if ref is None or ref["denoising_speedup"] is None:
        return None
    speed, out = ref["denoising_speedup"], {}
    names = dict.fromkeys(r["policy"] for r in rows if r["group"] == "policy" and r["policy"] not in ("none", label))
    for name in names:
        pts = sorted((r["denoising_speedup"], r["psnr_vs_uncached"]) for r in rows
                     if r["policy"] == name and r["group"] == "policy" and r["denoising_speedup"] is not None
                     and r["psnr_vs_uncached"] is not None)
        if not pts:
            continue
        xs, ys = zip(*pts)
        inside = xs[0] <= speed <= xs[-1]
        end = min((0, len(xs) - 1), key=lambda i: abs(math.log(xs[i] / speed)))
        near = not inside and abs(math.log(xs[end] / speed)) <= math.log(NEAR_SPEED)
        value = float(np.interp(speed, xs, ys)) if inside else ys[end] if near else None
        out[name] = {"psnr_vs_uncached": value, "nearest": near, "min_speedup": xs[0], "max_speedup": xs[-1]}
    return {"label": label, "speedup": speed, "psnr_vs_uncached": ref["psnr_vs_uncached"], "baselines": out}


PARETO_PANELS = (("psnr_vs_uncached", "PSNR of cached vs. uncached prediction (dB)"),
                 ("psnr_retention", "PSNR retention (cached / uncached, vs. simulator)"))


def pareto_plot(rows: list[dict], path) -> None:
    """Denoising speedup (x) vs. quality (y), one colour/marker per policy, WorldCache highlighted. Left: PSNR
    against the uncached prediction (what caching changed: the faithful measure); right: PSNR retention against
    the simulator (the paper's form; above 1 when a cache smooths predictions toward the mean)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=120)
    markers = "osD^v<>ph8"
    policies = list(dict.fromkeys(r["policy"] for r in rows if r["group"] == "policy"))
    for k, (key, ylabel) in enumerate(PARETO_PANELS):
        ax = fig.add_subplot(1, 2, k + 1)
        ok = [r for r in rows if r["denoising_speedup"] is not None and r[key] is not None]
        for i, name in enumerate(policies):
            rs = sorted((r for r in ok if r["policy"] == name and r["group"] == "policy"),
                        key=lambda r: r["denoising_speedup"])
            x, y = [r["denoising_speedup"] for r in rs], [r[key] for r in rs]
            if name == "worldcache":
                ax.plot(x, y, "-*", color="crimson", markersize=16, markeredgecolor="black", lw=2, zorder=5,
                        label="WorldCache")
            elif name == "none":
                ax.plot(x, y, "x", color="grey", markersize=9, label="none (re-run: timing noise)")
            else:
                ax.plot(x, y, "-" + markers[i % len(markers)], color=f"C{i % 10}", alpha=0.8, label=name)
        abl = [r for r in ok if r["group"] == "ablation"]
        if abl:
            ax.plot([r["denoising_speedup"] for r in abl], [r[key] for r in abl], "*", color="crimson",
                    markerfacecolor="none", markersize=12, ls="none", label="WorldCache ablations")
            for r in abl:
                ax.annotate(r["label"].replace("worldcache ", ""), (r["denoising_speedup"], r[key]),
                            fontsize=7, xytext=(4, -8), textcoords="offset points", color="crimson")
        pts = [(r["denoising_speedup"], r[key]) for r in ok]
        front = sorted(p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts))
        if len(front) > 1:
            ax.plot(*zip(*front), "--", color="black", lw=0.8, alpha=0.5, label="Pareto front")
        ax.set_xlabel("denoising speedup vs. uncached (x)")
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def strip_panels(rows: list[dict], uncached, frames_by_label: dict, real) -> list[tuple[str, np.ndarray]]:
    """uncached | WorldCache (default) | best baseline at a similar speedup | ground truth.

    "Best" is the closest to the uncached prediction (PSNR vs. uncached) among baselines within 1.25x of
    WorldCache's speedup, slower ones included; with none that near, the baseline nearest in speedup."""
    panels = [("uncached", uncached)]
    wc = next((r for r in rows if r["label"] == "worldcache"), None)
    if wc is not None:
        panels.append((f"WorldCache {wc['denoising_speedup'] or 0:.2f}x", frames_by_label["worldcache"]))
        base = [r for r in rows if r["group"] == "policy" and r["policy"] not in ("worldcache", "none")
                and r["denoising_speedup"]]
        if base:
            sw = wc["denoising_speedup"] or 1.0
            near = [r for r in base if abs(math.log(r["denoising_speedup"] / sw)) <= math.log(1.25)]
            faithful = lambda r: math.inf if r["psnr_vs_uncached"] is None else r["psnr_vs_uncached"]  # noqa: E731
            best = (max(near, key=faithful) if near
                    else min(base, key=lambda r: abs(math.log(r["denoising_speedup"] / sw))))
            panels.append((f"{best['label']} {best['denoising_speedup']:.2f}x", frames_by_label[best["label"]]))
    panels.append(("ground truth", real))
    return panels


def save_strip(panels: list[tuple[str, np.ndarray]], png_path, gif_path, scale: int = 2,
               max_columns: int = 16) -> None:
    """PNG: one row per panel, frames left to right. GIF: the panels side by side, one GIF frame per time step."""
    from PIL import Image, ImageDraw

    t, h, w = panels[0][1].shape[:3]
    h, w = h * scale, w * scale
    cols = list(range(0, t, max(1, math.ceil(t / max_columns))))
    label_w, title_h = 150, 14
    png = Image.new("RGB", (label_w + len(cols) * w, len(panels) * h), "white")
    draw = ImageDraw.Draw(png)
    for i, (name, frames) in enumerate(panels):
        draw.text((4, i * h + h // 2 - 6), name[:32], fill="black")
        for j, c in enumerate(cols):
            png.paste(Image.fromarray(frames[c]).resize((w, h), Image.NEAREST), (label_w + j * w, i * h))
    png.save(png_path)
    gif = []
    for c in range(t):
        im = Image.new("RGB", (len(panels) * w, h + title_h), "white")
        d = ImageDraw.Draw(im)
        for i, (name, frames) in enumerate(panels):
            d.text((i * w + 2, 1), name[:w // 6], fill="black")
            im.paste(Image.fromarray(frames[c]).resize((w, h), Image.NEAREST), (i * w, title_h))
        gif.append(im)
    gif[0].save(gif_path, save_all=True, append_images=gif[1:], duration=150, loop=0)


def markdown_table(result: dict) -> str:
    """The README's "Benchmarks" table rows for a `run_bench` result."""
    specs = (".2f", ".2f", ".2f", ".2f", ".2f", ".2f", ".3f", ".3f", ".3f", ".2f", ".3f")  # in METRICS order
    return "\n".join("| " + " | ".join([r["label"], *(_text(k, r[k], f) for k, f in zip(METRICS, specs))]) + " |"
                     for r in result["rows"])
