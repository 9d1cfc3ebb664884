"""Speed-quality frontiers and the comparison at WorldCache's speed.

A policy's frontier is its Pareto-optimal rows over (speedup, PSNR against the reference) across its whole
grid (steps x settings): no other row of the same policy is at least as fast and at least as close, and strictly
one of the two. PSNR ``null`` (identical to the reference) counts as infinite."""
from __future__ import annotations

import math

import numpy as np

FRONTIER_SPEED = "compute_speedup"  # the robust speed measure: bench.json's `frontiers` are over it
POINT_KEYS = ("label", "num_steps", "speedup", "compute_speedup", "psnr_vs_uncached", "latent_rel_l1",
              "latent_psnr", "config")
NEAR_SPEED = 1.05  # a frontier point this close in speedup stands for "equal speed" when the curve stops short


def _q(v) -> float:
    return math.inf if v is None else v


def pareto_front(points: list[tuple[float, float | None]]) -> list[int]:
    """Indices of the non-dominated (x, y) points (both higher is better; y None = infinite), by x ascending.
    Of identical points the first is kept."""
    def beats(j, i):
        (x2, y2), (x, y) = points[j], points[i]
        better = x2 >= x and _q(y2) >= _q(y) and (x2 > x or _q(y2) > _q(y))
        return better or ((x2, y2) == (x, y) and j < i)

    keep = [i for i in range(len(points)) if not any(beats(j, i) for j in range(len(points)) if j != i)]
    return sorted(keep, key=lambda i: points[i][0])


def front_rows(rows: list[dict], speed_key: str = FRONTIER_SPEED) -> dict[str, list[dict]]:
    """Per policy (the policy group's rows, `steps-only` included, the `none` re-run not), its rows on the
    frontier over (`speed_key`, PSNR vs. uncached), by speedup ascending."""
    out = {}
    names = dict.fromkeys(r["policy"] for r in rows if r["group"] == "policy" and r["policy"] != "none")
    for name in names:
        rs = [r for r in rows if r["policy"] == name and r["group"] == "policy" and r.get(speed_key) is not None]
        out[name] = [rs[i] for i in pareto_front([(r[speed_key], r["psnr_vs_uncached"]) for r in rs])]
    return out


def frontiers(rows: list[dict], speed_key: str = FRONTIER_SPEED) -> dict[str, list[dict]]:
    """bench.json's `frontiers`: per policy its frontier points ``{label, num_steps, speedup (wall clock),
    compute_speedup, psnr_vs_uncached, latent_rel_l1, latent_psnr, config}``, by speedup ascending."""
    return {name: [{k: r.get("denoising_speedup" if k == "speedup" else k) for k in POINT_KEYS} for r in rs]
            for name, rs in front_rows(rows, speed_key).items()}


def equal_speed_comparison(rows: list[dict], label: str = "worldcache", speed_key: str = "denoising_speedup"):
    """PSNR vs. uncached of every other policy's frontier at the `speed_key` speedup of the row `label` (WorldCache
    at its defaults and the reference steps), linearly interpolated between frontier points. Where a frontier
    stops short, its end point is used if it lies within 5 % of that speedup (``"nearest": true``); otherwise
    None: no extrapolation. `steps-only` is one of the policies compared."""
    ref = next((r for r in rows if r["label"] == label), None)
    if ref is None or ref.get(speed_key) is None:
        return None
    speed, out = ref[speed_key], {}
    for name, rs in front_rows(rows, speed_key).items():
        pts = [(r[speed_key], r["psnr_vs_uncached"]) for r in rs if r["psnr_vs_uncached"] is not None]
        if name == ref["policy"] or not pts:  # the reference itself (infinite PSNR) bounds nothing
            continue
        xs, ys = zip(*pts)
        inside = xs[0] <= speed <= xs[-1]
        end = min((0, len(xs) - 1), key=lambda i: abs(math.log(xs[i] / speed)))
        near = not inside and abs(math.log(xs[end] / speed)) <= math.log(NEAR_SPEED)
        value = float(np.interp(speed, xs, ys)) if inside else ys[end] if near else None
        out[name] = {"psnr_vs_uncached": value, "nearest": near, "min_speedup": xs[0], "max_speedup": xs[-1]}
    return {"label": label, "speed": speed_key, "speedup": speed, "psnr_vs_uncached": ref["psnr_vs_uncached"],
            "baselines": out}
