"""Benchmark and policy-evaluation fidelity on a tiny random checkpoint: they run end to end, the JSON has the
documented keys with finite numbers, the figures are written, and the fidelity result has its correlation keys.
Nothing here checks timings or quality values (a random model on a shared machine)."""
import dataclasses
import json
import math
import os
import re
import shutil

import mujoco
import numpy as np
import pytest
import torch

from worldcache import bench, fidelity
from worldcache.bench import (FULL_DENOISE_STEPS, METRICS, QUICK_DENOISE_STEPS, bench_configs, compute_ms,
                              equal_speed_comparison, frontiers, latent_metrics, match_threshold, pareto_front,
                              run_bench, store_episodes)
from worldcache.bench.episodes import calibration_episode
from worldcache.bench.grid import display
from worldcache.bench.tune import choose
from worldcache.cache.base import CallRecord
from worldcache.cache import ConfigError, load_policy
from worldcache.cache.config import CACHE_CONFIG_DIR, read_yaml
from worldcache.fidelity import EQUAL_COST, EQUAL_NORM, POLICY_SETS, evaluate_policies, make_control, parse_policy
from worldcache.mujoco_data import PusherRenderer, real_rollout
from worldcache.rollouts.identity import model_sha256
from worldcache.seeding import derived_seed
from worldcache.state_decoder import StateDecoder, StateDecoderConfig
from worldcache.world_model import WorldModel, WorldModelSpec


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_ckpt")
    spec = WorldModelSpec(action_dim=3, action_low=[-1.0] * 3, action_high=[1.0] * 3)  # the simulator's EE actions
    model = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    with torch.no_grad():  # the action embedder starts as a no-op; give it weight so actions matter
        for p in model.dit.cond_embedder.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(path)
    StateDecoder(StateDecoderConfig(height=spec.height, width=spec.width)).save(path)  # untrained: enough to run
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """32x40 frames, 4 actions per chunk, 2 blocks: the fidelity run's model calls stay cheap."""
    path = tmp_path_factory.mktemp("small_ckpt")
    spec = WorldModelSpec(height=32, width=40, chunk=4, action_dim=3, action_low=[-1.0] * 3, action_high=[1.0] * 3)
    model = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    model.save_pretrained(path)
    StateDecoder(StateDecoderConfig(height=32, width=40, channels=8, keypoints=4, hidden=16)).save(path)
    return path


@pytest.mark.slow
def test_run_bench_steps_axis_writes_json_frontiers_and_figures(tiny_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    res = run_bench(tiny_ckpt, policies=["none", "steps-only", "worldcache"], episodes=1, chunks=1, num_steps=4,
                    denoise_steps=[4, 2], ablation=False, grid=False, json_out=out, verbose=False)
    data = json.loads(out.read_text())
    assert [(r["label"], r["num_steps"]) for r in data["rows"]] == [
        ("none", 4), ("steps-only steps=2", 2), ("worldcache", 4), ("worldcache steps=2", 2)]
    for row in data["rows"]:
        assert {"policy", "config", "num_steps"} <= set(row) and set(METRICS) <= set(row)
        for k in ("denoising_speedup", "compute_speedup", "env_step_speedup", "computed_fraction", "overhead_ms",
                  "decision_ms", "psnr", "ssim", "psnr_retention", "ssim_retention", "ssim_vs_uncached",
                  "latent_rel_l1"):
            assert isinstance(row[k], float) and math.isfinite(row[k]), (row["label"], k, row[k])
        assert 0 <= row["computed_fraction"] <= 1
    none, steps_only, wc = data["rows"][:3]
    assert wc["config"] == load_policy("worldcache").config.as_dict()  # the row records the settings it ran
    # "none" re-runs the reference: identical frames and latents (PSNR infinite -> null), same computed cost
    assert none["psnr_vs_uncached"] is None and none["psnr_retention"] == 1.0
    assert none["latent_rel_l1"] == 0.0 and none["latent_psnr"] is None
    assert none["compute_speedup"] == pytest.approx(1.0, rel=0.01)
    # half the steps, every block run: the compute model counts half the calls at the same unit cost
    assert steps_only["policy"] == "steps-only" and steps_only["computed_fraction"] == 1.0
    assert steps_only["compute_speedup"] == pytest.approx(2.0, rel=0.01)
    # the latent metrics are those of the generated latent frames of the reference's and the row's rollouts
    model = WorldModel.from_pretrained(tiny_ckpt)
    ep = bench.heldout_episodes(1, model.spec.chunk, model.spec.height, model.spec.width)[0]
    z = [model.rollout(ep["obs"][:1], ep["actions"][None], num_steps=n, seed=1000)[1][0].latents[:, :, 1:]
         for n in (4, 2)]
    rel_l1, z_psnr = latent_metrics(z[1].numpy(), z[0].numpy())
    assert steps_only["latent_rel_l1"] == pytest.approx(rel_l1, rel=1e-6)
    assert steps_only["latent_psnr"] == pytest.approx(z_psnr, rel=1e-6)
    assert set(data["frontiers"]) == {"steps-only", "worldcache"}
    assert data["frontiers"]["steps-only"][0]["label"] == "steps-only steps=2"
    assert set(data["machine"]) >= {"cpu", "threads", "torch", "device", "date", "load_avg", "busy"}
    assert data["settings"]["denoise_steps"] == [4, 2] and data["settings"]["num_steps"] == 4
    for axis, key in (("compute", "compute_speedup"), ("wall", "denoising_speedup")):
        cmp = data["at_worldcache_speed"][axis]
        assert cmp["speedup"] == wc[key] and "steps-only" in cmp["baselines"]
    for f in ("bench_pareto.png", "bench_strip.png", "bench_strip.gif"):
        assert (tmp_path / f).stat().st_size > 0
    table = bench.markdown_table(res).splitlines()
    assert table[0].startswith("| config | steps |") and table[4].startswith("| worldcache | 4 |")
    assert len(table) == 2 + 4


def _write_store(path, n=3, frames=8, height=80, width=96, action_dim=3):
    from worldcache.rollouts.store import EpisodeStore

    store = EpisodeStore.create(path)
    rng = np.random.default_rng(0)
    for i in range(n):
        store.write_episode(f"ep{i}", obs=rng.integers(0, 256, (frames + 1, height, width, 3), dtype=np.uint8),
                            actions=rng.uniform(-1, 1, (frames, action_dim)).astype(np.float32),
                            rewards=np.zeros(frames, np.float32), terminated=np.zeros(frames, bool),
                            truncated=np.zeros(frames, bool))
    return store


def test_store_episodes_take_the_held_out_split_and_check_sizes(tmp_path):
    spec = WorldModelSpec()  # 80x96 frames, 3-d actions, chunk 8
    _write_store(tmp_path / "s.zarr", n=4, frames=8)
    held = store_episodes(tmp_path / "s.zarr", 5, 8, spec)
    assert [e["id"] for e in held] == ["ep3"]  # the last 10 % (at least one) of the sorted ids, as train splits
    assert held[0]["obs"].shape == (9, 80, 96, 3) and held[0]["actions"].shape == (8, 3)
    tuning = store_episodes(tmp_path / "s.zarr", 2, 8, spec, tuning=True)
    assert [e["id"] for e in tuning] == ["ep2", "ep1"]  # the training split, from its end: disjoint
    # the warm-up (MagCache's calibration) from the training split's start: measured by neither bench nor tune
    assert calibration_episode(spec, tmp_path / "s.zarr")["id"] == "ep0"
    assert [e["id"] for e in store_episodes(tmp_path / "s.zarr", 9, 8, spec, holdout=0)] == [
        "ep0", "ep1", "ep2", "ep3"]
    with pytest.raises(ValueError, match=r"none of its 1 held-out episode\(s\) has 16 steps"):
        store_episodes(tmp_path / "s.zarr", 1, 16, spec)
    with pytest.raises(ValueError, match=r"--holdout 1\.0 leaves no training episode of its 4$"):
        store_episodes(tmp_path / "s.zarr", 1, 8, spec, tuning=True, holdout=1.0)
    _write_store(tmp_path / "small.zarr", n=2, height=32)
    with pytest.raises(ValueError, match=r"frames \(32, 96, 3\)"):
        store_episodes(tmp_path / "small.zarr", 1, 8, spec)
    # a rollout store: chunked actions (T, chunk, A) and every predicted frame in "frames" (T, chunk, H, W, 3)
    from worldcache.rollouts.store import EpisodeStore

    store = EpisodeStore.create(tmp_path / "r.zarr")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 8, 80, 96, 3), dtype=np.uint8)
    store.write_episode("r0", obs=np.concatenate([frames[:1, 0], frames[:, -1]]),
                        actions=rng.uniform(-1, 1, (2, 8, 3)).astype(np.float32), rewards=np.zeros(2, np.float32),
                        terminated=np.zeros(2, bool), truncated=np.zeros(2, bool), extras={"frames": frames})
    (ep,) = store_episodes(tmp_path / "r.zarr", 1, 16, spec, holdout=0)
    assert ep["actions"].shape == (16, 3) and np.array_equal(ep["obs"][1:], frames.reshape(16, 80, 96, 3))


@pytest.mark.slow
def test_run_bench_on_store_episodes_compares_with_the_stored_frames(tiny_ckpt, tmp_path, monkeypatch):
    from worldcache.quality import psnr

    _write_store(tmp_path / "s.zarr", n=3, frames=8)
    res = run_bench(tiny_ckpt, policies=["steps-only"], data=tmp_path / "s.zarr", episodes=2, chunks=1,
                    num_steps=2, denoise_steps=[2, 1], ablation=False, verbose=False)
    st = res["settings"]
    assert st["episode_ids"] == ["ep2"] and st["episodes"] == 1 and "env_seeds" not in st
    ep = store_episodes(tmp_path / "s.zarr", 1, 8, WorldModelSpec())[0]
    model = WorldModel.from_pretrained(tiny_ckpt)
    frames, _ = model.rollout(ep["obs"][:1], ep["actions"][None], num_steps=2, seed=1000)
    assert res["uncached"]["psnr"] == pytest.approx(psnr(frames[0].numpy(), ep["obs"][1:]), rel=1e-6)
    with pytest.raises(ValueError, match=r"none of its 1 held-out episode\(s\) has 16 steps"):
        run_bench(tiny_ckpt, policies=["none"], data=tmp_path / "s.zarr", episodes=1, chunks=2, num_steps=2,
                  ablation=False, verbose=False)
    with pytest.raises(ValueError, match="--holdout 0 .* add --no-ablation"):  # nothing left to match thresholds on
        run_bench(tiny_ckpt, policies=["worldcache"], data=tmp_path / "s.zarr", episodes=1, chunks=1, num_steps=2,
                  holdout=0, verbose=False)
    # a setting only the model refuses (a probe as deep as its 2 blocks) is named by its row, or its file
    (tmp_path / "deep.yaml").write_text("policy: worldcache\nprobe_depth: 2\n")
    for spec, name in (({"policy": "worldcache", "probe_depth": 2}, "worldcache probe_depth=2"),
                       (str(tmp_path / "deep.yaml"), str(tmp_path / "deep.yaml"))):
        with pytest.raises(ValueError, match=rf"^{name}: probe_depth=2 leaves no blocks to skip \(model has 2\)$"):
            run_bench(tiny_ckpt, policies=[spec], data=tmp_path / "s.zarr", episodes=1, chunks=1, num_steps=2,
                      denoise_steps=[2], ablation=False, verbose=False)
    # a ValueError from inside numpy or torch is a bug: it keeps its own message and traceback, unlabelled
    from worldcache.cache.worldcache import WorldCache

    with monkeypatch.context() as m:
        m.setattr(WorldCache, "run_stack", lambda self, stack, call: np.zeros(-1))
        with pytest.raises(ValueError, match="^negative dimensions are not allowed$"):
            run_bench(tiny_ckpt, policies=["worldcache"], data=tmp_path / "s.zarr", episodes=1, chunks=1,
                      num_steps=2, denoise_steps=[2], ablation=False, grid=False, verbose=False)


@pytest.mark.slow
def test_ablation_thresholds_match_the_default_compute():
    from worldcache.bench.ablation import ablation_grid, computed_fraction, match_ablation

    model = WorldModel.build(WorldModelSpec(), hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    eps = bench.heldout_episodes(1, model.spec.chunk, model.spec.height, model.spec.width, bench.TUNING_SEED)
    configs = [c for c in ablation_grid(10) if c.label in ("worldcache -phase_aware", "worldcache paper defaults")]
    match_ablation(model, configs, eps, 10, verbose=False)
    target = computed_fraction(model, load_policy("worldcache"), eps, 10, 0)
    row, paper = configs
    assert paper.match is None  # a configuration of its own, not a part: run at its own threshold
    m = row.match
    assert m["target_fraction"] == target and row.overrides["threshold"] == m["threshold"]
    assert computed_fraction(model, row.build(), eps, 10, 0) == m["reached_fraction"]  # what was found is what runs
    # (that it is the nearest of the thresholds tried is match_threshold's, pinned on exact fractions above)


def test_default_grid_covers_every_policy_on_the_steps_axis_and_the_ablation():
    configs = bench_configs(reference_steps=35)
    names = {c.name or c.policy for c in configs if c.group == "policy"}
    assert names == {"none", "steps-only", "worldcache", "dicache", "fora", "teacache", "easycache", "fbcache",
                     "fastercache", "magcache", "taylorseer", "seacache", "pab"}
    wc = [(c.label, c.num_steps) for c in configs if c.policy == "worldcache" and c.group == "policy"]
    assert len(wc) == 3 * len(QUICK_DENOISE_STEPS)  # threshold x {0.5, 1, 2} at every step count
    assert ("worldcache", 35) in wc and ("worldcache threshold=0.06 steps=12", 12) in wc
    assert [(c.label, c.num_steps) for c in configs if c.name == "steps-only"] == [
        ("steps-only steps=18", 18), ("steps-only steps=12", 12)]  # uncached at fewer steps: the control
    assert [c.num_steps for c in configs if c.policy == "none" and c.name is None] == [35]  # the re-run reference
    assert sorted(c.label for c in configs if c.group == "ablation") == [
        "worldcache +warp", "worldcache -all", "worldcache -blend", "worldcache -motion_adaptive",
        "worldcache -phase_aware", "worldcache -saliency", "worldcache extrapolation=probe",
        "worldcache extrapolation=sigma", "worldcache extrapolation=sigma2", "worldcache generated_only=True",
        "worldcache paper defaults", "worldcache saliency_over=location"]
    assert next(c for c in configs if c.label == "worldcache saliency_over=location").build().config.saliency_over \
        == "location"
    assert {c.num_steps for c in configs if c.group == "ablation"} == {35}
    paper = next(c for c in configs if c.label == "worldcache paper defaults").build().config
    assert (paper.threshold, paper.ret_ratio, paper.warp, paper.warp_check, paper.extrapolation) == (
        0.08, 0.2, True, False, "probe")
    every_off = next(c for c in configs if c.label == "worldcache -all").build().config  # DiCache's line, too
    assert (every_off.extrapolation, every_off.blend, every_off.saliency) == ("probe", False, False)
    for c in configs:  # every configuration builds (validated settings)
        c.build().detach()
    assert [c.label for c in bench_configs(["worldcache"], ablation=False, grid=False, reference_steps=20)] == [
        "worldcache", "worldcache steps=18", "worldcache steps=12"]  # the quick axis cut to the reference's steps
    assert [(c.label, c.num_steps) for c in bench_configs(
        ["steps-only", {"policy": "fora", "interval": 3, "num_steps": 9}], ablation=False, denoise_steps=[14, 35],
        reference_steps=35)] == [("steps-only steps=14", 14), ("fora interval=3 steps=9", 9)]
    # none + 7 steps-only + 7 threshold policies x 3 thresholds x 8 + fora, fastercache, taylorseer, pab x 2 x 8
    assert FULL_DENOISE_STEPS == (35, 30, 24, 18, 14, 12, 10, 8)
    assert len(bench_configs(ablation=False, denoise_steps=FULL_DENOISE_STEPS)) == 1 + 7 + 7 * 3 * 8 + 4 * 2 * 8
    assert display("fora interval=2") == "FORA-style interval=2" and display("fora") == "FORA-style"
    # a setting off the policy's own grid (GRID_KEYS: threshold, fora's interval, ...) makes a variant
    specs = [{"policy": "worldcache", "threshold": 0.05}, {"policy": "worldcache", "saliency": False, "threshold": 0.05},
             {"policy": "fora", "interval": 4}]
    assert [(c.label, c.variant) for c in bench_configs(specs, ablation=False, denoise_steps=[35])] == [
        ("worldcache threshold=0.05", None), ("worldcache saliency=False threshold=0.05", "worldcache saliency=False"),
        ("fora interval=4", None)]
    with pytest.raises(ValueError, match="twice"):
        bench_configs(["worldcache", "worldcache"], ablation=False)


def test_a_yaml_file_is_a_frontier_of_its_own(tmp_path):
    """A policy's YAML with other settings (here TeaCache refitted: other coefficients) is not one more point of
    the policy's grid: its rows form their own frontier, named by the file."""
    refit = tmp_path / "teacache_refit.yaml"
    shipped = (CACHE_CONFIG_DIR / "teacache.yaml").read_text()
    refit.write_text(shipped.replace("coefficients: [603.176,", "coefficients: [373.561,"))
    assert refit.read_text() != shipped
    configs = bench_configs(["teacache", str(refit)], ablation=False, grid=False, denoise_steps=[35, 18])
    assert [(c.label, c.variant) for c in configs] == [
        ("teacache", None), ("teacache steps=18", None),
        ("teacache_refit", "teacache_refit"), ("teacache_refit steps=18", "teacache_refit")]
    rows = [{"policy": "teacache", "variant": c.variant or "teacache", "label": c.label, "group": "policy",
             "compute_speedup": x, "psnr_vs_uncached": q}
            for c, x, q in zip(configs, (2, 3, 2.5, 3.5), (60, 55, 50, 45))]  # as measure.py writes them
    assert {k: [r["label"] for r in v] for k, v in frontiers(rows, "compute_speedup").items()} == {
        "teacache": ["teacache", "teacache steps=18"],
        "teacache_refit": ["teacache_refit", "teacache_refit steps=18"]}


def _record(blocks_run, policy_ms, wall_ms, computed=True):
    return CallRecord(step=0, num_steps=1, branch="cond", computed=computed, blocks_run=blocks_run,
                      policy_ms=policy_ms, wall_ms=wall_ms)


def test_compute_ms_counts_what_ran_at_measured_unit_times():
    # fixed (embed + head) 2 ms, 5 ms per block; wall_ms is ignored where the policy's own time is measured
    recs = [_record(6, 0.5, 99.0), _record(1, 1.5, 1.0, computed=False), _record(0, 0.25, 0.0, computed=False)]
    assert compute_ms(recs, 2.0, 5.0) == (2 + 30 + 0.5) + (2 + 5 + 1.5) + (2 + 0 + 0.25)
    # a diffusers-hook policy (its work inside the blocks, policy_ms NaN) counts at its wall time
    assert compute_ms([_record(6, math.nan, 17.0), _record(3, 0.0, 0.0)], 2.0, 5.0) == 17.0 + 17.0
    # ... but at compiled unit times by its blocks (its eager blocks' wall time would count the compile gap)
    assert compute_ms([_record(6, math.nan, 99.0), _record(3, 0.0, 0.0)], 2.0, 5.0, compiled=True) == 32.0 + 17.0
    # the reference runs 6 blocks on 4 calls, a cache 2 calls in full and 2 with a 1-block probe
    ref = [_record(6, 0.0, 0.0)] * 4
    cached = [_record(6, 0.0, 0.0)] * 2 + [_record(1, 1.0, 0.0, computed=False)] * 2
    assert compute_ms(ref, 2.0, 5.0) / compute_ms(cached, 2.0, 5.0) == 128 / 80  # 4 x 32 vs. 2 x 32 + 2 x 8


def test_latent_metrics_exact():
    ref = np.array([[0.0, 2.0], [4.0, -2.0]])
    pred = ref + np.array([[1.0, 0.0], [0.0, -1.0]])
    rel_l1, z_psnr = latent_metrics(pred, ref)
    assert rel_l1 == 2 / 8  # sum|pred - ref| / sum|ref|
    assert z_psnr == pytest.approx(10 * math.log10(6 ** 2 / 0.5), abs=1e-12)  # range max-min = 6, MSE = 2/4
    assert latent_metrics(ref, ref) == (0.0, None)  # identical: PSNR infinite -> None


def _frame(bright: int) -> np.ndarray:
    """A black 100x100 RGB frame with its first `bright` values at 255: MSE against black = bright / 30000 in the
    [0, 1] range the quality metrics read uint8 frames in."""
    f = np.zeros(100 * 100 * 3, np.uint8)
    f[:bright] = 255
    return f.reshape(100, 100, 3)


def test_psnr_is_the_mean_of_per_frame_psnr():
    from worldcache.quality import psnr

    # per-frame MSE 1e-2 and 1e-4: 20 and 40 dB, mean 30; a pooled MSE (5.05e-3) would give 22.97 dB
    pred, black = np.stack([_frame(300), _frame(3)]), np.zeros((2, 100, 100, 3), np.uint8)
    assert psnr(pred, black) == pytest.approx(30.0, abs=1e-4)
    assert psnr(pred[None], black[None]) == pytest.approx(30.0, abs=1e-4)  # (episodes, T, ...): every frame alike
    assert psnr(pred[:1], black[:1]) == pytest.approx(20.0, abs=1e-4)  # data range 1 for frames / 255, not 255


def test_one_exact_frame_does_not_make_the_mean_infinite():
    # an exact frame counts as one of its 30000 values one grey level off: 10 log10(30000 * 255^2 / 255^2 * ...)
    # = 10 log10(30000) + 20 log10(255) = 92.90 dB; with a 20 dB frame the mean is finite. inf: every frame exact
    from worldcache.quality import moving_psnr, psnr

    black = np.zeros((2, 100, 100, 3), np.uint8)
    exact = 10 * math.log10(30000) + 20 * math.log10(255)
    assert psnr(np.stack([_frame(300), black[0]]), black) == pytest.approx((20 + exact) / 2, abs=1e-9)
    assert psnr(black, black) == float("inf")
    # the moving region alike: a frame whose moving pixels are exact counts one of their values one level off
    start, real = np.zeros((100, 100, 3), np.uint8), np.zeros((1, 100, 100, 3), np.uint8)
    real[0, :10] = 200  # 1000 moving pixels, 3000 values
    assert moving_psnr(real, real, start) == pytest.approx(10 * math.log10(3000) + 20 * math.log10(255), abs=1e-9)


def test_unit_times_and_measure_row_are_the_documented_formulas():
    from types import SimpleNamespace

    from worldcache.bench.grid import BenchConfig
    from worldcache.bench.measure import Runs, measure_row, unit_times
    from worldcache.quality import ssim

    # the reference: 3 uncached calls of 4 blocks, block stacks 8, 10, 12 ms, whole calls 11, 12, 16 ms
    ref_recs = [_record(4, 0.0, w) for w in (11.0, 12.0, 16.0)]
    ref = Runs(frames=[np.stack([_frame(300), _frame(3)])], latents=[np.array([[0.0, 2.0]])], records=ref_recs,
               episode_loop_ms=[39.0], episode_rollout_s=[0.5], predictions=1, stack_ms=[8.0, 10.0, 12.0])
    fixed_ms, block_ms = unit_times(ref)
    assert block_ms == 30 / 12  # all block-stack time over all blocks run
    assert fixed_ms == 3.0  # mean of wall - stack: (3 + 2 + 4) / 3
    # a cache: one full call, a 1-block probe, a skip without probe (the policy's own time 0.5, 1, 0.25 ms)
    recs = [_record(4, 0.5, 14.0), _record(1, 1.0, 7.0, computed=False), _record(0, 0.25, 3.5, computed=False)]
    runs = Runs(frames=[np.stack([_frame(3000), _frame(300)])], latents=[np.array([[1.0, 2.0]])], records=recs,
                episode_loop_ms=[24.5], episode_rollout_s=[0.25], predictions=1)
    real = np.zeros((1, 2, 100, 100, 3), np.uint8)
    cfg = BenchConfig("wc test", "worldcache", num_steps=4)
    policy = SimpleNamespace(name="worldcache", config=None, settings=dict)  # a policy's settings(): {} here
    row = measure_row(cfg, policy, runs, ref, real, fixed_ms, block_ms)
    assert (row["policy"], row["variant"], row["label"], row["num_steps"]) == ("worldcache", "worldcache", "wc test", 4)
    assert row["denoising_speedup"] == 39.0 / 24.5 and row["denoising_speedup_per_episode"] == [round(39 / 24.5, 4)]
    assert row["env_step_speedup"] == 2.0  # 0.5 s / 0.25 s of rollout
    # per call fixed + blocks x block + policy_ms: the reference 3 x 13 ms, the cache 13.5 + 6.5 + 3.25
    assert row["compute_speedup"] == 39.0 / 23.25
    assert row["computed_fraction"] == 1 / 3 and row["blocks_per_call"] == 5 / 3
    # overhead: wall beyond fixed + the blocks that ran, per call: (1 + 1.5 + 0.5) / 3; decision: mean policy_ms
    assert row["overhead_ms"] == pytest.approx(1.0, abs=1e-12)
    assert row["decision_ms"] == pytest.approx(1.75 / 3, abs=1e-12)
    assert row["denoise_ms_per_step"] == 24.5 and row["env_step_ms"] == 250.0
    # frames against the simulator's: the cache 10 and 20 dB (MSE 0.1, 0.01), the reference 20 and 40 dB
    assert row["psnr"] == pytest.approx(15.0, abs=1e-4)
    assert row["psnr_retention"] == pytest.approx(15.0 / 30.0, abs=1e-5)  # row / reference, not the reverse
    cache_frames, ref_frames = np.stack(runs.frames), np.stack(ref.frames)
    assert row["ssim_retention"] == pytest.approx(ssim(cache_frames, real) / ssim(ref_frames, real), rel=1e-12)
    # against the reference's frames: 2700 and 297 of 30000 values differ
    assert row["psnr_vs_uncached"] == pytest.approx((10 * math.log10(30000 / 2700) + 10 * math.log10(30000 / 297))
                                                    / 2, abs=1e-4)
    assert row["ssim_vs_uncached"] == pytest.approx(ssim(cache_frames, ref_frames), rel=1e-12)
    # latents [1, 2] against [0, 2]: rel L1 1/2, PSNR 10 log10(2^2 / 0.5)
    assert row["latent_rel_l1"] == 0.5 and row["latent_psnr"] == pytest.approx(10 * math.log10(8), abs=1e-12)
    with pytest.raises(RuntimeError, match="one block-stack timing"):
        unit_times(Runs(records=ref_recs, stack_ms=[8.0]))


def test_pareto_front_and_frontiers():
    pts = [(1.0, 60.0), (2.0, 55.0), (1.5, 50.0), (3.0, 40.0), (2.0, 55.0), (0.9, None), (3.0, 39.0)]
    # (1.5, 50) is beaten by (2, 55); the repeat of (2, 55) and (3, 39) go; None counts as infinite PSNR
    assert pareto_front(pts) == [5, 0, 1, 3]
    row = lambda policy, label, x, q, steps, group="policy": {  # noqa: E731
        "policy": policy, "label": label, "group": group, "denoising_speedup": 2 * x, "compute_speedup": x,
        "psnr_vs_uncached": q, "num_steps": steps, "latent_rel_l1": 0.01, "latent_psnr": 70.0, "config": {}}
    rows = [row("none", "none", 1.0, None, 35), row("steps-only", "s18", 1.9, 56.0, 18),
            row("steps-only", "s12", 2.9, 54.0, 12), row("worldcache", "worldcache", 2.5, 55.0, 35),
            row("worldcache", "w18", 3.0, 56.0, 18), row("worldcache", "w12", 4.0, 50.0, 12),
            row("worldcache", "-saliency", 5.0, 60.0, 35, "ablation")]
    fr = frontiers(rows)
    assert list(fr) == ["steps-only", "worldcache"]  # the re-run reference and the ablation are not frontiers
    assert [p["label"] for p in fr["worldcache"]] == ["w18", "w12"]  # the default is dominated by 18 steps
    assert fr["steps-only"][1] == {"label": "s12", "num_steps": 12, "speedup": 5.8, "compute_speedup": 2.9,
                                   "psnr_vs_uncached": 54.0, "latent_rel_l1": 0.01, "latent_psnr": 70.0,
                                   "config": {}}
    cmp = equal_speed_comparison(rows, speed_key="compute_speedup")
    assert cmp["speedup"] == 2.5  # steps-only interpolated between 1.9x/56 dB and 2.9x/54 dB: 56 - 0.6 x 2
    assert cmp["baselines"]["steps-only"]["psnr_vs_uncached"] == pytest.approx(54.8)
    assert set(cmp["baselines"]) == {"steps-only"}


def test_match_threshold_brackets_and_bisects():
    frac = lambda tau: 0.26 * 0.16 / tau  # noqa: E731  (compute falls as the threshold rises)
    m = match_threshold(frac, 0.16, 0.13)  # exactly at twice the default: found by the first doubling
    assert (m["threshold"], m["reached_fraction"], m["tries"]) == (0.32, 0.13, 2)
    m = match_threshold(frac, 0.16, 0.26 * 0.16 / 0.2)  # inside (0.16, 0.32): 5 geometric bisections
    assert m["tries"] == 2 + 5 and abs(math.log(m["threshold"] / 0.2)) <= math.log(2) / 32
    assert match_threshold(frac, 0.16, 0.26)["tries"] == 1  # the default already matches
    # further out, the bracket narrows to the last factor 2 before bisecting: within 2^(1/32) there too
    for tau in (0.9, 0.55, 0.05):  # 0.9: 1.26 x 2^(1/32) off when the bracket kept its first end
        m = match_threshold(frac, 0.16, 0.26 * 0.16 / tau)
        assert abs(math.log(m["threshold"] / tau)) <= math.log(2) / 32, (tau, m)
    steps = lambda tau: 0.5 if tau < 0.1 else 0.25  # noqa: E731  (discrete fractions: the nearest one wins)
    m = match_threshold(steps, 0.16, 0.4)
    # halving brackets (0.08, 0.16); bisection tries 0.08 x 2^(k/32) for k = 16, 8, 12, 10, 11. Three thresholds
    # reach 0.5 (0.08, 2^(8/32) and 2^(10/32) times it): the tie goes to the one nearest the default, 2^(10/32)
    assert (m["threshold"], m["reached_fraction"], m["tries"]) == (round(0.08 * 2 ** (10 / 32), 6), 0.5, 7)


def test_equal_speed_comparison_interpolates_and_never_extrapolates():
    row = lambda policy, label, x, q: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                       "denoising_speedup": x, "psnr_vs_uncached": q}
    rows = [row("none", "none", 1.0, None), row("worldcache", "worldcache", 2.0, 55.0),
            row("teacache", "a", 1.5, 60.0), row("teacache", "b", 2.5, 50.0), row("fora", "c", 2.2, 52.0),
            row("fora", "d", 3.0, 45.0), row("dicache", "e", 1.5, 62.0), row("dicache", "f", 1.95, 51.0),
            row("teacache", "dominated", 2.4, 40.0)]
    cmp = bench.equal_speed_comparison(rows)
    assert cmp["speedup"] == 2.0 and cmp["psnr_vs_uncached"] == 55.0
    assert cmp["baselines"]["teacache"]["psnr_vs_uncached"] == pytest.approx(55.0)  # along the frontier only
    assert not cmp["baselines"]["teacache"]["nearest"]
    assert cmp["baselines"]["fora"] == {"psnr_vs_uncached": None, "nearest": False, "min_speedup": 2.2,
                                        "max_speedup": 3.0}  # 10 % away: not equal speed
    assert cmp["baselines"]["dicache"]["psnr_vs_uncached"] == 51.0 and cmp["baselines"]["dicache"]["nearest"]
    assert set(cmp["baselines"]) == {"teacache", "fora", "dicache"}
    assert bench.equal_speed_comparison(rows[2:]) is None  # no WorldCache row


def test_frontier_at_reads_each_frontier_at_fixed_speeds():
    row = lambda policy, label, x, q: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                       "compute_speedup": x, "psnr_vs_uncached": q}
    rows = [row("none", "none", 1.0, None), row("steps-only", "s24", 1.46, 62.0), row("steps-only", "s12", 2.92, 54.0),
            row("worldcache", "w1", 1.9, 66.0), row("worldcache", "w2", 3.0, 60.0), row("worldcache", "slow", 2.0, 50.0),
            row("worldcache", "same", 1.5, None)]  # identical to the reference: bounds nothing
    fa = bench.frontier_at(rows, speeds=(1.5, 2.0, 2.95, 3.1, 4.0))
    assert fa["speeds"] == [1.5, 2.0, 2.95, 3.1, 4.0] and fa["speed"] == "compute_speedup"
    s = fa["psnr_vs_uncached"]
    assert set(s) == {"steps-only", "worldcache"}  # the `none` re-run has no frontier
    # steps-only: 62 + (x - 1.46) / 1.46 * (54 - 62) inside; 2.95 is within 5 % of its end (2.92), 3.1 is not
    assert s["steps-only"] == pytest.approx([62 - 8 * 0.04 / 1.46, 62 - 8 * 0.54 / 1.46, 54.0, None, None])
    # worldcache: 1.5 is 21 % below its first finite point (1.9): n/a; 2.0: 66 - 6 * 0.1 / 1.1; 3.1: its end
    assert s["worldcache"] == pytest.approx([None, 66 - 6 * 0.1 / 1.1, 66 - 6 * 1.05 / 1.1, 60.0, None])
    # end points read as "equal speed" are marked: in the JSON and, with a footnote, in the table
    assert fa["nearest"] == {"steps-only": [False, False, True, False, False],
                             "worldcache": [False, False, False, True, False]}
    from worldcache.bench.report import format_table

    table = format_table({"settings": {"episodes": 1, "frames_per_episode": 8, "episode_source": "x", "num_steps": 35},
                          "uncached": {"denoise_ms_per_step": 1, "env_step_ms": 1, "call_ms": 1, "fixed_ms_per_call": 1,
                                       "block_ms": 1, "psnr": 30, "ssim": 0.9}, "rows": [], "frontier_at": {"c": fa}})
    assert "54.0*" in table and "60.0*" in table and "*: the frontier's end point, within 5 % of that speedup" in table


def test_variants_have_their_own_frontiers():
    row = lambda policy, label, x, q, variant=None: {"policy": policy, "variant": variant or policy,  # noqa: E731
                                                     "label": label, "group": "policy", "compute_speedup": x,
                                                     "psnr_vs_uncached": q}
    rows = [row("worldcache", "w1", 1.5, 70.0), row("worldcache", "w2", 2.5, 60.0),
            row("worldcache", "v1", 2.0, 68.0, "worldcache saliency=False"),
            row("worldcache", "v2", 3.0, 50.0, "worldcache saliency=False")]
    fr = bench.frontiers(rows)
    # grouped by policy alone, one frontier would hold all four rows; each variant keeps its own
    assert {k: [p["label"] for p in v] for k, v in fr.items()} == {"worldcache": ["w1", "w2"],
                                                                  "worldcache saliency=False": ["v1", "v2"]}
    fa = bench.frontier_at(rows, speeds=(2.0, 2.5))["psnr_vs_uncached"]
    assert fa == {"worldcache": [65.0, 60.0], "worldcache saliency=False": [68.0, 59.0]}
    del rows[0]["variant"]  # bench.json before variants: the policy is the frontier
    assert [p["label"] for p in bench.frontiers(rows)["worldcache"]] == ["w1", "w2"]


def test_run_order_shuffles_reference_and_configurations_per_episode():
    orders = [bench.run_order(12, episode, seed=0) for episode in range(3)]
    assert all(sorted(o) == list(range(13)) for o in orders)  # the reference (0) and every configuration, once
    assert orders[0] == bench.run_order(12, 0, seed=0)  # a function of (seed, episode): reruns time alike
    assert len({tuple(o) for o in orders}) == 3 and orders[0] != bench.run_order(12, 0, seed=1)  # all 3 differ
    assert orders[0] != list(range(13))


def test_a_row_identical_to_the_reference_does_not_erase_the_frontier():
    # (1.2x, 85 dB) and (1.6x, 70 dB) read 85 - 15 * 0.3 / 0.4 = 73.75 at 1.5x; a row identical to the reference at
    # 1.3x (PSNR None) dominated both when taken as infinite, and then bounded nothing: the reading went to None
    row = lambda label, x, q: {"policy": "dicache", "label": label, "group": "policy",  # noqa: E731
                               "compute_speedup": x, "psnr_vs_uncached": q}
    rows = [row("d1", 1.2, 85.0), row("d2", 1.6, 70.0)]
    for extra in ([], [row("exact", 1.3, None)]):
        assert bench.frontier_at(rows + extra, speeds=(1.5,))["psnr_vs_uncached"]["dicache"] == [73.75]
        assert [p["label"] for p in bench.frontiers(rows + extra)["dicache"]] == ["d1", "d2"]


def test_frontier_at_over_latent_psnr_has_its_own_frontier():
    # the frames tie (70 dB at the 8-bit floor, so each policy's fastest row dominates); the latents rank the rows
    row = lambda policy, label, x, q, z: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                          "compute_speedup": x, "psnr_vs_uncached": q, "latent_psnr": z}
    rows = [row("worldcache", "w1", 1.4, 70.0, 80.0), row("worldcache", "w2", 1.8, 70.0, 72.0),
            row("dicache", "d1", 1.4, 70.0, 78.0), row("dicache", "d2", 1.8, 70.0, 66.0)]
    frames = bench.frontier_at(rows, speeds=(1.5, 1.8))
    assert frames["quality"] == "psnr_vs_uncached"
    assert frames["psnr_vs_uncached"] == {"worldcache": [None, 70.0], "dicache": [None, 70.0]}
    fa = bench.frontier_at(rows, speeds=(1.5, 1.7), quality_key="latent_psnr")
    assert fa["quality"] == "latent_psnr" and fa["speed"] == "compute_speedup" and "psnr_vs_uncached" not in fa
    # worldcache: 80 - 8 * (x - 1.4) / 0.4; dicache: 78 - 12 * (x - 1.4) / 0.4
    assert fa["latent_psnr"]["worldcache"] == pytest.approx([78.0, 74.0])
    assert fa["latent_psnr"]["dicache"] == pytest.approx([75.0, 69.0])


def test_strip_shows_the_baseline_closest_to_uncached_at_a_similar_speed():
    row = lambda policy, label, x, q: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                       "compute_speedup": x, "psnr_vs_uncached": q}
    rows = [row("worldcache", "worldcache", 2.0, 55.0), row("teacache", "smooth", 2.1, 40.0),
            row("fora", "fora interval=2", 1.8, 52.0), row("fbcache", "too slow", 1.2, 70.0)]
    frames = {r["label"]: r["label"] for r in rows}
    names = [name for name, _ in bench.strip_panels(rows, "u", frames, "gt")]
    assert names == ["uncached", "WorldCache 2.00x", "FORA-style interval=2 1.80x", "ground truth"]
    # none within 1.25x of 2.0x: the nearest in speedup (1.2x: a factor 1.67 off; 4.0x: 2), whatever its PSNR
    rows = [rows[0], row("teacache", "far slow", 1.2, 45.0), row("fora", "far fast", 4.0, 70.0)]
    frames = {r["label"]: r["label"] for r in rows}
    assert [name for name, _ in bench.strip_panels(rows, "u", frames, "gt")] == [
        "uncached", "WorldCache 2.00x", "far slow 1.20x", "ground truth"]


def test_tune_chooses_by_its_rule():
    row = lambda label, x, q, group="policy": {"label": label, "group": group, "compute_speedup": x,  # noqa: E731
                                               "psnr_vs_uncached": q}
    rows = [row("a", 1.5, 60.0), row("b", 3.0, 50.5), row("c", 3.5, 49.0), row("d", 3.0, 52.0),
            row("abl", 9.0, 99.0, "ablation"), row("ref", 1.0, None)]
    assert choose(rows, min_psnr=50)["label"] == "d"  # fastest above 50 dB; the tie at 3.0x goes to quality
    assert choose(rows, min_speedup=2.0)["label"] == "d"
    # "at least": a row exactly at the bound qualifies
    assert choose(rows + [row("at 50 dB", 3.2, 50.0)], min_psnr=50)["label"] == "at 50 dB"
    assert choose(rows + [row("at 2x", 2.0, 58.0)], min_speedup=2.0)["label"] == "at 2x"
    assert choose(rows, min_psnr=1000)["label"] == "ref"  # the reference itself is identical (infinite PSNR)
    with pytest.raises(ValueError, match="3.5"):
        choose(rows, min_speedup=5)
    with pytest.raises(ValueError, match="exactly one"):
        choose(rows)


def test_evaluate_policies_ranks_the_equal_cost_set_end_to_end(small_ckpt, tmp_path):
    assert parse_policy("scripted:0.3") == ("scripted", 0.3, "scripted noise=0.3")
    res = evaluate_policies(small_ckpt, episodes=1, steps=4, num_steps=2, cache=("none", "worldcache"),
                            verbose=False, json_out=tmp_path / "f.json")
    assert [p["policy"] for p in res["policies"]] == [parse_policy(p)[2] for p in POLICY_SETS["equal-cost"]]
    assert len(res["policies"]) >= 6 and res["equal_control_cost"] is True
    for key in ("spearman", "spearman_all", "spearman_ci90", "spearman_without_ctrl", "same_ranking"):
        assert set(res[key]) == {"none", "worldcache"}
    for c, rho in res["spearman"].items():  # one start: nothing to resample, the interval is the point
        assert res["spearman_ci90"][c] == (None if rho is None else [pytest.approx(rho)] * 2)
    assert "spearman_decoded_real" in res  # same_ranking: pinned on hand-made returns in test_same_ranking_*

    for p in res["policies"]:  # the same control cost, computed exactly from the actions: 0.1 |a|^2 per step
        assert p["ctrl_return"] == pytest.approx(-0.1 * EQUAL_NORM ** 2 * 4, rel=1e-6)
        assert math.isfinite(p["real_return"]) and math.isfinite(p["decoded_real_return"])
        assert p["real_return"] <= p["ctrl_return"] + 1e-6
        assert all(math.isfinite(v) for v in p["wm_return"].values())
    assert len({round(p["real_return"], 6) for p in res["policies"]}) == len(res["policies"])  # spread out
    # the returns split into the reward's position terms: with the exact control cost they add up to the returns
    assert res["term_names"] == ["object-goal", "tip-object"]
    for p in res["policies"]:
        t = p["terms"]
        assert sum(t["real"]) + p["ctrl_return"] == pytest.approx(p["real_return"], rel=1e-6)  # rewards: float32
        assert sum(t["decoded_real"]) + p["ctrl_return"] == pytest.approx(p["decoded_real_return"], rel=1e-9)
        for c in ("none", "worldcache"):
            assert sum(t["wm"][c]) + p["ctrl_return"] == pytest.approx(p["wm_return"][c], rel=1e-9)
        assert p["terms_episodes"]["real"] == [t["real"]]  # one start
    with PusherRenderer(32, 40, max_episode_steps=4) as renderer:  # the real terms, from the simulator's states
        ep = real_rollout(make_control("away", None, renderer, 10_000), 10_000, 4, renderer=renderer)
    st = ep["state"][1:]
    away = res["policies"][-1]
    assert away["policy"] == "away" and away["terms"]["real"] == pytest.approx(
        [-np.linalg.norm(st[:, 17:20] - st[:, 20:23], axis=1).sum(),
         -0.5 * np.linalg.norm(st[:, 14:17] - st[:, 17:20], axis=1).sum()], rel=1e-9)
    # decoded off the frames after each action (the untrained decoder still reads each frame its own way)
    dec = StateDecoder.load(small_ckpt)
    assert away["decoded_real_return"] == pytest.approx(float(dec.rewards(ep["obs"][1:], ep["actions"]).sum()),
                                                        rel=1e-9)
    assert away["decoded_real_return"] != pytest.approx(float(dec.rewards(ep["obs"][:-1], ep["actions"]).sum()),
                                                        rel=1e-6)
    assert len(fidelity.format_terms(res).splitlines()) == len(res["policies"]) + 4
    assert len(fidelity.markdown_table(res).splitlines()) == len(res["policies"]) + 2
    assert json.loads((tmp_path / "f.json").read_text())["spearman"].keys() == res["spearman"].keys()
    # other starts (tuning seeds), the same model: other real returns; a decoder from another folder is read
    other = evaluate_policies(small_ckpt, episodes=1, steps=4, num_steps=2, cache=("none",), policies=["push", "away"],
                              verbose=False, first_seed=20_000, decoder=small_ckpt)
    assert res["settings"]["env_seeds"] == [10_000] and other["settings"]["env_seeds"] == [20_000]
    assert res["settings"]["mujoco"] == mujoco.__version__  # the simulator release that made the real episodes
    assert res["settings"]["gl"] == os.environ["MUJOCO_GL"]  # and the GL backend that drew their frames
    assert (res["settings"]["decoder"], other["settings"]["decoder"]) == ("the checkpoint's", str(small_ckpt))
    assert other["policies"][0]["real_return"] != res["policies"][0]["real_return"]
    with pytest.raises(FileNotFoundError):
        evaluate_policies(small_ckpt, episodes=1, steps=4, verbose=False, decoder=tmp_path / "no_decoder")
    with pytest.raises(ValueError, match="multiple"):
        evaluate_policies(small_ckpt, episodes=1, steps=5, verbose=False)
    with pytest.raises(ValueError, match="unknown control policy"):
        evaluate_policies(small_ckpt, episodes=1, steps=4, policies=["teleport"], verbose=False)


@pytest.mark.parametrize("spec,match", [
    ("teleport", "unknown control policy 'teleport'"), ("random:0.5", "'random:0.5': random takes no noise level"),
    ("explore:0.9", "explore takes no noise level"), ("hover:0.3", "hover takes no noise level"),
    ("scripted:-0.5", r"'scripted:-0.5': the noise level after ':' must be a number in \[0, 1\]"),
    ("scripted:3", r"must be a number in \[0, 1\]"), ("push:abc", r"'push:abc': the noise level .* a number"),
    ("mixed:", "must be a number"), ("push:nan", "must be a number"),
])
def test_a_bad_control_policy_is_refused_before_the_model_loads(spec, match, monkeypatch):
    # a noise level a policy ignores would label a row "random noise=0.5" that is plain random
    monkeypatch.setattr("worldcache.world_model.WorldModel.from_pretrained",
                        lambda *a, **k: pytest.fail("the model loaded before the input was checked"))
    with pytest.raises(ValueError, match=match):
        evaluate_policies(episodes=1, steps=8, policies=[spec], verbose=False)


def test_a_lone_policy_or_cache_is_one_name_and_policy_specs_parse(monkeypatch):
    from pathlib import Path

    monkeypatch.setattr("worldcache.world_model.WorldModel.from_pretrained",
                        lambda *a, **k: pytest.fail("the model loaded before the input was checked"))
    for cache in ("bogus", Path("bogus")):  # a cache name or path alone is one entry, not its letters or parts
        with pytest.raises(ConfigError, match="bogus"):
            evaluate_policies(episodes=1, steps=8, policies="push", cache=cache, verbose=False)
    assert parse_policy("push:0.3") == ("push", 0.3, "push noise=0.3") and parse_policy("mixed:1") == (
        "mixed", 1.0, "mixed noise=1")
    from worldcache.fidelity import expand_policies
    assert expand_policies("push") == ["push"]
    assert expand_policies(["push", "noise-levels"])[:2] == ["push", "scripted:0"]

def test_same_ranking_compares_each_cache_with_the_first():
    from worldcache.fidelity import summarize

    real = [[3.0, 3.0], [2.0, 2.0], [1.0, 1.0]]  # 3 policies x 2 starts
    wm = {"none": [[3.0, 2.0], [2.0, 2.0], [0.0, 1.0]],    # means 2.5, 2, 0.5: ranks 3 2 1
          "same": [[9.0, 9.0], [5.0, 5.0], [1.0, 1.0]],    # other values, the same order
          "swap": [[2.0, 2.0], [3.0, 1.5], [0.0, 0.0]]}    # means 2, 2.25, 0: the first two swapped
    res = summarize(["a", "b", "c"], real, real, [[0.0, 0.0]] * 3, wm, {"seed": 0})
    assert res["same_ranking"] == {"none": True, "same": True, "swap": False}


def test_evaluate_policies_starts_split_over_calls_pool_exactly(small_ckpt, tmp_path, capsys):
    """A start measured alone gives what it gave inside a longer call, so `pool-fidelity` of split calls is the
    one call: every figure, the bootstrap interval included."""
    from worldcache import cli

    kw = dict(steps=4, num_steps=2, cache=("none",), policies=["push", "away"], verbose=False)
    whole = evaluate_policies(small_ckpt, episodes=2, **kw)
    evaluate_policies(small_ckpt, episodes=1, first_seed=10_001, json_out=tmp_path / "last.json", **kw)
    evaluate_policies(small_ckpt, episodes=1, json_out=tmp_path / "first.json", **kw)
    assert cli.main(["pool-fidelity", str(tmp_path / "last.json"), str(tmp_path / "first.json"),
                     "--json", str(tmp_path / "pooled.json")]) == 0
    assert "mean returns over 2 episodes" in capsys.readouterr().out
    assert json.loads((tmp_path / "pooled.json").read_text()) == json.loads(json.dumps(whole))  # terms included
    old = json.loads((tmp_path / "first.json").read_text())  # a result saved before the terms were kept
    for p in old["policies"]:
        del p["terms"], p["terms_episodes"]
    pooled = fidelity.pool_results([old, json.loads((tmp_path / "last.json").read_text())])
    assert pooled["term_names"] is None and fidelity.format_terms(pooled) == ""
    assert pooled["spearman"] == whole["spearman"]
    # the same model and reader copied to another folder (another machine): the files' hashes match, so it pools
    moved = shutil.copytree(small_ckpt, tmp_path / "moved")
    there = evaluate_policies(moved, episodes=1, first_seed=10_001, **kw)
    assert there["settings"]["checkpoint"] == str(moved) and there["settings"]["decoder"] == "the checkpoint's"
    assert there["settings"]["model_sha256"] == model_sha256(small_ckpt) == whole["settings"]["model_sha256"]
    pooled = fidelity.pool_results([json.loads((tmp_path / "first.json").read_text()), there])
    assert {k: v for k, v in pooled.items() if k != "settings"} == \
        {k: v for k, v in json.loads(json.dumps(whole)).items() if k != "settings"}
    (moved / "transformer" / ".DS_Store").write_bytes(b"finder")  # hidden files are not the model's: same hash
    (moved / "vae" / ".ipynb_checkpoints").mkdir()
    (moved / "vae" / ".ipynb_checkpoints" / "config-checkpoint.json").write_text("{}")
    assert model_sha256(moved) == model_sha256(small_ckpt)
    (moved / "state_decoder.safetensors").write_bytes(b"other weights")  # other files: another hash, refused
    assert model_sha256(moved) != model_sha256(small_ckpt)
    there["settings"]["model_sha256"] = model_sha256(moved)  # as a result measured on them would say
    with pytest.raises(ValueError, match="differs from result 0"):
        fidelity.pool_results([whole, there])
    older = json.loads((tmp_path / "first.json").read_text())  # measured with the older noise seeds: refused
    del older["settings"]["noise"]
    with pytest.raises(ValueError, match="differs from result 0"):
        fidelity.pool_results([older, json.loads((tmp_path / "last.json").read_text())])
    other_noise = evaluate_policies(small_ckpt, episodes=1, first_seed=10_001, seed=1, **kw)
    assert other_noise["policies"][0]["wm_returns"]["none"] != whole["policies"][0]["wm_returns"]["none"][1:]


def test_evaluate_policies_several_decoders_read_the_same_rollouts(small_ckpt, tmp_path, capsys):
    """One call with several state decoders gives, per decoder, exactly what a call with that decoder alone gives
    (the same rollouts, so readers compare pairwise at the cost of one call); the CLI writes one JSON each."""
    from worldcache import cli

    torch.manual_seed(5)  # another decoder: other weights, so other decoded returns
    StateDecoder(StateDecoderConfig(height=32, width=40, channels=8, keypoints=4, hidden=16)).save(tmp_path / "b")
    kw = dict(steps=4, num_steps=2, cache=("none",), policies=["push", "away"], verbose=False)
    both = evaluate_policies(small_ckpt, episodes=1, decoder=[small_ckpt, tmp_path / "b"], **kw)
    alone = [evaluate_policies(small_ckpt, episodes=1, decoder=d, **kw) for d in (small_ckpt, tmp_path / "b")]
    assert isinstance(both, list) and len(both) == 2
    assert [json.loads(json.dumps(r)) for r in both] == [json.loads(json.dumps(r)) for r in alone]
    assert both[0]["policies"][0]["wm_returns"] != both[1]["policies"][0]["wm_returns"]  # two readers, two returns
    assert both[0]["policies"][0]["real_returns"] == both[1]["policies"][0]["real_returns"]
    assert both[0]["settings"]["model_sha256"] == both[1]["settings"]["model_sha256"]  # one model, two readers
    assert both[0]["settings"]["decoder_sha256"] != both[1]["settings"]["decoder_sha256"]
    args = ["evaluate-policies", "--checkpoint", str(small_ckpt), "--episodes", "1", "--env-steps", "4",
            "--denoise-steps", "2", "--cache", "none", "--control", "push", "away", "--decoder", str(small_ckpt),
            str(tmp_path / "b")]
    assert cli.main(args + ["--json", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    assert f"decoder {small_ckpt}:" in printed and f"decoder {tmp_path / 'b'}:" in printed
    for f, r in zip(("a.json", "b.json"), alone):
        assert json.loads((tmp_path / f).read_text()) == json.loads(json.dumps(r))
    assert cli.main(args + ["--json", str(tmp_path / "a.json")]) == 2  # two decoders, one path: said, not guessed
    assert "2 decoder(s) need as many JSON paths" in capsys.readouterr().err


def test_evaluate_policies_real_cond_predicts_each_chunk_from_the_simulators_frames(small_ckpt, tmp_path, capsys):
    """The diagnostic: chunk 2 is predicted from the simulator's last frame of chunk 1 with the rollout's seed for
    chunk 2, not from the model's own; a one-chunk episode is the open-loop prediction itself."""
    from worldcache import cli
    from worldcache.mujoco_data import PusherRenderer, real_rollout
    from worldcache.state_decoder import StateDecoder
    from worldcache.world_model import WorldModel

    kw = dict(num_steps=2, cache=("none",), policies=["push", "away"], verbose=False, first_seed=10_001)
    one = evaluate_policies(small_ckpt, episodes=1, steps=4, **kw)
    assert cli.main(["evaluate-policies", "--checkpoint", str(small_ckpt), "--episodes", "1", "--env-steps", "4",
                     "--denoise-steps", "2", "--cache", "none", "--control", "push", "away", "--first-seed", "10001",
                     "--real-cond", "--json", str(tmp_path / "rc.json")]) == 0
    assert "each chunk from the simulator's frames before it" in capsys.readouterr().out
    one_rc = json.loads((tmp_path / "rc.json").read_text())
    assert one_rc["policies"] == json.loads(json.dumps(one["policies"])) and one_rc["settings"]["replay"] == "real-cond"
    two = evaluate_policies(small_ckpt, episodes=1, steps=8, real_cond=True, **kw)
    model, dec = WorldModel.from_pretrained(small_ckpt), StateDecoder.load(small_ckpt, "cpu")
    open_loop_returns = []
    with PusherRenderer(32, 40, max_episode_steps=8) as renderer:
        for p, name in zip(two["policies"], ("push", "away")):
            ep = real_rollout(make_control(name, None, renderer, 10_001), 10_001, 8, renderer=renderer)
            s = derived_seed(0, 10_001)  # the start's own noise, hashed from (seed, env seed); chunk c draws s + c
            first, _ = model.predict(ep["obs"][:1], ep["actions"][None, :4], num_steps=2, seed=s)
            second, _ = model.predict(ep["obs"][4:5], ep["actions"][None, 4:], num_steps=2, seed=s + 1)
            frames = np.concatenate([first[0].numpy(), second[0].numpy()])
            assert p["wm_returns"]["none"] == [pytest.approx(dec.rewards(frames, ep["actions"]).sum(), abs=1e-9)]
            rolled, _ = model.rollout(ep["obs"][:1], ep["actions"][None], num_steps=2, seed=s)  # open loop
            open_loop_return = dec.rewards(rolled[0].numpy(), ep["actions"]).sum()
            assert open_loop_return != pytest.approx(p["wm_returns"]["none"][0], abs=1e-9)
            open_loop_returns.append(open_loop_return)
    open_loop = evaluate_policies(small_ckpt, episodes=1, steps=8, **kw)
    assert [p["wm_returns"]["none"] for p in open_loop["policies"]] == \
        [[pytest.approx(r, abs=1e-9)] for r in open_loop_returns]
    with pytest.raises(ValueError, match="settings"):  # the two replays never pool into one figure
        fidelity.pool_results([one, one_rc])


@pytest.mark.slow
def test_evaluate_policies_noise_level_set(small_ckpt):
    res = evaluate_policies(small_ckpt, episodes=1, steps=4, policies=["noise-levels"], num_steps=2,
                            cache=("none",), verbose=False)
    assert [p["policy"] for p in res["policies"]][-1] == "random" and res["equal_control_cost"] is False
    assert len(fidelity.markdown_table(res).splitlines()) == 5 + 3  # with the control-cost-removed row


def test_equal_cost_policies_have_equal_per_step_norms():
    with PusherRenderer(32, 40, max_episode_steps=12) as r:
        for name in EQUAL_COST:
            for noise in ((None, 0.6) if name == "push" else (None,)):
                ep = real_rollout(make_control(name, noise, r, 7), 7, 12, renderer=r)
                np.testing.assert_allclose(np.linalg.norm(ep["actions"], axis=1), EQUAL_NORM, rtol=1e-6)
                assert np.abs(ep["actions"]).max() <= 1.0
    with pytest.raises(ValueError, match="noise"):
        make_control("away", 0.3, None, 0)


def test_cli_bench_takes_settings_and_a_tuning_seed_range(tiny_ckpt, tmp_path, capsys):
    from worldcache.cli import main

    out = tmp_path / "tune.json"
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:threshold=0.2,warp=true",
                 "--no-ablation", "--episodes", "1", "--chunks", "1", "--denoise-steps", "3", "--reference-steps", "3",
                 "--first-seed", "20000", "--compile",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["env_seeds"] == [20000] and data["settings"]["compile"] is True
    (row,) = data["rows"]
    assert row["label"] == "worldcache threshold=0.2 warp=True"
    assert row["config"]["threshold"] == 0.2 and row["config"]["warp"] is True
    # --threshold-scales sets each threshold policy's grid (multiples of its YAML default)
    tau = float(read_yaml(CACHE_CONFIG_DIR / "dicache.yaml")["threshold"])
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "dicache", "--threshold-scales", "0.25", "1",
                 "--no-ablation", "--episodes", "1", "--chunks", "1", "--denoise-steps", "3", "--reference-steps", "3",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["label"], r["config"].get("threshold")) for r in rows] == [
        (f"dicache threshold={round(tau / 4, 6):g}", round(tau / 4, 6)), ("dicache", tau)]
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:threshold"]) == 2
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:thresold=0.1"]) == 2
    assert "thresold" in capsys.readouterr().err


def test_cli_demo_prints_the_uncached_row_as_the_baseline(capsys):
    from worldcache.cli import main

    assert main(["demo", "--denoise-steps", "4"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["policy", "time_s", "speedup", "computed", "rel_err"]
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert list(rows) == ["none", "worldcache", "dicache"]  # the uncached reference first, then the defaults
    _, speedup, computed, err = rows["none"]
    assert (speedup, computed, err) == ("1.00", "1.00", "0.0000")  # the reference against itself
    t_ref = float(rows["none"][0])
    for name in ("worldcache", "dicache"):  # they skip calls, so their latents differ from the reference's
        t, speedup, computed, err = map(float, rows[name])
        assert computed < 1 and err > 0
        # the speedup is the reference's time over the policy's: their ratio, up to the printed digits' rounding
        assert (t_ref - 5e-4) / (t + 5e-4) - 5e-3 <= speedup <= (t_ref + 5e-4) / (t - 5e-4) + 5e-3, rows


def test_cli_demo_labels_a_yaml_by_its_path_and_checks_every_name_first(capsys, tmp_path, monkeypatch):
    from worldcache import sampler
    from worldcache.cli import main

    mine = tmp_path / "my_worldcache_settings.yaml"
    mine.write_text("policy: worldcache\nthreshold: 0.2\n")
    assert main(["demo", "--denoise-steps", "4", "--cache", "worldcache", "worldcache_paper", str(mine)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["none", "worldcache", "worldcache_paper", str(mine)]
    assert header.index("time_s") == len(str(mine)) + 1 + 2  # the column fits the path: "time_s" right-aligned in 8
    monkeypatch.setattr(sampler, "denoise", lambda *a, **k: pytest.fail("ran before every name was checked"))
    assert main(["demo", "--cache", "worldcache", "nosuch"]) == 2
    assert "unknown cache policy 'nosuch'" in capsys.readouterr().err


def test_cli_bench_split_divides_the_step_time_between_dit_loop_and_the_rest(capsys):
    import re

    from worldcache.cli import main
    from worldcache.world_model import BUNDLED

    assert main(["bench-split", "--denoise-steps", "2", "--repeats", "1"]) == 0  # the bundled model
    out = capsys.readouterr().out
    chunk = json.loads((BUNDLED / "model.json").read_text())["chunk"]
    assert out.startswith(f"per env step (one chunk of {chunk} frames, batch 1, 2 steps, cache=none, 1 repeats):")
    (dit_s, dit_pct), (rest_s, rest_pct) = [
        (float(s), float(pct)) for s, pct in re.findall(r"^  (?:DiT denoising loop|VAE and the rest) +([\d.]+) s  "
                                                        r"\( *([\d.]+) %\)$", out, re.M)]
    assert abs(dit_pct + rest_pct - 100.0) <= 0.1 + 1e-9  # two shares of one total, each rounded to 0.1 %
    # each share is its time over the sum of both, as far as the printed 3-decimal seconds tell
    shares = [100 * (dit_s + a) / (dit_s + a + rest_s + b) for a in (-5e-4, 5e-4) for b in (-5e-4, 5e-4)]
    assert min(shares) - 0.05 <= dit_pct <= max(shares) + 0.05


def test_cli_bench_split_times_the_models_own_step_count_by_default(tmp_path, capsys):
    from worldcache.cli import main

    spec = WorldModelSpec(height=32, width=40, chunk=4, num_steps=3, action_dim=3, action_low=[-1.0] * 3,
                          action_high=[1.0] * 3)  # a converted Predict2 model's default is 36, not 35
    WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8).save_pretrained(tmp_path)
    assert main(["bench-split", "--checkpoint", str(tmp_path), "--repeats", "1"]) == 0
    assert "batch 1, 3 steps, cache=none" in capsys.readouterr().out
    # a tuned YAML runs at its steps (it was refused: load_policy takes no num_steps)
    (tmp_path / "tuned.yaml").write_text("policy: worldcache\nthreshold: 0.2\nnum_steps: 2\n")
    assert main(["bench-split", "--checkpoint", str(tmp_path), "--repeats", "1", "--cache",
                 str(tmp_path / "tuned.yaml")]) == 0
    assert "batch 1, 2 steps, cache=" in capsys.readouterr().out


def random_store(path, steps: int, states: bool = False, seed: int = 0, episodes: int = 2) -> None:
    """Episodes (two) of random 80x96 frames and actions (with random simulator states if asked)."""
    from worldcache.rollouts.store import EpisodeStore

    st = EpisodeStore.create(path)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        st.write_episode(f"ep{e}", rng.integers(0, 256, (steps + 1, 80, 96, 3), dtype=np.uint8),
                         rng.uniform(-1, 1, (steps, 3)).astype(np.float32), np.zeros(steps, np.float32),
                         np.zeros(steps, bool), np.zeros(steps, bool),
                         extras={"state": rng.normal(size=(steps + 1, 23)).astype(np.float32)} if states else None)


def test_cli_evaluate_model_reports_moving_psnr_over_each_horizon(tiny_ckpt, tmp_path, capsys):
    from worldcache.cli import main

    random_store(tmp_path / "eps.zarr", 16)
    out = tmp_path / "q.json"
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"),
                 "--holdout", "0", "--chunks", "1", "2", "--denoise-steps", "2", "--device", "cpu", "--compile",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["windows"] == 2 and list(res["horizons"]) == ["1", "2"]
    assert res["settings"] == {"checkpoint": str(tiny_ckpt), "data": str(tmp_path / "eps.zarr"), "holdout": 0.0,
                               "episodes": 2, "chunks": [1, 2], "max_windows": res["settings"]["max_windows"],
                               "denoise_steps": 2, "cache": "none", "cache_config": {"policy": "none"},
                               "moving": 2.0, "real_cond": False, "decoder": str(tiny_ckpt)}  # its own, untrained
    assert len(res["cond_error"]) == 1 and 0 < res["cond_error"][0] < 100  # chunk 2's conditioning frame
    for c, r in res["horizons"].items():
        assert r["frames"] == 2 * int(c) * 8
        for k in ("psnr", "ssim", "psnr_moving", "psnr_repeat_last", "ssim_repeat_last", "psnr_moving_repeat_last"):
            assert math.isfinite(r[k]), (c, k)
        assert 0.9 < r["moving_pixel_share"] <= 1  # random frames: nearly every pixel differs from the start
        assert "positions" not in r  # the tiny checkpoint has no state decoder, the store no states
    printed = capsys.readouterr().out
    assert "moving PSNR" in printed and f"chunk 2: {res['cond_error'][0]:.3f}" in printed
    # a rollout store's chunked actions are not per-frame episodes: said before any model call
    from worldcache.rollouts.store import EpisodeStore

    EpisodeStore.create(tmp_path / "chunks.zarr").write_episode(
        "e", np.zeros((3, 80, 96, 3), np.uint8), np.zeros((2, 8, 3), np.float32), np.zeros(2, np.float32),
        np.zeros(2, bool), np.zeros(2, bool))
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "chunks.zarr")]) == 2
    assert "chunks.zarr: episode e has frames (3, 80, 96, 3) and actions (2, 8, 3); training and evaluate-model " \
           "take one action per frame" in capsys.readouterr().err
    # a store's one episode is never held out: the default --holdout says how to score it
    random_store(tmp_path / "one.zarr", 16, episodes=1)
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "one.zarr")]) == 2
    assert "one.zarr: --holdout 0.1 holds out none of its 1 episode(s); give --holdout 0 to score them all" in \
        capsys.readouterr().err


def test_cli_evaluate_model_says_what_the_cache_computed_and_refuses_another_frame_size_first(tiny_ckpt, tmp_path,
                                                                                               monkeypatch, capsys):
    from worldcache.cli import main
    from worldcache.rollouts.store import EpisodeStore
    from worldcache.world_model import WorldModel

    random_store(tmp_path / "eps.zarr", 8, episodes=2)
    out = tmp_path / "f.json"
    args = ["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"), "--holdout", "0",
            "--chunks", "1", "--denoise-steps", "6", "--json", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["computed_fraction"] == 1.0
    assert "the cache computed" not in capsys.readouterr().out
    assert main(args + ["--cache", "fora"]) == 0  # 2 warm-up steps, then every other call: 4 of 6
    assert json.loads(out.read_text())["computed_fraction"] == pytest.approx(4 / 6)
    assert "2 window(s), 8 frames per chunk; the cache computed 0.67 of the model calls" in capsys.readouterr().out
    # a make-data store of another frame size: said before the model loads (it failed in predict, on "uint8")
    odd = tmp_path / "odd.zarr"
    EpisodeStore.create(odd).attrs["frame_shape"] = [64, 80, 3]
    monkeypatch.setattr(WorldModel, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(odd)]) == 2
    assert capsys.readouterr().err.endswith(f"{odd}: 64x80 frames, but the model predicts 80x96: give a store of its "
                                            f"size (make-data --height/--width)\n")


def test_cli_evaluate_model_calibrates_magcache_on_a_training_episode(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """MagCache without ratios calibrates on its first prediction: warmed up on the store's first training episode
    (as bench takes it), not on the held-out windows it is scored on; its ratios are recorded."""
    from worldcache import bench
    from worldcache.cli import main
    from worldcache.train import load_episodes
    from worldcache.world_model import WorldModel

    random_store(tmp_path / "eps.zarr", 8, episodes=4)
    calls, real_warm_up = [], bench.warm_up

    def spy(model, policies, num_steps, *a, **kw):
        calls.append(([p.name for p in policies], num_steps, kw["episode"]))
        return real_warm_up(model, policies, num_steps, *a, **kw)

    monkeypatch.setattr(bench, "warm_up", spy)
    out = tmp_path / "m.json"
    base = ["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"), "--holdout",
            "0.5", "--chunks", "1", "--denoise-steps", "3", "--json", str(out)]
    assert main(base + ["--cache", "none"]) == 0 and calls == []  # nothing to calibrate
    assert main(base + ["--cache", "magcache"]) == 0
    [(names, steps, episode)] = calls
    first = load_episodes(tmp_path / "eps.zarr")[0][0]  # ep0: the training split's first (ep2, ep3 are scored)
    assert names == ["magcache"] and steps == 3
    np.testing.assert_array_equal(episode["obs"], first["obs"][:9])
    ratios = json.loads(out.read_text())["settings"]["cache_config"]["mag_ratios"]
    assert len(ratios) == 3 and all(math.isfinite(r) for r in ratios)
    # no training split to calibrate on: said before the model loads (it failed after, naming no remedy)
    monkeypatch.setattr(WorldModel, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(base[:-2] + ["--holdout", "1", "--cache", "magcache"]) == 2
    assert capsys.readouterr().err.endswith("--cache magcache calibrates on a training episode, as bench does: "
                                            f"{tmp_path / 'eps.zarr'}: --holdout 1.0 leaves no training episode of "
                                            "its 4; lower --holdout, or give its mag_ratios in a cache YAML\n")


def test_a_missing_store_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from worldcache.cli import main

    monkeypatch.setattr("worldcache.world_model.WorldModel.from_pretrained",
                        lambda *a, **k: pytest.fail("the model loaded before the store was checked"))
    for cmd in ("evaluate-model", "bench"):
        assert main([cmd, "--data", str(tmp_path / "nope.zarr")]) == 2, cmd
        assert f"no episode store at '{tmp_path / 'nope.zarr'}'" in capsys.readouterr().err, cmd
    # and so do bad cache names and settings (bench and tune)
    for args, why in ((["bench", "--cache", "warpdrive"], "unknown cache policy 'warpdrive'"),
                      # a pinned step count is checked as a tuned YAML's is (0 was dropped; -3 failed in numpy)
                      (["bench", "--cache", "worldcache:num_steps=0"], "worldcache: num_steps must be an integer "
                                                                         ">= 1, got 0"),
                      (["tune", "--cache", "worldcache:num_steps=2.5", "--min-psnr", "30"], "got 2.5"),
                      (["bench", "--cache", "worldcache:num_steps=abc"], "got 'abc'"),
                      (["bench", "--cache", "worldcache:threshold=-1"], "(set by the caller: threshold)"),
                      (["tune", "--cache", "warpdrive", "--min-psnr", "30"], "unknown cache policy 'warpdrive'"),
                      # nothing to measure: said before the model loads (bench wrote an empty table, tune failed after
                      # its run on an empty max())
                      (["bench", "--cache", "steps-only", "--reference-steps", "4", "--denoise-steps", "4"],
                       "nothing to measure against the reference (uncached, 4 steps)"),
                      (["tune", "--cache", "steps-only", "--reference-steps", "4", "--denoise-steps", "4",
                        "--min-psnr", "10"], "give --denoise-steps below 4, or a cache policy")):
        assert main(args) == 2, args
        assert why in capsys.readouterr().err, args


def test_cli_evaluate_model_real_cond_conditions_each_chunk_on_the_real_frames(tiny_ckpt, tmp_path, capsys):
    from worldcache.cli import main
    from worldcache.quality import frame_scores, heldout_windows
    from worldcache.train import load_episodes
    from worldcache.world_model import WorldModel

    random_store(tmp_path / "eps.zarr", 16)
    out = tmp_path / "q.json"
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"), "--holdout",
                 "0", "--chunks", "1", "2", "--denoise-steps", "2", "--real-cond", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    one, two = res["horizons"]["1"], res["horizons"]["2"]
    assert one["real_cond"] == {k: one[k] for k in ("psnr", "ssim", "psnr_moving")}  # chunk 1: the same prediction
    # chunk 2 by hand: from the simulator's last frame of chunk 1, with the rollout's seed for chunk 2
    model = WorldModel.from_pretrained(tiny_ckpt)
    starts, acts, reals, _ = heldout_windows(load_episodes(tmp_path / "eps.zarr")[0], 16, 16, 2.0)
    seeds = [derived_seed(0, w) for w in range(len(starts))]  # each window its own noise; chunk c draws + c
    first, _ = model.predict(starts, acts[:, :8], num_steps=2, seed=seeds)
    second, _ = model.predict(reals[:, 7], acts[:, 8:], num_steps=2, seed=[x + 1 for x in seeds])
    want = frame_scores(np.concatenate([first.numpy(), second.numpy()], axis=1), reals, starts)
    assert two["real_cond"] == {k: want[k] for k in ("psnr", "ssim", "psnr_moving")}
    assert two["real_cond"]["psnr"] != two["psnr"]  # open loop conditions chunk 2 on its own frame
    rolled, _ = model.rollout(starts, acts, num_steps=2, seed=seeds)  # the open loop: the same windows' seeds
    assert two["psnr"] == frame_scores(rolled.numpy(), reals, starts)["psnr"]
    printed = capsys.readouterr().out
    assert f"{'real cond':<12} {two['real_cond']['psnr']:>7.2f}" in printed and "teacher-forced" in printed


def test_cli_evaluate_model_reports_decoded_position_errors(tiny_ckpt, tmp_path, capsys):
    from worldcache.cli import main
    from worldcache.state_decoder import StateDecoder

    random_store(tmp_path / "eps.zarr", 8, states=True, seed=1)
    StateDecoder().save(tmp_path / "dec")  # untrained: the errors are large but must be computed and reported
    out = tmp_path / "q.json"
    args = ["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"), "--holdout", "0",
            "--chunks", "1", "--denoise-steps", "2"]
    assert main(args + ["--decoder", str(tmp_path / "dec"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    pos = res["horizons"]["1"]["positions"]
    for name in ("model", "repeat_last", "real"):
        for body in ("fingertip", "object"):
            assert math.isfinite(pos[name][body]["mean_cm"]) and pos[name][body]["mean_cm"] > 0
    assert len(res["follow"]) == 1 and res["follow"][0]["tip_end_cm"] > 0  # one chunk per window
    printed = capsys.readouterr().out
    assert "tip cm" in printed and "  chunk 1: " in printed
    assert main(args + ["--decoder", str(tmp_path)]) == 2  # a folder without a decoder is named, not ignored
    assert f"{tmp_path / 'state_decoder.json'}: missing" in capsys.readouterr().err
    # a decoder of other frames is refused before any rollout (it failed after all of them, losing them)
    from worldcache.state_decoder import StateDecoderConfig

    StateDecoder(StateDecoderConfig(height=40, width=48)).save(tmp_path / "small")
    assert main(args + ["--decoder", str(tmp_path / "small")]) == 2
    assert capsys.readouterr().err.endswith(f"{tmp_path / 'small'}: the state decoder reads 40x48 frames, the model "
                                            f"predicts 80x96\n")


def test_spearman_draws_resample_the_starts_alike_for_every_policy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    real, wm = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    draws = fidelity.spearman_draws(real, wm, draws=50, seed=7)
    # the same draws, one at a time: resample the episode columns, then Spearman of the policies' means
    idx = np.random.default_rng(7).integers(0, 5, (50, 5))
    expected = [spearmanr(real[:, i].mean(1), wm[:, i].mean(1))[0] for i in idx]
    np.testing.assert_allclose(draws, expected, rtol=1e-12)
    one = fidelity.spearman_draws(real[:, :1], wm[:, :1], draws=20)  # one start: every draw is the point figure
    np.testing.assert_allclose(one, spearmanr(real[:, 0], wm[:, 0])[0], rtol=1e-12)
    assert np.isnan(fidelity.spearman_draws(real, np.ones_like(wm), draws=3)).all()  # a tie throughout: undefined
    # a NaN return makes the point figure undefined: no interval either (draws that miss its episode are finite)
    nan = wm.copy()
    nan[2, 1] = np.nan
    assert np.isnan(fidelity.spearman_draws(real, nan, draws=50, seed=7)).all()
    assert fidelity.summarize([f"p{i}" for i in range(6)], real, real, np.zeros_like(real), {"none": nan},
                              {"seed": 7})["spearman_ci90"] == {"none": None}
    with pytest.raises(ValueError, match="draws"):
        fidelity.spearman_draws(real, wm[:, :4])


def _fidelity_result(real, wm):
    return {"policies": [{"policy": f"p{i}", "real_returns": r.tolist(), "wm_returns": {"none": w.tolist()}}
                         for i, (r, w) in enumerate(zip(real, wm))],
            "spearman": {"none": fidelity._spearman(real.mean(1), wm.mean(1))[0]}}


def test_compare_results_is_paired_and_refuses_other_starts():
    real = np.array([[0.0, 1, 2, 3], [1, 2, 3, 5], [3, 3, 4, 6], [4, 6, 5, 8]])  # policies ranked p0 < p1 < p2 < p3
    a = _fidelity_result(real, real + np.array([[0.0], [2], [0], [0]]))  # A swaps p1 and p2
    same = fidelity.compare_results(a, a, draws=200)
    assert same["difference_mean"] == 0 and same["difference_ci90"] == [0, 0] and same["p_b_lower"] == 0
    b = fidelity.compare_results(a, _fidelity_result(real, real), draws=200)  # B: the real returns themselves
    assert (b["a"], b["b"]) == (pytest.approx(1 - 6 * 2 / 60), 1.0)  # one swap of 4: Σd² = 2
    assert b["p_b_lower"] == 0 and b["p_b_higher"] > 0.9 and b["difference_ci90"][1] > 0 and b["draws"] == 200
    other = _fidelity_result(real + 1, real)  # other starts: other real returns
    with pytest.raises(ValueError, match="same starts"):
        fidelity.compare_results(a, other)
    with pytest.raises(ValueError, match="'worldcache'"):
        fidelity.compare_results(a, a, cache="worldcache")
    flat = _fidelity_result(real, np.ones_like(real))  # predicts one return for every policy
    with pytest.raises(ValueError, match="ties"):
        fidelity.compare_results(a, flat, draws=10)


def test_real_episodes_are_simulated_in_the_models_scene(small_ckpt, tmp_path, capsys):
    """A model trained on another scene's data (its spec's `scene`) is measured against the simulator in that scene:
    the benchmark's episodes, the calibration episode and the fidelity check's real frames are that camera's."""
    from worldcache.bench.episodes import bench_episodes, calibration_episode
    from worldcache.mujoco_data import SCENES

    v2 = {"camera": SCENES["v2"]["camera"]}
    spec = WorldModelSpec(height=32, width=40, chunk=4, action_dim=3, scene=v2)
    ep, cal = bench_episodes(spec, 1, 4)[0], calibration_episode(spec)
    for e, seed in ((ep, bench.HELDOUT_SEED), (cal, bench.CALIBRATION_SEED)):
        with PusherRenderer(32, 40, camera=v2["camera"], max_episode_steps=4) as r:
            want = real_rollout("mixed", seed, 4, renderer=r)
        np.testing.assert_array_equal(e["obs"], want["obs"])
        np.testing.assert_array_equal(e["actions"], want["actions"])
    old = bench_episodes(dataclasses.replace(spec, scene=None), 1, 4)[0]  # v1: the same motion, another view
    np.testing.assert_array_equal(old["actions"], ep["actions"])
    assert np.abs(old["obs"].astype(int) - ep["obs"]).mean() > 5
    # the fidelity check: the same real returns (the camera moves no body), the decoder reading the v2 frames
    moved = tmp_path / "v2"
    shutil.copytree(small_ckpt, moved)
    raw = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**raw, "scene": v2}))
    dec_json = json.loads((moved / "state_decoder.json").read_text())  # a decoder of the v2 view reads them
    (moved / "state_decoder.json").write_text(json.dumps({**dec_json, "scene": v2}))
    a, b = (evaluate_policies(c, episodes=1, steps=4, num_steps=2, cache=("none",), policies=["away"], verbose=False)
            for c in (small_ckpt, moved))
    assert b["policies"][0]["real_return"] == a["policies"][0]["real_return"]
    with PusherRenderer(32, 40, camera=v2["camera"], max_episode_steps=4) as r:
        real = real_rollout(make_control("away", None, r, 10_000), 10_000, 4, renderer=r)
    dec = StateDecoder.load(small_ckpt)
    assert b["policies"][0]["decoded_real_return"] == pytest.approx(float(dec.rewards(real["obs"][1:],
                                                                                      real["actions"]).sum()), rel=1e-9)
    assert b["policies"][0]["decoded_real_return"] != pytest.approx(a["policies"][0]["decoded_real_return"], rel=1e-6)
    # a make-data store is read only by a model of its scene: v2's episodes are refused to the v1 model, by the
    # benchmark and by evaluate-model, and taken by the v2 one
    from worldcache.mujoco_data import generate

    generate(tmp_path / "v2.zarr", episodes=1, steps=4, height=32, width=40, scene="v2", progress=False)
    with pytest.raises(ValueError, match=r"shows another scene than the model's .*'camera'.*make-data --scene"):
        bench_episodes(dataclasses.replace(spec, scene=None), 1, 4, data=tmp_path / "v2.zarr", holdout=0)
    assert len(bench_episodes(spec, 1, 4, data=tmp_path / "v2.zarr", holdout=0)) == 1
    from worldcache import cli

    argv = ["evaluate-model", "--data", str(tmp_path / "v2.zarr"), "--holdout", "0", "--chunks", "1",
            "--denoise-steps", "2", "--windows", "1", "--moving", "0"]
    assert cli.main(["evaluate-model", "--checkpoint", str(small_ckpt), *argv[1:]]) == 2
    assert "shows another scene than the model's" in capsys.readouterr().err
    rc = cli.main(["evaluate-model", "--checkpoint", str(moved), *argv[1:]])
    assert rc == 0, capsys.readouterr().err


def test_a_state_decoder_of_another_scene_is_refused_where_it_would_read_the_models_frames(small_ckpt, tmp_path,
                                                                                         capsys):
    """A decoder records the view it learned (`StateDecoderConfig.scene`, from a make-data store); reading a model's
    frames through another camera would read positions in the wrong view: refused by evaluate-policies, evaluate-
    model and the env, with the difference named. The same size (80x96 in both scenes) passed before."""
    import shutil

    import gymnasium as gym

    import worldcache.envs  # noqa: F401
    from worldcache import cli
    from worldcache.scene import SCENES
    from worldcache.world_model import CheckpointError

    v2 = tmp_path / "v2_decoder"
    StateDecoder(StateDecoderConfig(height=32, width=40, channels=8, keypoints=4, hidden=16,
                                    scene={"camera": SCENES["v2"]["camera"]})).save(v2)
    assert StateDecoder.load(v2).config.scene == {"camera": SCENES["v2"]["camera"]}
    with pytest.raises(ValueError, match=r"v2_decoder: the state decoder learned another scene .*'camera'"):
        evaluate_policies(small_ckpt, episodes=1, steps=4, num_steps=2, decoder=v2, verbose=False)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(small_ckpt, ckpt)
    for f in v2.iterdir():
        shutil.copy(f, ckpt / f.name)
    with pytest.raises(CheckpointError, match="learned another scene .*, or give the env a reward_fn="):
        gym.make("WorldCache-Cosmos-v0", checkpoint=str(ckpt), num_steps=2)
    data = tmp_path / "data.zarr"
    from worldcache.mujoco_data import generate
    generate(data, episodes=1, steps=8, height=32, width=40, progress=False)
    assert cli.main(["evaluate-model", "--checkpoint", str(small_ckpt), "--data", str(data), "--decoder", str(v2),
                     "--holdout", "0", "--chunks", "1", "--windows", "1", "--denoise-steps", "2"]) == 2
    assert "learned another scene" in capsys.readouterr().err
    # the checkpoint's own decoder (a DiT trained on a new scene before its decoder stage): the pixel figures stand
    assert cli.main(["evaluate-model", "--checkpoint", str(ckpt), "--data", str(data), "--holdout", "0", "--chunks",
                     "1", "--windows", "1", "--denoise-steps", "2", "--json", str(tmp_path / "q.json")]) == 0
    err = capsys.readouterr().err
    assert "learned another scene" in err and "its position figures are left out" in err
    assert "follow" not in json.loads((tmp_path / "q.json").read_text())
    assert cli.main(["evaluate-model", "--checkpoint", str(small_ckpt), "--data", str(data), "--holdout", "0",
                     "--chunks", "1", "--windows", "1", "--denoise-steps", "2", "--json",
                     str(tmp_path / "v1.json")]) == 0
    assert "follow" in json.loads((tmp_path / "v1.json").read_text())  # its own v1 decoder: read


def test_a_model_of_other_actions_is_told_to_bring_its_own_episodes(tmp_path, capsys, monkeypatch):
    """A converted Cosmos model takes 7-d actions; simulated Pusher's are 3-d: bench, tune, calibrate and
    evaluate-policies say so before the model loads (bench said `actions must have shape (batch, 12, 7), got (1, 12,
    3)` after it), and bench points to --data."""
    from worldcache.cli import main

    A = 7
    WorldModel.build(WorldModelSpec(height=16, width=24, chunk=4, num_steps=2, action_dim=A, action_low=[-1.0] * A,
                                    action_high=[1.0] * A), hidden_heads=2, head_dim=16, num_layers=2,
                     vae_base_dim=8).save_pretrained(tmp_path / "m7")
    monkeypatch.setattr("worldcache.world_model.WorldModel.from_pretrained",
                        lambda *a, **k: pytest.fail("the model loaded before its actions were checked"))
    ck = ["--checkpoint", str(tmp_path / "m7")]
    said = "takes 7-d actions, and the simulated Pusher episodes drive it with 3-d fingertip deltas: "
    for args, then in ((["bench", *ck], "give --data, an episode store of this model's own (frames, actions)"),
                       (["tune", *ck, "--min-psnr", "30"], "give --data"),
                       (["calibrate", "teacache", *ck], "calibrate runs on simulated Pusher episodes only"),
                       (["evaluate-policies", *ck], "evaluate-policies ranks Pusher's control policies only")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert said + then in err and err.count("\n") == 1, (args, err)


def test_a_busy_machine_is_said(monkeypatch):
    """Decision times count in the compute speedup and are measured during each row: other work on this process's
    cores during the run (their busy time less ours, over their time, above 25 %; where /proc/stat is not read, a
    load above 1.5x the cores) is warned of and recorded in the result's machine."""
    import os

    from worldcache.bench import measure
    from worldcache.bench.measure import busy

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    at = lambda busy_s, own, wall, load=0.0: {"cores_busy": busy_s, "own": own, "wall": wall, "load": load}  # noqa: E731
    # 10 s on 2 cores = 20 core-seconds; we used 14 of the 19 busy ones: others took 5 (25 %: not said), or 6
    assert busy(at(100.0, 0.0, 0.0), at(119.0, 14.0, 10.0)) is None
    assert busy(at(100.0, 0.0, 0.0), at(120.0, 14.0, 10.0)) == (
        "warning: other work took 30 % of the 2 cores this process may use: other work shared the cores, so "
        "wall-clock and compute speedups (decision times count) are unreliable; run it alone")
    # the load average is not read where /proc/stat is: a host's load on other cores is not ours
    assert busy(at(100.0, 0.0, 0.0, load=40.0), at(110.0, 10.0, 10.0, load=40.0)) is None
    # no /proc/stat: the load average, before or after, above 1.5x the cores
    assert busy(at(None, 0.0, 0.0, 2.9), at(None, 10.0, 10.0, 3.0)) is None
    assert busy(at(None, 0.0, 0.0, 5.25), at(None, 10.0, 10.0, 1.0)).startswith(
        "warning: the machine was busy (load average 5.2 on 2 cores)")
    assert busy(at(None, 0.0, 0.0, None), at(None, 1.0, 1.0, None)) is None  # no load average either
    # /proc/stat read for the cores of this process only: the lines of the others are not summed
    stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 1 2 3 100 7 1 1 1 0 0\ncpu1 10 0 0 5 5 0 0 0 0 0\ncpu2 50 0 0 0 0 0 0 0\n"
    monkeypatch.setattr(measure, "Path", lambda p: type("P", (), {"read_text": lambda self: stat})())
    monkeypatch.setattr(os, "sysconf", lambda name: 10)
    assert measure._cores_busy({0, 1}) == (1 + 2 + 3 + 1 + 1 + 1 + 10) / 10
    assert measure._cores_busy({0, 3}) is None  # a core without its line

def test_a_control_policy_of_ones_own_is_ranked_beside_the_built_in_ones(small_ckpt, tmp_path, monkeypatch):
    """``module:factory`` (``factory(env, rng)`` -> ``obs (23,) -> action (3,)``, per episode): its real return is
    the simulator's for exactly its actions, and its rows carry the spec as their name."""
    (tmp_path / "mypol.py").write_text(
        "import numpy as np\n\n\ndef toward_x(env, rng):\n"
        "    push = np.array([0.5, 0.0, 0.0], np.float32) * rng.uniform(0.5, 1.0)\n"
        "    return lambda obs: push\n\n\nnot_a_function = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = evaluate_policies(small_ckpt, episodes=1, steps=4, num_steps=2, cache=("none",),
                            policies=["push", "mypol:toward_x"], verbose=False)
    mine = res["policies"][1]
    assert mine["policy"] == "mypol:toward_x"
    renderer = PusherRenderer(32, 40, max_episode_steps=4)
    try:  # the same episode by hand: the factory's policy, seeded as a named policy is (env seed 10000)
        import mypol

        by_hand = real_rollout(mypol.toward_x(renderer, np.random.default_rng([10_000, 1])), 10_000, 4,
                               renderer=renderer)
    finally:
        renderer.close()
    assert mine["real_return"] == pytest.approx(float(by_hand["rewards"].sum()), rel=1e-6)
    for spec, why in (("mypol:not_a_function", "not_a_function is not callable"),
                      ("mypol:missing", "mypol has no missing"),
                      ("nosuchmod:f", "cannot import nosuchmod (No module named 'nosuchmod'; a file of your own: "
                                      "PYTHONPATH=its/folder)")):
        with pytest.raises(ValueError, match=re.escape(f"control policy {spec!r}: {why}")):
            parse_policy(spec)
