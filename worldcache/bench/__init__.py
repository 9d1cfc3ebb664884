"""Speed and quality of every cache policy side by side, on held-out episodes, along the denoising-step axis.

The package by concern: `grid` (which configurations: settings x steps, the steps-only control), `episodes`
(simulated Pusher or an episode store), `measure` (running, timing, the compute model, frame and latent
quality), `ablation` (WorldCache's parts at matched compute), `frontier` (Pareto frontiers, comparison at equal
speed), `report` (table, JSON, figures), `run` (`run_bench`), `tune` (`worldcache tune`)."""
from .ablation import ABLATION_PARTS, ablation_grid, match_ablation, match_threshold
from .episodes import CALIBRATION_SEED, HELDOUT_SEED, TUNING_SEED, heldout_episodes, store_episodes
from .frontier import equal_speed_comparison, frontier_at, frontiers, pareto_front
from .grid import (ALL_POLICIES, FULL_DENOISE_STEPS, QUICK_DENOISE_STEPS, STEPS_ONLY, BenchConfig, bench_configs,
                   policy_grid, steps_axis)
from .measure import METRICS, compute_ms, latent_metrics, machine_info, needs_calibration, warm_up
from .report import format_table, markdown_table, pareto_plot, save_strip, strip_panels
from .run import run_bench, run_order
from .tune import tune

__all__ = ["ABLATION_PARTS", "ALL_POLICIES", "BenchConfig", "CALIBRATION_SEED", "FULL_DENOISE_STEPS", "HELDOUT_SEED",
           "METRICS", "QUICK_DENOISE_STEPS", "STEPS_ONLY", "TUNING_SEED", "ablation_grid", "bench_configs",
           "compute_ms", "equal_speed_comparison", "format_table", "frontier_at", "frontiers", "heldout_episodes",
           "latent_metrics", "machine_info", "markdown_table", "match_ablation", "match_threshold",
           "needs_calibration", "pareto_front", "pareto_plot", "policy_grid", "run_bench", "run_order", "save_strip",
           "steps_axis", "store_episodes", "strip_panels", "tune", "warm_up"]
