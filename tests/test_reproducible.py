"""An episode is a function of (config, seed, index) alone: the same episode ids rolled out by 1 worker x 4 envs,
by 2 workers x 2 envs, and by a run that was interrupted and resumed hold identical actions and cache decisions,
and frames within 1 grey level, rewards within 1e-3 (batched floating point). Real Ray cluster, real Zarr stores,
the bundled model (few env and denoising steps)."""
import functools
import json

import numpy as np
import pytest
import ray

from worldcache.rollouts import LeaseError, acquire_lease, episode_id, open_store, run_rollouts
from worldcache.state_decoder import StateDecoder
from worldcache.world_model import BUNDLED

pytestmark = pytest.mark.slow  # Ray clusters and the bundled model end to end

IDS = [episode_id(i, 0) for i in range(4)]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def config(out, **kw):
    # worldcache at its defaults skips 2 of 6 denoising steps here: decisions are exercised per sample
    return {"checkpoint": None, "out": str(out), "num_steps": 6, "steps": 2, "episodes": 4, "policy": "random",
            "cache": "worldcache", "num_cpus": 1, **kw}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "w1x4.zarr"
    run_rollouts(config(out, workers=1, num_envs=4, num_cpus=2), progress=False)
    return open_store(out)


@functools.cache
def decoder():
    """The bundled checkpoint's state decoder: its chunk_reward is the env's default reward."""
    return StateDecoder.load(BUNDLED)


def assert_same(ref, other):
    assert other.episode_ids() == ref.episode_ids() == IDS
    for eid in IDS:
        a, b = ref[eid], other[eid]
        assert np.array_equal(a["actions"], b["actions"]), eid
        assert np.array_equal(a["noise_seed"], b["noise_seed"]) and a["attrs"]["seed"] == b["attrs"]["seed"]
        assert np.array_equal(a["cache/computed"], b["cache/computed"]), eid
        for k in ("obs", "frames"):
            diff = np.abs(a[k].astype(int) - b[k].astype(int)).max()
            assert diff <= 1, (eid, k)
        # rewards: each episode's own (the decoder's reward of its frames and actions), so equal across runs up
        # to the frames' float rounding (seen: < 1e-5), far below the gap between episodes (> 0.1)
        np.testing.assert_allclose(a["rewards"], b["rewards"], rtol=0, atol=1e-3, err_msg=eid)
        for ep in (a, b):
            want = [decoder().chunk_reward(f, act) for f, act in zip(ep["frames"], ep["actions"])]
            np.testing.assert_allclose(ep["rewards"], want, rtol=1e-5, atol=1e-6, err_msg=eid)


def test_two_workers_of_two_envs(reference, tmp_path):
    out = tmp_path / "w2x2.zarr"
    summary = run_rollouts(config(out, workers=2, num_envs=2), progress=False)
    assert summary["workers"] == 2
    assert_same(reference, open_store(out))
    # episodes really differ (ids are not copies of one another), and the cache really skipped calls
    acts = [reference[e]["actions"] for e in IDS]
    assert all(not np.array_equal(acts[0], a) for a in acts[1:])
    computed = np.stack([reference[e]["cache/computed"] for e in IDS])
    assert 0 < computed.mean() < 1


def test_interrupted_and_resumed(reference, tmp_path):
    out = tmp_path / "resumed.zarr"
    run_rollouts(config(out, episodes=3, workers=1, num_envs=2), progress=False)  # batches [0, 1], [2]
    # The interruption: episode 1 was being written (no complete marker yet) when its driver died, lease held,
    # before the end-of-run index of complete episodes.
    (out / "index.json").unlink()
    meta = out / "episodes" / IDS[1] / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    acquire_lease(str(out))  # the dead driver's lease
    with pytest.raises(LeaseError, match="another driver holds this store's lease"):
        run_rollouts(config(out, workers=1, num_envs=3), progress=False)
    summary = run_rollouts(config(out, workers=1, num_envs=3), progress=False, break_lease=True)  # [1, 3]
    assert summary["partial_removed"] == 1 and summary["episodes_written"] == 2
    assert summary["episodes_skipped"] == 2
    assert_same(reference, open_store(out))
