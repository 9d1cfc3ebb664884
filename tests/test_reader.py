"""`inspect_store`'s summary numbers pinned on a rollout store written by hand (a real Zarr store, no Ray, no model):
mean_skip_rate = 1 - computed calls / calls and speedup_estimate = calls / computed calls (rollouts/reader.py's
docstring), both pooled over every call of every step of every episode; the ms means pooled over steps."""
from __future__ import annotations

import numpy as np
import pytest

from worldcache.rollouts.identity import ROLLOUT_FORMAT, RolloutFormatError
from worldcache.rollouts.reader import inspect_store
from worldcache.rollouts.store import EpisodeStore

CHUNK, A = 2, 3


def write_store(path, computed: list[list[list[bool]]], model_ms: list[list[float]]) -> None:
    """One episode per entry of `computed` ((T, calls) per episode), with its per-step model_ms; tiny 4x4 frames."""
    store = EpisodeStore.create(path, attrs={"rollout": {"format_version": ROLLOUT_FORMAT, "cache": {"policy": "x"},
                                                         "env": {"action_shape": [CHUNK, A]}}})
    for e, (comp, ms) in enumerate(zip(computed, model_ms)):
        comp = np.array(comp, bool)
        T, calls = comp.shape
        nan = np.full((T, calls), np.nan, np.float32)
        store.write_episode(f"ep{e}", obs=np.zeros((T + 1, 4, 4, 3), np.uint8),
                            actions=np.zeros((T, CHUNK, A), np.float32), rewards=np.zeros(T, np.float32),
                            terminated=np.zeros(T, bool), truncated=np.zeros(T, bool),
                            extras={"cache/computed": comp, "cache/drift": nan, "cache/threshold": nan,
                                    "model_ms": np.array(ms, np.float32),
                                    "denoise_ms": np.array(ms, np.float32) / 2})


def test_one_step_computing_half_its_calls(tmp_path, capsys):
    # 4 calls, 2 computed: half skipped, and twice as fast if a skipped call cost nothing
    write_store(tmp_path / "s.zarr", [[[True, False, False, True]]], [[10.0]])
    res = inspect_store(tmp_path / "s.zarr")
    assert (res["episodes"], res["steps"], res["calls_per_step"]) == (1, 1, 4)
    assert res["mean_skip_rate"] == 0.5 and res["speedup_estimate"] == 2.0
    assert (res["mean_model_ms"], res["mean_denoise_ms"]) == (10.0, 5.0)
    assert "mean skip rate 0.500; speedup estimate 2.00x" in capsys.readouterr().out


def test_the_numbers_pool_every_call_of_every_episode(tmp_path):
    # ep0: 1 step, 2 of 4 computed; ep1: 2 steps, 4 + 1 of 8 computed. Pooled: 7 of 12 computed, so skip rate
    # 5/12 and speedup 12/7 (means of per-episode figures would give (1/2 + 3/8) / 2 and (2 + 8/5) / 2).
    # model_ms pooled over the 3 steps: (10 + 20 + 40) / 3, not the mean of episode means (10 + 30) / 2
    write_store(tmp_path / "s.zarr", [[[True, False, False, True]],
                                      [[True, True, True, True], [True, False, False, False]]],
                [[10.0], [20.0, 40.0]])
    res = inspect_store(tmp_path / "s.zarr")
    assert (res["episodes"], res["steps"], res["calls_per_step"]) == (2, 3, 4)
    assert res["mean_skip_rate"] == pytest.approx(5 / 12, abs=1e-15)
    assert res["speedup_estimate"] == 12 / 7
    assert res["mean_model_ms"] == pytest.approx(70 / 3, rel=1e-6)  # float32 storage
    assert res["mean_denoise_ms"] == pytest.approx(35 / 3, rel=1e-6)


def test_every_call_computed_is_no_speedup(tmp_path):
    write_store(tmp_path / "s.zarr", [[[True] * 3] * 2], [[1.0, 1.0]])
    res = inspect_store(tmp_path / "s.zarr")
    assert res["mean_skip_rate"] == 0.0 and res["speedup_estimate"] == 1.0


def test_an_empty_or_foreign_store_is_refused(tmp_path):
    write_store(tmp_path / "empty.zarr", [], [])
    with pytest.raises(ValueError, match="no complete episodes"):
        inspect_store(tmp_path / "empty.zarr")
    EpisodeStore.create(tmp_path / "plain.zarr")  # episodes without rollout attrs (e.g. make-data)
    with pytest.raises(RolloutFormatError, match="not a rollout store"):
        inspect_store(tmp_path / "plain.zarr")
