"""Which configurations the benchmark runs: each policy's small settings grid times the denoising-step axis, the
`steps-only` control (uncached at fewer steps) and the WorldCache ablation (`ablation.py`).

The reference is always the uncached model at the reference step count (the model's default): every row's speed
and quality are measured against it, whatever the row's own `num_steps`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cache.config import check_num_steps
from ..cache import load_cache

STEPS_ONLY = "steps-only"  # pseudo-policy: no cache, fewer steps (the control every caching claim needs)
# The full step axis (`--denoise-steps 35 30 24 18 14 12 10 8`). 30: without it the frontiers near 2.5x had only
# 35-step rows skipping ~60 % or 24-step rows at 24-step sampling's own PSNR cap.
FULL_DENOISE_STEPS = (35, 30, 24, 18, 14, 12, 10, 8)
QUICK_DENOISE_STEPS = (35, 18, 12)  # the default; the full axis runs ~2.3x as many steps
THRESHOLD_SCALES = (0.5, 1.0, 2.0)
# Non-threshold policies: extra settings besides their YAML defaults (fora: both intervals are listed).
EXTRA_SETTINGS = {
    "fora": [{"interval": 2}, {"interval": 3}],
    "fastercache": [{}, {"spatial_attention_block_skip_range": 3}],
    "taylorseer": [{}, {"cache_interval": 8}],
    "pab": [{}, {"spatial_attention_block_skip_range": 3}],
}
# Settings that move a policy along its own grid; a spec that sets any other one (e.g. worldcache:saliency=false)
# is a variant with its own frontier, so one command compares the variants' frontiers.
GRID_KEYS = frozenset({"threshold", *(k for opts in EXTRA_SETTINGS.values() for o in opts for k in o)})
ALL_POLICIES = ("none", STEPS_ONLY, "worldcache", "dicache", "fora", "teacache", "easycache", "fbcache",
                "fastercache", "magcache", "taylorseer", "seacache", "pab")
DISPLAY_NAMES = {"fora": "FORA-style"}  # ours reuses the whole stack, not per-layer attention/MLP outputs


@dataclass
class BenchConfig:
    """One row of the benchmark: a policy name (or YAML path) plus setting overrides, at `num_steps` steps."""

    label: str
    policy: str
    overrides: dict = field(default_factory=dict)
    group: str = "policy"            # "policy" or "ablation"
    num_steps: int | None = None     # None: the reference's
    name: str | None = None          # the row's policy name where it is not the built policy's (steps-only)
    match: dict | None = None        # the compute-matched ablation's threshold search (`ablation.py`)
    variant: str | None = None       # the frontier the row belongs to where it is not its policy's (`GRID_KEYS`)

    def build(self):
        return load_cache(self.policy, **self.overrides)[0]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def display(label: str) -> str:
    """A label as tables and figures show it ("fora interval=2" -> "FORA-style interval=2")."""
    head, _, rest = label.partition(" ")
    return " ".join([DISPLAY_NAMES.get(head, head)] + ([rest] if rest else []))


def steps_axis(reference_steps: int, denoise_steps=None) -> list[int]:
    """The step counts to run: `denoise_steps` as given (deduplicated, largest first), or the quick default axis
    cut to the reference's steps (a model whose default is below 35 gets its default plus the smaller ones)."""
    if denoise_steps:
        steps = sorted({int(n) for n in denoise_steps}, reverse=True)
        if steps[-1] < 1:
            raise ValueError(f"--denoise-steps must be >= 1, got {steps[-1]}")
        return steps
    return [reference_steps] + [n for n in QUICK_DENOISE_STEPS if n < reference_steps]


def policy_grid(name: str, scales=THRESHOLD_SCALES) -> list[tuple[str, dict]]:
    """(label, overrides) of one policy's settings grid: the settings in `EXTRA_SETTINGS`, or, for a policy with a
    `threshold` (a plugin's too), threshold x `scales` of its default (its shipped YAML's, else its config's), or
    just its default configuration."""
    tau = getattr(load_cache(name)[0].config, "threshold", None)
    if name not in EXTRA_SETTINGS and isinstance(tau, float):
        return [(name if s == 1 else f"{name} threshold={_fmt(round(tau * s, 6))}",
                 {} if s == 1 else {"threshold": round(tau * s, 6)}) for s in scales]
    return [(" ".join([name] + [f"{k}={_fmt(v)}" for k, v in o.items()]), dict(o))
            for o in EXTRA_SETTINGS.get(name, [{}])]


def with_steps(label: str, n: int, reference_steps: int) -> str:
    return label if n == reference_steps else f"{label} steps={n}"


def bench_configs(policies=None, ablation: bool = True, grid: bool = True, denoise_steps=None,
                  reference_steps: int = 35, scales=THRESHOLD_SCALES) -> list[BenchConfig]:
    """Rows to run. `policies`: None (every policy) or a list of policy names (each at its settings grid, or at
    its default only with ``grid=False``, times the step axis), ``"steps-only"``, YAML paths (exactly that file;
    at its own `num_steps` if it sets one, else on the step axis; a frontier of its own, named by the file), or
    dicts ``{"policy": name, **settings}`` (``num_steps`` among them pins the steps; a setting outside `GRID_KEYS`
    makes the row a variant with its own frontier, e.g. "worldcache saliency=False"). ``"none"`` runs at the
    reference steps only: it re-runs the reference, so its speedup shows the machine's timing noise."""
    from .ablation import ablation_grid

    steps = steps_axis(reference_steps, denoise_steps)
    out: list[BenchConfig] = []

    def add(label, policy, overrides, pinned=None, variant=None):
        uncached = load_cache(policy, **overrides)[0].name == "none"
        for n in [pinned] if pinned is not None else steps:  # no cache at other steps than the reference's: steps-only
            out.append(BenchConfig(with_steps(label, n, reference_steps), policy, overrides, num_steps=n,
                                   name=STEPS_ONLY if uncached and n != reference_steps else None,
                                   variant=variant))

    for spec in ALL_POLICIES if policies is None else policies:
        if isinstance(spec, dict):
            spec = dict(spec)
            name, pinned = spec.pop("policy"), spec.pop("num_steps", None)
            if pinned is not None:
                check_num_steps(pinned, str(name))
            parts = {k: f"{k}={_fmt(v)}" for k, v in spec.items()}
            own = [p for k, p in parts.items() if k not in GRID_KEYS]
            add(" ".join([name, *parts.values()]), name, spec, pinned, " ".join([name, *own]) if own else None)
        elif str(spec).endswith((".yaml", ".yml")):  # a file of its own settings: its own frontier, by its name
            add(Path(spec).stem, str(spec), {}, load_cache(spec)[1], Path(spec).stem)
        elif spec == STEPS_ONLY:
            for n in steps:
                if n != reference_steps:
                    out.append(BenchConfig(f"{STEPS_ONLY} steps={n}", "none", num_steps=n, name=STEPS_ONLY))
        elif spec == "none":
            out.append(BenchConfig("none", "none", num_steps=reference_steps))
        else:
            for label, over in policy_grid(spec, scales) if grid else [(spec, {})]:
                add(label, spec, over)
    names = {c.build().name if c.policy.endswith((".yaml", ".yml")) else c.policy for c in out}
    if ablation and "worldcache" in names:
        out.extend(ablation_grid(reference_steps))
    labels = [c.label for c in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"configurations listed twice: {dup}")
    return out
