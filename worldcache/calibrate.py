"""Calibrate TeaCache as its authors do: fit its rescaling polynomial per model on uncached calibration runs.

TeaCache accumulates ``P(rel_l1(m_t, m_prev))`` where `m` is the first block's timestep-modulated input, and P maps
that input change to the relative L1 change of the model output between the same two calls. P is fitted (numpy
``polyfit``, degree 4 as in TeaCache) on pairs of consecutive calls (per guidance branch and sample) of uncached
rollouts over tuning episodes: MuJoCo Pusher episodes with env seeds ``first_seed + i`` (default 20000 + i),
disjoint from the benchmark's (10000 + i). The coefficients go into the policy's YAML together with how they were
fitted (model, episodes, seeds, steps, date, fit residual), so a reader can tell what the numbers belong to.

    worldcache calibrate teacache --episodes 3 --out configs/cache/teacache.yaml
"""
from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .bench.episodes import TUNING_SEED, check_simulable, heldout_episodes
from .cache import make_policy
from .cache.base import NoCache, PolicyState, rel_l1
from .cache.config import CACHE_CONFIG_DIR, ConfigError, check_num_steps, read_yaml

DEGREE = 4            # TeaCache's polynomial degree


def fit_rescale(x, y, degree: int = DEGREE) -> tuple[list[float], float]:
    """Least-squares polynomial y ~ P(x) (coefficients highest power first, as `np.polyval` takes them) and the
    root-mean-square residual of the fit."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of the same length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) <= degree:
        raise ValueError(f"a degree-{degree} fit needs more than {degree} distinct inputs, got {len(np.unique(x))}")
    coefficients = np.polyfit(x, y, degree)
    rmse = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    return [float(c) for c in coefficients], rmse


@dataclass
class _Previous(PolicyState):
    mod: torch.Tensor | None = None  # the previous call's modulated input
    out: torch.Tensor | None = None  # and its model output


class ChangeRecorder(NoCache):
    """Uncached; records, per sample and branch, (input change, output change) between consecutive calls:
    the relative L1 change of the first block's modulated input and of the model output (the head's velocity)."""

    state_cls = _Previous

    def __init__(self):
        super().__init__()
        self.x: list[float] = []
        self.y: list[float] = []

    def run_stack(self, stack, call):
        h = stack(stack.x)
        mod, out = stack.modulated_input(), stack.dit.head(h, stack.ctx)  # the head runs again after: one head
        for i, st in enumerate(self.states(call)):
            m, o = mod[i:i + 1], out[i:i + 1]
            if st.mod is not None:
                self.x.append(float(rel_l1(m, st.mod)))
                self.y.append(float(rel_l1(o, st.out)))
            st.mod, st.out = m, o
        return h


def calibrate_teacache(checkpoint=None, episodes: int = 3, chunks: int = 2, num_steps: int | None = None,
                       first_seed: int = TUNING_SEED, out: str | Path | None = CACHE_CONFIG_DIR / "teacache.yaml",
                       device: str = "cpu", dtype: str = "fp32", seed: int = 0, degree: int = DEGREE) -> dict:
    """Fit TeaCache's polynomial on uncached rollouts of `episodes` tuning episodes x `chunks` chunks and, with
    `out`, write it into that YAML (its other settings are kept; a missing file gets TeaCache's defaults).
    Returns the YAML's content."""
    from tqdm import tqdm

    from .world_model import WorldModel, read_spec

    if episodes < 1 or chunks < 1:
        raise ValueError(f"episodes and chunks must be >= 1, got {episodes}, {chunks}")
    base = {"policy": "teacache"}
    if out is not None and Path(out).is_file():
        base = read_yaml(out)
        if base.get("policy") != "teacache":
            raise ConfigError(f"{out}: policy is {base.get('policy')!r}, not teacache")
        # its other settings are kept: checked before the rollouts (not by whoever reads it next), all but the two
        # this writes (a template may leave them empty)
        kept = {k: v for k, v in base.items() if k not in ("policy", "coefficients", "calibration", "num_steps")}
        make_policy("teacache", kept, source=str(out))
        if base.get("num_steps") is not None:
            check_num_steps(base["num_steps"], str(out))
    check_simulable(read_spec(checkpoint), "calibrate runs on simulated Pusher episodes only")
    model = WorldModel.from_pretrained(checkpoint, device=device, dtype=dtype)
    s = model.spec
    steps = num_steps or s.num_steps
    recorder = ChangeRecorder()
    for i, ep in enumerate(tqdm(heldout_episodes(episodes, chunks * s.chunk, s.height, s.width, first_seed,
                                                 scene=s.scene),
                                desc="calibration rollouts", unit="episode")):
        model.rollout(ep["obs"][:1], ep["actions"][None], policy=recorder, num_steps=steps, seed=seed + 1000 * (i + 1))
    coefficients, rmse = fit_rescale(recorder.x, recorder.y, degree)
    if len(recorder.x) < 3 * (degree + 1):  # a fit through (nearly) as many points as it has coefficients
        print(f"warning: {len(recorder.x)} (input, output) change pairs for {degree + 1} coefficients: the polynomial "
              f"interpolates them (fit RMSE {rmse:.2g} says little); give more --episodes, --chunks or steps",
              file=sys.stderr)
    base.pop("coefficients", None)
    base.pop("calibration", None)
    data = {**base, "coefficients": [float(f"{c:.6g}") for c in coefficients], "calibration": {
        "model": s.name, "checkpoint": str(checkpoint) if checkpoint else "bundled", "dtype": dtype,
        "episodes": episodes, "chunks": chunks, "env_seeds": [first_seed + i for i in range(episodes)],
        "num_steps": steps, "degree": degree, "pairs": len(recorder.x),
        "input_range": [round(min(recorder.x), 6), round(max(recorder.x), 6)], "fit_rmse": round(rmse, 6),
        "date": datetime.date.today().isoformat()}}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(
            "# TeaCache-style: accumulated change of the first block's modulated input (cache/teacache.py).\n"
            "# coefficients: its rescaling polynomial (highest power first), fitted by `worldcache calibrate\n"
            "# teacache` as `calibration` says (worldcache/calibrate.py); re-run that command for another model.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120))
    return data
