"""TeaCache calibration: the polynomial fit pinned on synthetic data, and `worldcache calibrate teacache` end to end
on a tiny checkpoint (real Pusher tuning episodes, real rollouts, a YAML the policy loads)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from worldcache import calibrate
from worldcache.cache import load_policy
from worldcache.cache.base import ModelCall
from worldcache.calibrate import ChangeRecorder, fit_rescale
from worldcache.cli import main
from worldcache.world_model import WorldModel, WorldModelSpec


def test_fit_recovers_a_degree_4_polynomial_exactly():
    x = np.linspace(0.0, 0.6, 25)
    y = 3.0 * x ** 4 - 2.0 * x ** 3 + 0.5 * x ** 2 + 1.5 * x + 0.01
    coefficients, rmse = fit_rescale(x, y)
    np.testing.assert_allclose(coefficients, [3.0, -2.0, 0.5, 1.5, 0.01], rtol=0, atol=1e-8)
    assert rmse < 1e-10


def test_fit_residual_is_the_rms_of_what_the_polynomial_cannot_follow():
    # a degree-1 fit of y = x^2 on x = -1, 0, 1: the line y = 2/3, residuals 1/3, -2/3, 1/3 -> rms sqrt(2) / 3
    coefficients, rmse = fit_rescale([-1.0, 0.0, 1.0], [1.0, 0.0, 1.0], degree=1)
    np.testing.assert_allclose(coefficients, [0.0, 2 / 3], atol=1e-12)
    assert rmse == pytest.approx(np.sqrt(2) / 3, abs=1e-12)


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match="more than 4 distinct"):
        fit_rescale([0.1, 0.2, 0.2, 0.3, 0.4], [1, 2, 3, 4, 5])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib_ckpt")
    spec = WorldModelSpec(height=32, width=40, chunk=4, num_steps=6, name="tiny-calibration")
    model = WorldModel.build(spec, hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)
    model.save_pretrained(path)
    return path


def test_calibrate_command_writes_a_fitted_polynomial_the_policy_loads(tiny_ckpt, tmp_path, capsys, monkeypatch):
    recorders = []  # the command's recorder, kept: the YAML must be the fit of exactly the pairs it recorded

    class KeptRecorder(ChangeRecorder):
        def __init__(self):
            super().__init__()
            recorders.append(self)

    monkeypatch.setattr(calibrate, "ChangeRecorder", KeptRecorder)
    out = tmp_path / "teacache.yaml"
    out.write_text("policy: teacache\nthreshold: 0.3\nret_ratio: 0.2\ncoefficients: [1.0, 0.0]\n")
    assert main(["calibrate", "teacache", "--checkpoint", str(tiny_ckpt), "--episodes", "1", "--chunks", "2",
                 "--denoise-steps", "6", "--first-seed", "20000", "--out", str(out)]) == 0
    printed, warned = capsys.readouterr()
    data = yaml.safe_load(out.read_text())
    cal = data["calibration"]
    assert (data["threshold"], data["ret_ratio"]) == (0.3, 0.2)  # the file's other settings are kept
    assert cal["model"] == "tiny-calibration" and cal["env_seeds"] == [20000] and cal["num_steps"] == 6
    (rec,) = recorders
    assert cal["pairs"] == len(rec.x) == 2 * 5  # 2 chunks x (6 calls - 1) consecutive pairs, one branch, one sample
    # what is written is the degree-4 fit of (input change, output change), in that order, as the code rounds it
    coefficients, rmse = fit_rescale(rec.x, rec.y, 4)
    assert data["coefficients"] == [float(f"{c:.6g}") for c in coefficients]
    assert cal["fit_rmse"] == round(rmse, 6) and cal["degree"] == 4
    assert cal["input_range"] == [round(min(rec.x), 6), round(max(rec.x), 6)]
    assert len(cal["date"]) == 10
    assert f"fit RMSE {cal['fit_rmse']} on 10 call pairs" in printed
    # 10 pairs for 5 coefficients: said to be too few (5 pairs made an exact fit, reported as RMSE 0.0)
    assert "warning: 10 (input, output) change pairs for 5 coefficients: the polynomial interpolates them" in warned
    policy = load_policy(out)
    assert policy.config.coefficients == data["coefficients"] and policy.config.calibration == cal


class ScriptedStack:
    """One model call's block stack: the stack returns its input, the head adds 1 (so the output's relative change
    differs from the stack output's), `modulated_input` is scripted. (B, 3, 2) tensors, constant per sample."""

    def __init__(self, x, mod):
        self.x = torch.tensor(x, dtype=torch.float64).view(-1, 1, 1).expand(-1, 3, 2)
        self.mod = torch.tensor(mod, dtype=torch.float64).view(-1, 1, 1).expand(-1, 3, 2)
        self.ctx = object()
        self.dit = type("Head", (), {"head": staticmethod(lambda h, ctx: h + 1)})()

    def __call__(self, h, start=0, end=None):
        return h

    def modulated_input(self):
        return self.mod


def test_recorder_measures_the_modulated_input_and_model_output_changes():
    # two samples, the cond and uncond branches interleaved as the loop calls them; head output = x + 1.
    # cond:   mod (1, 2) -> (1.2, 3): x 0.2, 0.5; output (3, 5) -> (3.75, 8.75): y 0.25, 0.75
    # uncond: mod (10, 20) -> (11, 25): x 0.1, 0.25; output (2, 2) -> (3, 4): y 0.5, 1.0
    calls = [("cond", 0, [2.0, 4.0], [1.0, 2.0]), ("uncond", 0, [1.0, 1.0], [10.0, 20.0]),
             ("cond", 1, [2.75, 7.75], [1.2, 3.0]), ("uncond", 1, [2.0, 3.0], [11.0, 25.0])]
    rec = ChangeRecorder()
    rec.begin(2)
    for branch, step, x, mod in calls:
        stack = ScriptedStack(x, mod)
        h = rec.run_stack(stack, ModelCall.new(2, step=step, num_steps=2, branch=branch))
        assert h is stack.x  # uncached: the stack's own output goes on
    # one pair per sample and branch after its first call, in call then sample order
    assert rec.x == pytest.approx([0.2, 0.5, 0.1, 0.25], abs=1e-12)
    assert rec.y == pytest.approx([0.25, 0.75, 0.5, 1.0], abs=1e-12)


def test_recorder_records_pairs_on_the_real_model(tiny_ckpt):
    # the model's loop gives the recorder its stack, modulated input and head: one pair per consecutive call pair
    model = WorldModel.from_pretrained(tiny_ckpt)
    rec = ChangeRecorder()
    frame = torch.zeros(1, 32, 40, 3, dtype=torch.uint8)
    model.predict(frame, torch.zeros(1, 4, model.spec.action_dim), policy=rec, num_steps=5)
    assert len(rec.x) == len(rec.y) == 4
    assert all(np.isfinite(rec.x)) and all(v > 0 for v in rec.y)


def test_calibrate_refuses_another_policys_yaml(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "wc.yaml"
    out.write_text("policy: worldcache\n")
    assert main(["calibrate", "teacache", "--checkpoint", str(tiny_ckpt), "--episodes", "1", "--chunks", "1",
                 "--denoise-steps", "6", "--out", str(out)]) == 2
    assert "not teacache" in capsys.readouterr().err
    # its other settings are kept, so they are checked first: a key TeaCache has not was written, then refused on load
    out.write_text("policy: teacache\nbogus_key: 3\n")
    assert main(["calibrate", "teacache", "--checkpoint", str(tiny_ckpt), "--episodes", "1", "--chunks", "1",
                 "--denoise-steps", "6", "--out", str(out)]) == 2
    assert "unknown key(s) ['bogus_key']" in capsys.readouterr().err and "bogus_key: 3" in out.read_text()
    # but a template leaving the two keys calibrate writes empty is filled in
    out.write_text("policy: teacache\nthreshold: 0.3\ncoefficients: []\n")
    assert main(["calibrate", "teacache", "--checkpoint", str(tiny_ckpt), "--episodes", "1", "--chunks", "1",
                 "--denoise-steps", "6", "--out", str(out)]) == 0
    filled = yaml.safe_load(out.read_text())
    assert filled["threshold"] == 0.3 and len(filled["coefficients"]) == 5


def test_shipped_teacache_yaml_is_calibrated_and_says_how():
    config = load_policy("teacache").config
    cal = config.calibration
    assert {"model", "checkpoint", "episodes", "env_seeds", "num_steps", "pairs", "fit_rmse", "date"} <= set(cal)
    assert len(config.coefficients) == cal["degree"] + 1 == 5  # a degree-4 fit, not the [1.0, 0.0] default
    # the record adds up: one pair per consecutive call pair of each chunk (one branch, one sample), on env seeds
    # first_seed + i for the tuning episodes, disjoint from the benchmark's 10000+
    assert cal["pairs"] == cal["episodes"] * cal["chunks"] * (cal["num_steps"] - 1)
    assert cal["env_seeds"] == [cal["env_seeds"][0] + i for i in range(cal["episodes"])]
    assert cal["env_seeds"][0] >= 20000
    assert 0 < cal["input_range"][0] < cal["input_range"][1]
