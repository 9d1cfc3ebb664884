"""`worldcache tune` on a tiny random checkpoint (1 tuning episode, 2 step counts, 2 thresholds), and the YAML it
writes taken as is by the env, the rollout's identity (what `worldcache rollout` records and runs) and the bench."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import worldcache  # noqa: F401  (registers the env)
from worldcache.bench import TUNING_SEED
from worldcache.bench.tune import choose, tuned_yaml
from worldcache.cache import load_cache, load_policy, make_policy
from worldcache.cache.config import ConfigError
from worldcache.world_model import WorldModel, WorldModelSpec


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune_ckpt")
    model = WorldModel.build(WorldModelSpec(), hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    with torch.no_grad():  # the action embedder starts as a no-op; give it weight so actions matter
        for p in model.dit.cond_embedder.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(path)
    return path


def test_a_cache_yaml_may_carry_num_steps(tmp_path):
    (tmp_path / "a.yaml").write_text("policy: worldcache\nthreshold: 0.2\nnum_steps: 18\n")
    policy, steps = load_cache(tmp_path / "a.yaml")
    assert (policy.name, policy.config.threshold, steps) == ("worldcache", 0.2, 18)
    with pytest.raises(ConfigError, match="num_steps=18"):
        load_policy(tmp_path / "a.yaml")  # the policy alone would drop the tuned step count
    assert load_cache("worldcache")[1] is None and load_cache("teacache", threshold=0.3)[0].config.threshold == 0.3
    for bad in ("0", "1.5", "true"):
        (tmp_path / "b.yaml").write_text(f"policy: none\nnum_steps: {bad}\n")
        with pytest.raises(ConfigError, match="num_steps must be an integer"):
            load_cache(tmp_path / "b.yaml")


def _chosen(policy, label, config, num_steps, psnr=31.234):
    # a bench row as tune's choice hands it to tuned_yaml (the keys tuned_yaml reads)
    return {"policy": policy, "label": label, "config": config, "num_steps": num_steps, "psnr_vs_uncached": psnr,
            "compute_speedup": 2.5, "denoising_speedup": 2.104, "computed_fraction": 0.4}


def test_tuned_yaml_writes_the_chosen_rows_settings(tmp_path):
    # a numpy scalar (a threshold scaled on a numpy grid) is written as a plain YAML float
    row = _chosen("worldcache", "fora threshold=0.3 steps=18", {"threshold": np.float64(0.3), "saliency": False}, 18)
    text = tuned_yaml(row, "RULE", "SRC", 35)
    head = ("# worldcache tune: RULE, on SRC.\n# Chosen: FORA-style threshold=0.3 steps=18: compute speedup 2.50x "
            "(wall clock 2.10x), PSNR vs. uncached 35 steps 31.23 dB, computed fraction 0.40.\n")
    assert text.startswith(head)
    data = yaml.safe_load(text)
    assert data == {"policy": "worldcache", "threshold": 0.3, "saliency": False, "num_steps": 18}
    assert list(data) == ["policy", "threshold", "saliency", "num_steps"]  # the policy first, as a reader expects
    # a search on a shared machine says so (its decision times, and so its compute speedups, read high)
    assert tuned_yaml(row, "RULE", "SRC", 35, busy="warning: BUSY").startswith(head + "# Measured on a shared "
                                                                               "machine: warning: BUSY\n")

    # steps-only (uncached at fewer steps) is written as policy none at those steps; identical frames say so
    text = tuned_yaml(_chosen("steps-only", "steps-only steps=12", {}, 12, psnr=None), "RULE", "SRC", 35)
    assert yaml.safe_load(text) == {"policy": "none", "num_steps": 12}
    assert "PSNR vs. uncached 35 steps identical," in text

    # every setting the chosen row ran with comes back from the file (a tuple written as a YAML list)
    for name, over, read, steps in (("worldcache", {"threshold": 0.3, "saliency": False}, {}, 18),
                                    ("teacache", {"coefficients": (2.0, 0.5)}, {"coefficients": [2.0, 0.5]}, 9)):
        config = {**make_policy(name).settings(), **over}
        (tmp_path / "t.yaml").write_text(tuned_yaml(_chosen(name, name, config, steps), "RULE", "SRC", 35))
        policy, got_steps = load_cache(tmp_path / "t.yaml")
        assert (policy.name, policy.settings(), got_steps) == (name, {**config, **read}, steps)


@pytest.mark.slow
def test_tune_writes_a_yaml_that_env_rollout_and_bench_take(tiny_ckpt, tmp_path, capsys):
    from worldcache.bench import tune
    from worldcache.cli import main
    from worldcache.rollouts.config import RolloutConfig
    from worldcache.rollouts.identity import checkpoint_files, rollout_attrs

    out = tmp_path / "tuned.yaml"
    res = tune(tiny_ckpt, policies=["worldcache"], denoise_steps=[4, 2], threshold_scales=[1.0, 2.0], min_psnr=0.0,
               out=out, episodes=1, chunks=1, reference_steps=4, json_out=tmp_path / "search.json", verbose=False)
    rows = res["bench"]["rows"]
    assert sorted((r["label"], r["num_steps"]) for r in rows) == [
        ("steps-only steps=2", 2), ("worldcache", 4), ("worldcache steps=2", 2), ("worldcache threshold=0.24", 4),
        ("worldcache threshold=0.24 steps=2", 2)]
    assert res["bench"]["settings"]["env_seeds"] == [TUNING_SEED]  # disjoint from the benchmark's 10000+
    best = res["choice"]
    assert best in rows
    assert best["compute_speedup"] == max(r["compute_speedup"] for r in rows)  # every row passes a 0 dB floor
    data = yaml.safe_load(out.read_text())
    assert data["num_steps"] == best["num_steps"] == 2
    assert out.read_text().startswith("# worldcache tune: the fastest")
    policy, steps = load_cache(out)
    assert steps == best["num_steps"] and policy.name == ("none" if best["policy"] == "steps-only" else "worldcache")

    env = gym.make("WorldCache-Cosmos-v0", checkpoint=str(tiny_ckpt), cache=str(out), reward_fn=lambda f, a: 0.0)
    assert env.unwrapped.sim.num_steps == steps and env.unwrapped.sim.policy.name == policy.name
    spec = env.unwrapped.sim.spec
    env.reset(seed=0, options={"frame": np.zeros((spec.height, spec.width, 3), np.uint8)})
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["calls"] == steps  # the prediction ran at the tuned step count
    env.close()
    with pytest.warns(UserWarning, match=rf"num_steps=3 overrides the {steps} steps the cache YAML .* was tuned at"):
        assert gym.make("WorldCache-Cosmos-v0", checkpoint=str(tiny_ckpt), cache=str(out), num_steps=3,
                        reward_fn=lambda f, a: 0.0).unwrapped.sim.num_steps == 3  # an explicit num_steps wins, said

    cfg = RolloutConfig.load({"checkpoint": str(tiny_ckpt), "cache": str(out)})
    attrs = rollout_attrs(cfg, checkpoint_files(tiny_ckpt), tiny_ckpt)
    assert attrs["env"]["num_steps"] == steps and attrs["cache"]["policy"] == policy.name

    bench_json = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(tiny_ckpt), "--cache", str(out), "--no-ablation", "--episodes", "1",
                 "--chunks", "1", "--reference-steps", "4", "--json", str(bench_json)]) == 0
    (row,) = json.loads(bench_json.read_text())["rows"]
    assert (row["label"], row["num_steps"]) == (f"tuned steps={steps}", steps)

    assert main(["tune", "--checkpoint", str(tiny_ckpt), "--denoise-steps", "2", "--threshold-scales", "1",
                 "--reference-steps", "2", "--episodes", "1", "--chunks", "1", "--min-speedup", "1000",
                 "--out", str(tmp_path / "never.yaml")]) == 2
    assert "no configuration reaches 1000" in capsys.readouterr().err
    assert not (tmp_path / "never.yaml").exists()
    # a spec as bench takes it: that variant, its settings in the YAML written (and steps-only, and a name once)
    assert main(["tune", "--checkpoint", str(tiny_ckpt), "--cache", "worldcache:saliency=false,threshold=0.3",
                 "worldcache:saliency=false,threshold=0.3", "--denoise-steps", "4", "2", "--reference-steps", "4",
                 "--episodes", "1", "--chunks", "1", "--min-speedup", "1", "--out", str(tmp_path / "v.yaml"),
                 "--json", str(tmp_path / "v.json")]) == 0
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    assert sorted(r["label"] for r in rows) == ["steps-only steps=2", "worldcache saliency=False threshold=0.3",
                                                "worldcache saliency=False threshold=0.3 steps=2"]
    assert [(r["config"]["saliency"], r["config"]["threshold"]) for r in rows if r["policy"] == "worldcache"] == \
        [(False, 0.3)] * 2
    choice = choose(rows, min_speedup=1)  # the row tune chose: its policy, every setting and its steps written
    assert yaml.safe_load((tmp_path / "v.yaml").read_text()) == {
        "policy": "none" if choice["policy"] == "steps-only" else "worldcache", **choice["config"],
        "num_steps": choice["num_steps"]}
