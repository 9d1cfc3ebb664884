"""Benchmark and policy-evaluation fidelity on a tiny random checkpoint: they run end to end, the JSON has the
documented keys with finite numbers, the figures are written, and the fidelity result has its correlation keys.
Nothing here checks timings or quality values (a random model on a shared machine)."""
import json
import math

import numpy as np
import pytest
import torch

from worldcache import bench, fidelity
from worldcache.bench import METRICS, bench_configs, run_bench
from worldcache.cache import load_policy
from worldcache.fidelity import EQUAL_COST, EQUAL_NORM, POLICY_SETS, evaluate_policies, make_control, parse_policy
from worldcache.mujoco_data import PusherRenderer, real_rollout
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


def test_default_grid_covers_every_policy_and_the_ablation():
    configs = bench_configs()
    names = {c.policy for c in configs if c.group == "policy"}
    assert names == {"none", "worldcache", "dicache", "fora", "teacache", "easycache", "fbcache", "fastercache",
                     "magcache", "taylorseer"}
    assert sum(c.policy == "worldcache" and c.group == "policy" for c in configs) == 3
    assert sorted(c.label for c in configs if c.group == "ablation") == [
        "worldcache +warp", "worldcache -all", "worldcache -blend", "worldcache -motion_adaptive",
        "worldcache -phase_aware", "worldcache -saliency", "worldcache paper defaults"]
    paper = next(c for c in configs if c.label == "worldcache paper defaults").build().config
    assert (paper.threshold, paper.ret_ratio, paper.warp, paper.warp_check) == (0.08, 0.2, True, False)
    for c in configs:  # every configuration builds (validated settings)
        c.build().detach()
    assert [c.label for c in bench_configs(["worldcache"], ablation=False, grid=False)] == ["worldcache"]


@pytest.mark.slow
def test_run_bench_writes_json_and_figures(tiny_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    res = run_bench(tiny_ckpt, policies=["none", "worldcache"], episodes=1, chunks=1, num_steps=4, ablation=False,
                    grid=False, json_out=out, verbose=False)
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["rows"]] == ["none", "worldcache"]
    for row in data["rows"]:
        assert {"policy", "config"} <= set(row) and set(METRICS) <= set(row)
        for k in ("denoising_speedup", "env_step_speedup", "computed_fraction", "overhead_ms", "decision_ms", "psnr",
                  "ssim", "psnr_retention", "ssim_retention", "ssim_vs_uncached"):
            assert isinstance(row[k], float) and math.isfinite(row[k]), (row["policy"], k, row[k])
        assert 0 <= row["computed_fraction"] <= 1
    wc = data["rows"][1]
    assert wc["config"] == load_policy("worldcache").config.as_dict()  # the row records the settings it ran
    # "none" re-runs the reference: identical frames (PSNR infinite -> null), retention exactly 1
    none = data["rows"][0]
    assert none["psnr_vs_uncached"] is None and none["psnr_retention"] == 1.0
    assert set(data["machine"]) >= {"cpu", "threads", "torch", "device", "date"}
    assert data["at_worldcache_speed"]["speedup"] == wc["denoising_speedup"]
    for f in ("bench_pareto.png", "bench_strip.png", "bench_strip.gif"):
        assert (tmp_path / f).stat().st_size > 0
    assert res["rows"][1]["label"] == "worldcache"
    assert bench.markdown_table(res).splitlines()[1].startswith("| worldcache |")


def test_evaluate_policies_ranks_the_equal_cost_set_end_to_end(small_ckpt, tmp_path):
    assert parse_policy("scripted:0.3") == ("scripted", 0.3, "scripted noise=0.3")
    res = evaluate_policies(small_ckpt, episodes=1, steps=4, num_steps=2, cache=("none", "worldcache"),
                            verbose=False, json_out=tmp_path / "f.json")
    assert [p["policy"] for p in res["policies"]] == [parse_policy(p)[2] for p in POLICY_SETS["equal-cost"]]
    assert len(res["policies"]) >= 6 and res["equal_control_cost"] is True
    for key in ("spearman", "spearman_all", "spearman_without_ctrl", "same_ranking"):
        assert set(res[key]) == {"none", "worldcache"}
    assert "spearman_decoded_real" in res and res["same_ranking"]["none"] is True
    for p in res["policies"]:  # the same control cost, computed exactly from the actions: 0.1 |a|^2 per step
        assert p["ctrl_return"] == pytest.approx(-0.1 * EQUAL_NORM ** 2 * 4, rel=1e-6)
        assert math.isfinite(p["real_return"]) and math.isfinite(p["decoded_real_return"])
        assert p["real_return"] <= p["ctrl_return"] + 1e-6
        assert all(math.isfinite(v) for v in p["wm_return"].values())
    assert len({round(p["real_return"], 6) for p in res["policies"]}) == len(res["policies"])  # spread out
    assert len(fidelity.markdown_table(res).splitlines()) == len(res["policies"]) + 2
    assert json.loads((tmp_path / "f.json").read_text())["spearman"].keys() == res["spearman"].keys()
    with pytest.raises(ValueError, match="multiple"):
        evaluate_policies(small_ckpt, episodes=1, steps=5, verbose=False)
    with pytest.raises(ValueError, match="unknown control policy"):
        evaluate_policies(small_ckpt, episodes=1, steps=4, policies=["teleport"], verbose=False)


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
                 "--no-ablation", "--episodes", "1", "--chunks", "1", "--denoise-steps", "3", "--first-seed", "20000",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["env_seeds"] == [20000]
    (row,) = data["rows"]
    assert row["label"] == "worldcache threshold=0.2 warp=True"
    assert row["config"]["threshold"] == 0.2 and row["config"]["warp"] is True
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:threshold"]) == 2
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:thresold=0.1"]) == 2
    assert "thresold" in capsys.readouterr().err


def test_equal_speed_comparison_interpolates_and_never_extrapolates():
    row = lambda policy, label, x, q: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                       "denoising_speedup": x, "psnr_vs_uncached": q}
    rows = [row("none", "none", 1.0, None), row("worldcache", "worldcache", 2.0, 55.0),
            row("teacache", "a", 1.5, 60.0), row("teacache", "b", 2.5, 50.0), row("fora", "c", 2.2, 52.0),
            row("fora", "d", 3.0, 45.0), row("dicache", "e", 1.5, 62.0), row("dicache", "f", 1.95, 51.0)]
    cmp = bench.equal_speed_comparison(rows)
    assert cmp["speedup"] == 2.0 and cmp["psnr_vs_uncached"] == 55.0
    assert cmp["baselines"]["teacache"]["psnr_vs_uncached"] == pytest.approx(55.0)
    assert not cmp["baselines"]["teacache"]["nearest"]
    assert cmp["baselines"]["fora"] == {"psnr_vs_uncached": None, "nearest": False, "min_speedup": 2.2,
                                        "max_speedup": 3.0}  # 10 % away: not equal speed
    assert cmp["baselines"]["dicache"]["psnr_vs_uncached"] == 51.0 and cmp["baselines"]["dicache"]["nearest"]
    assert set(cmp["baselines"]) == {"teacache", "fora", "dicache"}
    assert bench.equal_speed_comparison(rows[2:]) is None  # no WorldCache row


def test_strip_shows_the_baseline_closest_to_uncached_at_a_similar_speed():
    row = lambda policy, label, x, q, ret: {"policy": policy, "label": label, "group": "policy",  # noqa: E731
                                            "denoising_speedup": x, "psnr_vs_uncached": q, "psnr_retention": ret}
    rows = [row("worldcache", "worldcache", 2.0, 55.0, 1.0), row("teacache", "smooth", 2.1, 40.0, 1.02),
            row("fora", "faithful", 1.8, 52.0, 1.0), row("fbcache", "too slow", 1.2, 70.0, 1.0)]
    frames = {r["label"]: r["label"] for r in rows}
    names = [name for name, _ in bench.strip_panels(rows, "u", frames, "gt")]
    assert names == ["uncached", "WorldCache 2.00x", "faithful 1.80x", "ground truth"]


def test_cli_evaluate_model_reports_moving_psnr_over_each_horizon(tiny_ckpt, tmp_path, capsys):
    from worldcache.cli import main
    from worldcache.rollouts.store import EpisodeStore

    st = EpisodeStore.create(tmp_path / "eps.zarr")
    rng = np.random.default_rng(0)
    for e in range(2):
        st.write_episode(f"ep{e}", rng.integers(0, 256, (17, 64, 80, 3), dtype=np.uint8),
                         rng.uniform(-1, 1, (16, 3)).astype(np.float32), np.zeros(16, np.float32),
                         np.zeros(16, bool), np.zeros(16, bool))
    out = tmp_path / "q.json"
    assert main(["evaluate-model", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "eps.zarr"),
                 "--holdout", "0", "--chunks", "1", "2", "--denoise-steps", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["windows"] == 2 and list(res["horizons"]) == ["1", "2"]
    for c, r in res["horizons"].items():
        assert r["frames"] == 2 * int(c) * 8
        for k in ("psnr", "ssim", "psnr_moving", "psnr_repeat_last", "ssim_repeat_last", "psnr_moving_repeat_last"):
            assert math.isfinite(r[k]), (c, k)
        assert 0.9 < r["moving_pixel_share"] <= 1  # random frames: nearly every pixel differs from the start
    assert "moving PSNR" in capsys.readouterr().out
