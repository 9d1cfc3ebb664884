"""The WorldCache ablation at matched compute: each variant (one part toggled, or all off) gets the threshold at
which it computes the same fraction of calls as the default does, found on tuning episodes (disjoint from the
measured ones). At a fixed threshold, "-saliency" would change both the drift's weighting and how much is computed;
at matched compute the PSNR difference is the part's own."""
from __future__ import annotations

import math

from ..cache.config import CACHE_CONFIG_DIR
from ..cache.probe import EXTRAPOLATIONS
from ..cache import load_cache
from .grid import BenchConfig

ABLATION_PARTS = ("motion_adaptive", "saliency", "blend", "warp", "phase_aware")
# a choice within a part, run as its other option (METHOD.md: compare both at equal compute before choosing)
ABLATION_CHOICES = {"saliency_over": ("token", "location"), "generated_only": (False, True),
                    "extrapolation": EXTRAPOLATIONS}
MATCH_ITERS = 5     # bisection steps after bracketing (the threshold to within a factor 2^(1/32) of the bracket)
MATCH_EXPAND = 4    # at most this many doublings/halvings of the threshold to bracket the target


def ablation_grid(num_steps: int) -> list[BenchConfig]:
    """WorldCache (YAML defaults) with one of its parts toggled per row ("-part" off, "+part" on), each choice of
    `ABLATION_CHOICES` at its other option ("key=value"), then all parts off (DiCache's decisions and its line
    extrapolation at WorldCache's warm-up), then the method's own defaults (`worldcache_paper.yaml`, at its own
    threshold: a configuration, not a part)."""
    default = load_cache("worldcache")[0].config
    rows = [BenchConfig(f"worldcache {'-' if getattr(default, p) else '+'}{p}", "worldcache",
                        {p: not getattr(default, p)}, "ablation", num_steps) for p in ABLATION_PARTS]
    for key, options in ABLATION_CHOICES.items():
        rows += [BenchConfig(f"worldcache {key}={v}", "worldcache", {key: v}, "ablation", num_steps)
                 for v in options if v != getattr(default, key)]
    rows.append(BenchConfig("worldcache -all", "worldcache", {**dict.fromkeys(ABLATION_PARTS, False),
                                                             "extrapolation": "probe"}, "ablation", num_steps))
    paper = str(CACHE_CONFIG_DIR / "worldcache_paper.yaml")
    rows.append(BenchConfig("worldcache paper defaults", paper, {}, "ablation", num_steps))
    return rows


def computed_fraction(model, policy, episodes, num_steps: int, seed: int) -> float:
    """Fraction of calls whose block stack ran, over open-loop rollouts of `episodes` (noise seeds as the bench)."""
    computed = calls = 0
    for i, ep in enumerate(episodes):
        _, outs = model.rollout(ep["obs"][:1], ep["actions"][None], policy=policy, num_steps=num_steps,
                                seed=seed + 1000 * (i + 1))
        policy.detach()
        recs = [r for o in outs for r in o.records]
        computed, calls = computed + sum(r.computed for r in recs), calls + len(recs)
    return computed / calls


def match_threshold(fraction, tau0: float, target: float) -> dict:
    """The threshold whose computed fraction `fraction(tau)` is nearest `target`: bracket by doubling/halving
    from `tau0`, then bisect geometrically (compute falls as the threshold rises). Ties go to the threshold
    nearest `tau0`."""
    tried = {tau0: fraction(tau0)}
    lo = hi = tau0
    for _ in range(MATCH_EXPAND):  # bracket: fraction(lo) >= target >= fraction(hi), a factor 2 apart
        if tried[hi] > target:
            lo, hi = hi, hi * 2
            tried[hi] = fraction(hi)
        elif tried[lo] < target:
            lo, hi = lo / 2, lo
            tried[lo] = fraction(lo)
        else:
            break
    if tried[lo] >= target >= tried[hi]:
        for _ in range(MATCH_ITERS):
            if target in (tried[lo], tried[hi]):
                break
            mid = math.sqrt(lo * hi)
            tried[mid] = fraction(mid)
            lo, hi = (mid, hi) if tried[mid] > target else (lo, mid)
    best = min(tried, key=lambda t: (abs(tried[t] - target), abs(math.log(t / tau0))))
    return {"threshold": round(best, 6), "default_threshold": tau0, "target_fraction": target,
            "reached_fraction": tried[best], "tries": len(tried)}


def match_ablation(model, configs: list[BenchConfig], episodes, num_steps: int, seed: int = 0,
                   verbose: bool = True) -> None:
    """Set each WorldCache ablation row's threshold to match the default's computed fraction on `episodes`
    (in place: `overrides["threshold"]` and `match`, which bench.json records per row)."""
    rows = [c for c in configs if c.group == "ablation" and c.policy == "worldcache"]
    if not rows:
        return
    target = computed_fraction(model, load_cache("worldcache")[0], episodes, num_steps, seed)
    for cfg in rows:
        tau0 = cfg.build().config.threshold

        def fraction(tau, cfg=cfg):
            policy = load_cache(cfg.policy, **{**cfg.overrides, "threshold": tau})[0]
            return computed_fraction(model, policy, episodes, num_steps, seed)

        cfg.match = match_threshold(fraction, tau0, target)
        cfg.overrides = {**cfg.overrides, "threshold": cfg.match["threshold"]}
        if verbose:
            m = cfg.match
            print(f"{cfg.label}: threshold {m['threshold']:g} computes {m['reached_fraction']:.3f} "
                  f"(default: {target:.3f}; {m['tries']} tries)", flush=True)
