"""Running episodes through the world model and measuring one configuration against the uncached reference:
wall-clock and computed speed, decision overhead, and quality of frames and of latents.

Speed, two ways (both against the reference, uncached at the reference steps, on the same episodes):

* ``denoising_speedup`` (wall clock): reference / configuration time of the denoising loop (sum of
  `CallRecord.wall_ms`). Runs are interleaved per episode, so it is comparable within one run; between runs it
  swings with the machine.
* ``compute_speedup``: the same ratio of a cost counted from what actually ran, at unit times measured once in the
  reference run: per call ``fixed_ms + blocks_run * block_ms + policy_ms`` (embed and head, the transformer
  blocks that ran, the policy's own time outside blocks). Policies whose work runs inside the blocks (the
  diffusers hooks) do not measure `policy_ms`; their calls count at their wall time. Free of the machine's noise
  in the blocks and in embed + head; not in `policy_ms`, which is measured live: on a busy machine a deciding
  policy's ~1 ms a call can read tens of ms (`machine.busy` warns), so run the benchmark alone.

Quality: PSNR/SSIM of the decoded frames against the simulator's (``psnr``, ``ssim``; ``*_retention`` = row /
reference) and against the reference's frames (``psnr_vs_uncached``, ``ssim_vs_uncached``; ``null`` where
identical), and on the final latents of the generated latent frames, which 8-bit frames round away:
``latent_rel_l1`` = sum|z - z_ref| / sum|z_ref| and ``latent_psnr`` = 10 log10(range^2 / MSE) with range =
max(z_ref) - min(z_ref), pooled over all episodes and chunks."""
from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.base import NoCache
from ..dit import sync
from ..quality import psnr, ssim

METRICS = ("denoising_speedup", "compute_speedup", "env_step_speedup", "computed_fraction", "overhead_ms",
           "decision_ms", "psnr", "ssim", "psnr_retention", "ssim_retention", "psnr_vs_uncached",
           "ssim_vs_uncached", "latent_rel_l1", "latent_psnr")


class TimedNoCache(NoCache):
    """The uncached reference; also times its block stack per call (the unit times of the compute model)."""

    def __init__(self, config=None):
        super().__init__(config)
        self.stack_ms: list[float] = []

    def run_stack(self, stack, call):
        out = stack(stack.x)
        self.stack_ms.append(stack.block_ms)  # the stack times its own block forwards
        return out


@dataclass
class Runs:
    """Everything measured for one configuration, accumulated over episodes."""

    frames: list = field(default_factory=list)      # (T, H, W, 3) uint8 per episode
    latents: list = field(default_factory=list)     # (chunks, C, T_gen, h, w) float32 per episode
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


def needs_calibration(policy) -> bool:
    """MagCache without `mag_ratios` calibrates on its first prediction (and skips nothing there)."""
    return getattr(policy, "mag_ratios", ()) is None


def warm_up(model, policies, num_steps, seed: int = 0, episode: dict | None = None, progress: bool = False,
            labels: list[str] | None = None) -> None:
    """One prediction per policy on a calibration episode (warms caches and allocators, calibrates MagCache).
    `num_steps`: one count for all, or one per policy (MagCache calibrates at the steps it will run). A setting
    that only the model can refuse (a probe as deep as the stack, a warm-up longer than the steps) fails here,
    named by the policy's `labels` entry."""
    from tqdm import tqdm

    if not policies:
        return
    if episode is None:
        from .episodes import calibration_episode

        episode = calibration_episode(model.spec)
    steps = num_steps if isinstance(num_steps, (list, tuple)) else [num_steps] * len(policies)
    for k, (policy, n) in enumerate(tqdm(list(zip(policies, steps)), desc="warm-up", unit="config",
                                         disable=not progress)):
        try:
            model.predict(episode["obs"][:1], episode["actions"][None, :model.spec.chunk], policy=policy,
                          num_steps=n, seed=seed)
        except ValueError as e:
            from ..cli import is_input_error

            if labels is None or not is_input_error(e):  # a bug inside torch or numpy keeps its traceback
                raise
            raise ValueError(f"{labels[k]}: {e}") from None
        policy.detach()


def run_episode(model, ep: dict, policy, runs: Runs, num_steps, seed: int, repeats: int = 1) -> None:
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
    gen = model.spec.cond_latent_frames  # the generated latent frames; the conditioning ones are copied in
    runs.frames.append(frames[0].cpu().numpy())
    runs.latents.append(np.stack([o.latents[0, :, gen:].float().cpu().numpy() for o in outs]))
    runs.records.extend(records)
    runs.stack_ms.extend(times)
    runs.episode_loop_ms.append(sum(r.wall_ms for r in records))
    runs.episode_rollout_s.append(elapsed)
    runs.predictions += len(outs)


def unit_times(ref: Runs) -> tuple[float, float]:
    """(fixed_ms, block_ms) from the timed reference: embed + head per call, and one block forward."""
    if len(ref.stack_ms) != len(ref.records):
        raise RuntimeError("one block-stack timing per uncached call expected")
    block_ms = sum(ref.stack_ms) / sum(r.blocks_run for r in ref.records)
    fixed_ms = float(np.mean([r.wall_ms - st for r, st in zip(ref.records, ref.stack_ms)]))
    return fixed_ms, block_ms


def compute_ms(records, fixed_ms: float, block_ms: float, compiled: bool = False) -> float:
    """The calls' cost from what ran: fixed + blocks_run x block + policy_ms each. Where the policy's own time is
    unmeasured (NaN policy_ms: diffusers-hook policies), wall_ms; but with `compiled` unit times (a --compile
    bench, whose hook policies still run eager blocks) fixed + blocks_run x block, without their hooks' own time:
    their wall clock would count the eager-compiled gap as their cost."""
    def cost(r) -> float:
        if not math.isnan(r.policy_ms):
            return fixed_ms + r.blocks_run * block_ms + r.policy_ms
        return fixed_ms + r.blocks_run * block_ms if compiled else r.wall_ms

    return sum(cost(r) for r in records)


def latent_metrics(pred, ref) -> tuple[float, float | None]:
    """(relative L1, PSNR in dB; None where identical) of latents `pred` against `ref` (see the module doc)."""
    p, r = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    rel_l1 = float(np.abs(p - r).sum() / max(np.abs(r).sum(), 1e-12))
    mse = float(np.mean((p - r) ** 2))
    peak = float(r.max() - r.min())
    return rel_l1, (10 * math.log10(peak ** 2 / mse) if mse > 0 else None)


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def measure_row(cfg, policy, runs: Runs, ref: Runs, real: np.ndarray, fixed_ms: float, block_ms: float,
                compiled: bool = False) -> dict:
    """One row of bench.json: the keys in `METRICS` plus label, settings and per-step times. `compiled`: the unit
    times are a compiled model's (`compute_ms`)."""
    pred, ref_pred = np.stack(runs.frames), np.stack(ref.frames)
    q = {"psnr": _finite(psnr(pred, real)), "ssim": _finite(ssim(pred, real))}
    q_ref = {"psnr": _finite(psnr(ref_pred, real)), "ssim": _finite(ssim(ref_pred, real))}
    n = len(runs.records)
    config = policy.settings()
    overhead = sum(r.wall_ms - fixed_ms - r.blocks_run * block_ms for r in runs.records) / n
    rel_l1, z_psnr = latent_metrics(np.stack(runs.latents), np.stack(ref.latents))
    name = cfg.name or policy.name
    row = {
        "policy": name, "variant": cfg.variant or name, "label": cfg.label, "group": cfg.group,
        "num_steps": cfg.num_steps, "config": config,
        "denoising_speedup": _finite(ref.loop_ms / runs.loop_ms),
        "compute_speedup": _finite(compute_ms(ref.records, fixed_ms, block_ms, compiled)
                                   / compute_ms(runs.records, fixed_ms, block_ms, compiled)),
        "env_step_speedup": _finite(ref.rollout_s / runs.rollout_s),
        "computed_fraction": sum(r.computed for r in runs.records) / n,
        "overhead_ms": _finite(overhead),
        "decision_ms": _finite(float(np.mean([r.policy_ms for r in runs.records]))),
        **q,
        "psnr_retention": _finite(_ratio(q["psnr"], q_ref["psnr"])),
        "ssim_retention": _finite(_ratio(q["ssim"], q_ref["ssim"])),
        "psnr_vs_uncached": _finite(psnr(pred, ref_pred)),
        "ssim_vs_uncached": _finite(ssim(pred, ref_pred)),
        "latent_rel_l1": rel_l1,
        "latent_psnr": _finite(z_psnr),
        "denoising_speedup_per_episode": [round(a / b, 4) for a, b in zip(ref.episode_loop_ms,
                                                                           runs.episode_loop_ms)],
        "denoise_ms_per_step": runs.loop_ms / runs.predictions,
        "env_step_ms": 1e3 * runs.rollout_s / runs.predictions,
        "blocks_per_call": sum(r.blocks_run for r in runs.records) / n,
    }
    if cfg.match is not None:
        row["match"] = cfg.match
    return row


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


OTHERS_SHARE = 0.25  # others' share of this process's cores above which a run's timings are not its own


def _cores() -> set[int]:
    """The cores this process may use (its affinity: a cpuset in a container)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _cores_busy(cores: set[int]) -> float | None:
    """Seconds the given cores have spent busy since boot, by anyone (Linux's /proc/stat: every state but idle and
    iowait, steal included); None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy, seen = 0, set()
    for line in lines:
        name, *ticks = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cores:
            t = [int(v) for v in ticks[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
            busy, seen = busy + sum(t) - t[3] - t[4], seen | {int(name[3:])}
    return busy / tick if seen == cores else None


def cpu_sample() -> dict:
    """What `busy` compares before and after a run: the busy seconds of this process's cores, its own CPU
    seconds, the wall clock and the load average."""
    t = os.times()
    return {"cores_busy": _cores_busy(_cores()), "own": t.user + t.system, "wall": time.monotonic(),
            "load": load_average()}


def busy(before: dict, after: dict | None = None) -> str | None:
    """A warning when other work shared this process's cores during the run (`cpu_sample` before and after), else
    None. Decision times (`policy_ms`, in the compute count) and wall clock are measured during each row, so such a
    run's speed figures are unreliable (a cache researcher's trial: WorldCache's decision time 71 ms per call under
    load, 0.7 alone).

    Where /proc/stat can be read: the busy time of the cores this process may use, less its own CPU time, over
    their time (cores x wall), above `OTHERS_SHARE`. This counts only work on our cores (a container pinned to some
    of a host's cores is not warned of the host's work elsewhere, and is of work on its own). Elsewhere: the
    1-minute load average, before or after, above 1.5x our cores (the benchmark itself keeps them about full)."""
    after = after or cpu_sample()
    cores = len(_cores())
    if before["cores_busy"] is not None and after["cores_busy"] is not None and after["wall"] > before["wall"]:
        others = (after["cores_busy"] - before["cores_busy"]) - (after["own"] - before["own"])
        share = others / (cores * (after["wall"] - before["wall"]))
        if share <= OTHERS_SHARE:
            return None
        said = f"other work took {100 * share:.0f} % of the {cores} cores this process may use"
    else:
        load = max(v for v in (before["load"], after["load"], -1.0) if v is not None)
        if load <= 1.5 * cores:
            return None
        said = f"the machine was busy (load average {load:.1f} on {cores} cores)"
    return (f"warning: {said}: other work shared the cores, so wall-clock and compute speedups (decision times "
            f"count) are unreliable; run it alone")


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
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    import diffusers

    return {"cpu": cpu, "threads": torch.get_num_threads(), "load_avg": load_average(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "device": dev_name, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
