"""`inspect_store`'s summary numbers pinned on a rollout store written by hand (a real Zarr store, no Ray, no model):
mean_skip_rate = 1 - computed calls / calls and speedup_estimate = calls / computed calls (rollouts/reader.py's
docstring), both pooled over every call of every step of every episode; the ms means pooled over steps. Last,
`inspect` on a make-data store."""
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


def test_an_unknown_episode_is_refused_before_the_summary(tmp_path, capsys):
    write_store(tmp_path / "s.zarr", [[[True] * 3]] * 2, [[1.0], [1.0]])
    with pytest.raises(KeyError, match="no complete episode 'nope' in .*s.zarr \\(it has ep0 .. ep1\\)"):
        inspect_store(tmp_path / "s.zarr", episode="nope")
    assert capsys.readouterr().out == ""


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


def test_a_make_data_store_is_summarised_and_shown_not_plotted(tmp_path, capsys):
    """`inspect` on a make-data store (simulator episodes, no cache statistics): its summary and its videos."""
    import imageio.v2 as imageio

    from worldcache.mujoco_data import generate
    from worldcache.rollouts.reader import inspect_data_store, inspect_main
    from worldcache.rollouts.video import write_videos

    data = tmp_path / "d.zarr"
    generate(data, episodes=2, steps=4, seed=0, progress=False)
    generate(data, episodes=1, steps=4, seed=5, policy="random", progress=False)
    store = EpisodeStore(data, mode="r")
    returns = [float(store.load_episode(i)["rewards"].sum()) for i in store.episode_ids()]
    res = inspect_data_store(data)
    assert (res["episodes"], res["steps"], res["frame"], res["scene"]) == (3, 4, [80, 96], "v1")
    assert res["runs"] == {"seed0_mixed": {"seed": 0, "policy": "mixed", "episodes": 2},
                           "seed5_random": {"seed": 5, "policy": "random", "episodes": 1}}
    assert res["kinds"] == {"mixed": 2, "random": 1}  # each episode's recorded kind
    assert res["mean_return"] == pytest.approx(np.mean(returns), abs=1e-6)
    assert (res["min_return"], res["max_return"]) == pytest.approx((min(returns), max(returns)), abs=1e-6)
    out = capsys.readouterr().out
    assert "make-data store, 3 episodes of 4 steps, 80x96 frames at 20 fps; scene v1" in out
    assert "runs: seed 0 mixed (2), seed 5 random (1)" in out
    # the frames play at the simulator's rate, one per env step and the reset frame
    paths = write_videos(data, tmp_path / "mp4", scale=1)
    with imageio.get_reader(paths[0]) as r:
        frames, fps = [f for f in r], r.get_meta_data()["fps"]
    assert len(paths) == 3 and len(frames) == 5 and frames[0].shape == (80, 96, 3) and fps == 20
    for kw in ({"plots": str(tmp_path / "p")}, {"video": str(tmp_path / "v"), "side_by_side": True}):
        with pytest.raises(ValueError, match="a make-data store holds no cache statistics"):
            inspect_main(str(data), **kw)
    with pytest.raises(RolloutFormatError, match="it is a make-data store, which `worldcache inspect` summarises"):
        inspect_store(data)
    v2 = tmp_path / "v2.zarr"
    generate(v2, episodes=1, steps=2, scene="v2", progress=False)
    assert inspect_data_store(v2)["scene"] == "v2"


def test_window_dataset_opens_a_remote_store_with_its_storage_options(tmp_path, monkeypatch):
    """fsspec options (an S3 endpoint, keys) reach the store, in the dataset and again in each DataLoader worker."""
    import pickle

    from worldcache.rollouts import reader

    write_store(tmp_path / "r.zarr", [[[True]] * 3], [[1.0] * 3])
    seen, real = [], reader.open_store
    monkeypatch.setattr(reader, "open_store", lambda path, options=None: seen.append(options) or real(path, options))
    ds = reader.WindowDataset(tmp_path / "r.zarr", window=2, stride=1, storage_options={"anon": True})
    worker = pickle.loads(pickle.dumps(ds))  # as a DataLoader worker gets it
    obs, actions = worker[1]
    assert len(worker) == 2 and obs.shape == (3, 4, 4, 3) and actions.shape == (2, CHUNK, A)
    assert seen == [{"anon": True}, {"anon": True}]
