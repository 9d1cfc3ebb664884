"""TeaCache calibration: the polynomial fit pinned on synthetic data, and `worldcache calibrate teacache` end to end
on a tiny checkpoint (real Pusher tuning episodes, real rollouts, a YAML the policy loads)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from worldcache.cache import load_policy
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


def test_calibrate_command_writes_a_fitted_polynomial_the_policy_loads(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "teacache.yaml"
    out.write_text("policy: teacache\nthreshold: 0.3\nret_ratio: 0.2\ncoefficients: [1.0, 0.0]\n")
    assert main(["calibrate", "teacache", "--checkpoint", str(tiny_ckpt), "--episodes", "1", "--chunks", "2",
                 "--denoise-steps", "6", "--first-seed", "20000", "--out", str(out)]) == 0
    assert "fit RMSE" in capsys.readouterr().out
    data = yaml.safe_load(out.read_text())
    cal = data["calibration"]
    assert (data["threshold"], data["ret_ratio"]) == (0.3, 0.2)  # the file's other settings are kept
    assert len(data["coefficients"]) == 5 and data["coefficients"] != [1.0, 0.0]
    assert cal["model"] == "tiny-calibration" and cal["env_seeds"] == [20000] and cal["num_steps"] == 6
    assert cal["pairs"] == 2 * 5  # 2 chunks x (6 calls - 1) consecutive pairs, one branch, one sample
    assert cal["fit_rmse"] >= 0 and len(cal["date"]) == 10
    policy = load_policy(out)
    assert policy.config.coefficients == data["coefficients"] and policy.config.calibration == cal


def test_recorder_measures_the_modulated_input_and_model_output_changes(tiny_ckpt):
    # the recorded pairs are rel L1 changes between consecutive calls: finite, positive, one per call pair
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


def test_shipped_teacache_yaml_is_calibrated_and_says_how():
    config = load_policy("teacache").config
    cal = config.calibration
    assert len(config.coefficients) == 5 and config.coefficients != [1.0, 0.0]
    assert {"model", "checkpoint", "episodes", "env_seeds", "num_steps", "pairs", "fit_rmse", "date"} <= set(cal)
    assert min(cal["env_seeds"]) >= 20000  # tuning episodes, disjoint from the benchmark's 10000+
