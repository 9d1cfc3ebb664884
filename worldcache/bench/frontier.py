"""Speed-quality frontiers and the comparison at WorldCache's speed.

A policy's frontier is its Pareto-optimal rows over (speedup, PSNR against the reference) across its whole
grid (steps x settings): no other row of the same policy is at least as fast and at least as close, and strictly
one of the two. A row of PSNR ``null`` (identical to the reference) is left out (`front_rows`)."""
from __future__ import annotations

import math

import numpy as np

FRONTIER_SPEED = "compute_speedup"  # the robust speed measure: bench.json's `frontiers` are over it
POINT_KEYS = ("label", "num_steps", "speedup", "compute_speedup", "psnr_vs_uncached", "latent_rel_l1",
              "latent_psnr", "config")
NEAR_SPEED = 1.05  # a frontier point this close in speedup stands for "equal speed" when the curve stops short
GOAL_SPEEDS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # where frontiers are compared (the benchmark issue's 1.5x-4x)


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


def variant(row: dict) -> str:
    """The frontier a row belongs to: its policy's, or a variant's (`grid.GRID_KEYS`; older bench.json: policy)."""
    return row.get("variant") or row["policy"]


def front_rows(rows: list[dict], speed_key: str = FRONTIER_SPEED,
               quality_key: str = "psnr_vs_uncached") -> dict[str, list[dict]]:
    """Per policy or variant (the policy group's rows, `steps-only` included, the `none` re-run not), its rows on
    the frontier over (`speed_key`, `quality_key`: PSNR vs. uncached, or the latents' `latent_psnr`), by speedup
    ascending. A row identical to the reference (quality None) is left out: taken as infinitely good it would knock
    the finite points beside it off the frontier, and then bound nothing itself."""
    out = {}
    names = dict.fromkeys(variant(r) for r in rows if r["group"] == "policy" and r["policy"] != "none")
    for name in names:
        rs = [r for r in rows if variant(r) == name and r["group"] == "policy" and r.get(speed_key) is not None
              and r.get(quality_key) is not None]
        out[name] = [rs[i] for i in pareto_front([(r[speed_key], r[quality_key]) for r in rs])]
    return out


def frontiers(rows: list[dict], speed_key: str = FRONTIER_SPEED) -> dict[str, list[dict]]:
    """bench.json's `frontiers`: per policy (or variant) its frontier points ``{label, num_steps, speedup (wall clock),
    compute_speedup, psnr_vs_uncached, latent_rel_l1, latent_psnr, config}``, by speedup ascending."""
    return {name: [{k: r.get("denoising_speedup" if k == "speedup" else k) for k in POINT_KEYS} for r in rs]
            for name, rs in front_rows(rows, speed_key).items()}


def _at(points: list[tuple[float, float]], speed: float) -> tuple[float | None, bool]:
    """A frontier's PSNR at `speed` from its (speedup, PSNR) points, by speedup ascending: linear interpolation
    inside its span; outside, its end point if within 5 % of `speed` (then ``near`` is True); else None."""
    xs, ys = zip(*points)
    if xs[0] <= speed <= xs[-1]:
        return float(np.interp(speed, xs, ys)), False
    end = min((0, len(xs) - 1), key=lambda i: abs(math.log(xs[i] / speed)))
    near = abs(math.log(xs[end] / speed)) <= math.log(NEAR_SPEED)
    return (ys[end] if near else None), near


def _finite_points(rs: list[dict], speed_key: str, quality_key: str = "psnr_vs_uncached") -> list[tuple]:
    # a point identical to the reference (PSNR None) bounds nothing
    return [(r[speed_key], r[quality_key]) for r in rs if r[quality_key] is not None]


def frontier_at(rows: list[dict], speeds=GOAL_SPEEDS, speed_key: str = FRONTIER_SPEED,
                quality_key: str = "psnr_vs_uncached") -> dict:
    """Every policy's frontier over (`speed_key`, `quality_key`) read at fixed speedups (`_at`): ``{"speeds":
    [...], "speed": speed_key, "quality": quality_key, quality_key: {policy: [PSNR or None per speed]}}``, the
    table a claim "above X from 1.5x to 4x" is judged on. `latent_psnr` resolves what 8-bit frames cannot near
    the reference (frame PSNR ~75 dB is a fraction of a percent of values one grey level off). ``"nearest"``:
    {policy: [bool per speed]}, True where the value is the frontier's end point within 5 % of that speed, not a
    point on it (at its fast end, a little optimistic)."""
    out, nearest = {}, {}
    for name, rs in front_rows(rows, speed_key, quality_key).items():
        pts = _finite_points(rs, speed_key, quality_key)
        read = [_at(pts, v) if pts else (None, False) for v in speeds]
        out[name], nearest[name] = [v for v, _ in read], [near for _, near in read]
    return {"speeds": list(speeds), "speed": speed_key, "quality": quality_key, quality_key: out, "nearest": nearest}


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
        pts = _finite_points(rs, speed_key)
        if name == variant(ref) or not pts:  # the reference itself (infinite PSNR) bounds nothing
            continue
        value, near = _at(pts, speed)
        out[name] = {"psnr_vs_uncached": value, "nearest": near, "min_speedup": pts[0][0], "max_speedup": pts[-1][0]}
    return {"label": label, "speed": speed_key, "speedup": speed, "psnr_vs_uncached": ref["psnr_vs_uncached"],
            "baselines": out}
