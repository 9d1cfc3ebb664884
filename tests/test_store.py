import json
import os
import shutil

import numpy as np
import pytest
import zarr

from worldcache.rollouts.store import FORMAT_VERSION, KIND, EpisodeStore, StoreFormatError


def make_episode(T=5, H=8, W=10, A=7, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        obs=rng.integers(0, 256, (T + 1, H, W, 3), dtype=np.uint8),
        actions=rng.uniform(-2, 2, (T, A)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        terminated=np.zeros(T, bool),
        truncated=np.r_[np.zeros(T - 1, bool), True],
    )


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, attrs={"model_hash": "abc", "env": {"id": "Pusher-v5"}})
    ep = make_episode(T=20)  # > 16 frames: obs spans two chunks
    extras = {"cache/computed": np.ones((20, 3), bool), "model_ms": np.arange(20, dtype=np.float32),
              "state": np.zeros((21, 4), np.float32)}
    store.write_episode("ep_000001", **ep, extras=extras, attrs={"seed": 7})
    store.write_episode("ep_000000", **make_episode(T=3, seed=1))

    reopened = EpisodeStore(path, mode="r")
    assert reopened.episode_ids() == ["ep_000000", "ep_000001"]
    assert len(reopened) == 2 and list(reopened) == ["ep_000000", "ep_000001"]
    assert reopened.num_steps == 23
    assert reopened.attrs["model_hash"] == "abc" and reopened.attrs["env"] == {"id": "Pusher-v5"}
    assert reopened.attrs["format_version"] == FORMAT_VERSION and reopened.attrs["kind"] == KIND

    got = reopened.load_episode("ep_000001")
    for k, v in {**ep, **extras}.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
    assert got["attrs"]["seed"] == 7 and got["attrs"]["num_steps"] == 20
    assert reopened["ep_000001"]["obs"].shape == (21, 8, 10, 3)
    np.testing.assert_array_equal(reopened.episode_array("ep_000001", "obs")[17], ep["obs"][17])
    assert set(reopened.load_episode("ep_000001", keys=["actions"])) == {"actions", "attrs"}
    assert set(reopened.load_episode("ep_000001", keys="actions")) == {"actions", "attrs"}  # one name, not letters
    np.testing.assert_array_equal(reopened.episode_array("ep_000001", "cache/computed"), extras["cache/computed"])
    with pytest.raises(KeyError, match=r"has no array 'nope'; available: \['obs', .*'state'\]"):
        reopened.episode_array("ep_000001", "nope")
    for name in ("..", "../x", ".", "a/../b"):  # names zarr refuses are no episode, not a zarr error
        assert name not in reopened and reopened.get(name) is None
    with pytest.raises(PermissionError):
        reopened.write_episode("ep_2", **make_episode())


def test_float64_actions_and_rewards_are_stored_float32(tmp_path):
    store = EpisodeStore(tmp_path / "s", mode="a")  # mode "a" creates a missing store
    ep = make_episode()
    ep["actions"] = ep["actions"].astype(np.float64)
    ep["rewards"] = ep["rewards"].astype(np.float64)
    store.write_episode("e", **ep)
    got = store.load_episode("e")
    assert got["actions"].dtype == np.float32 and got["rewards"].dtype == np.float32


def test_incomplete_episode_is_invisible_and_rewritten(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s")

    def crash(*args, **kwargs):  # the writer dies after the data, before the marker
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(EpisodeStore, "_mark_complete", staticmethod(crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_episode("ep_1", **make_episode(seed=1))
    assert (tmp_path / "s" / "episodes" / "ep_1" / "obs").exists()  # data is on disk ...
    assert not store.exists("ep_1") and "ep_1" not in store  # ... but invisible
    assert store.episode_ids() == [] and len(store) == 0 and store.num_steps == 0
    with pytest.raises(KeyError):
        store.load_episode("ep_1")
    assert EpisodeStore(tmp_path / "s", mode="r").episode_ids() == []

    monkeypatch.undo()
    ep = make_episode(T=4, seed=2)  # different shape than the leftover: must be fully replaced
    store.write_episode("ep_1", **ep)
    assert store.episode_ids() == ["ep_1"]
    np.testing.assert_array_equal(store.load_episode("ep_1")["obs"], ep["obs"])


def test_no_duplicates(tmp_path):
    store = EpisodeStore.create(tmp_path / "s")
    store.write_episode("a", **make_episode())
    with pytest.raises(FileExistsError, match="'a' already exists"):
        store.write_episode("a", **make_episode(seed=3))
    assert store.episode_ids() == ["a"]
    np.testing.assert_array_equal(store.load_episode("a")["obs"], make_episode()["obs"])


@pytest.mark.parametrize("change, err, match", [
    (dict(obs=np.zeros((6, 8, 10, 3), np.float32)), TypeError, r"obs must be uint8"),
    (dict(obs=np.zeros((5, 8, 10, 3), np.uint8)), ValueError, r"obs must be \(T\+1, H, W, 3\) = \(6, H, W, 3\).*\(5, 8, 10, 3\)"),
    (dict(obs=np.zeros((6, 8, 10), np.uint8)), ValueError, r"obs must be"),
    (dict(actions=np.zeros(5, np.float32)), ValueError, r"actions must be a float \(T, A\).*\(5,\)"),
    (dict(actions=np.zeros((5, 7), np.int64)), ValueError, r"actions must be a float"),
    (dict(actions=np.zeros((4, 7), np.float32)), ValueError, r"obs must be .*\(5, H, W, 3\) for T=4"),
    (dict(rewards=np.zeros(4, np.float32)), ValueError, r"rewards must have shape \(T,\) = \(5,\), got \(4,\)"),
    (dict(terminated=np.zeros(5, np.int8)), TypeError, r"terminated must be bool"),
    (dict(truncated=np.zeros((5, 1), bool)), ValueError, r"truncated must have shape"),
])
def test_bad_shapes_raise_clear_errors(tmp_path, change, err, match):
    store = EpisodeStore.create(tmp_path / "s")
    with pytest.raises(err, match=match):
        store.write_episode("e", **{**make_episode(), **change})
    assert len(store) == 0 and not (tmp_path / "s" / "episodes" / "e").exists()


def test_bad_extras_ids_and_attrs(tmp_path):
    store = EpisodeStore.create(tmp_path / "s")
    with pytest.raises(ValueError, match=r"extra 'model_ms' must have first dim T=5"):
        store.write_episode("e", **make_episode(), extras={"model_ms": np.zeros(3)})
    with pytest.raises(ValueError, match="bad extra array name"):
        store.write_episode("e", **make_episode(), extras={"obs": np.zeros(5)})
    # an array cannot hold another: refused before anything is written (zarr failed mid-write, leaving a partial)
    for extras, inside in (({"obs/x": np.zeros(5)}, "'obs/x' would lie inside the array 'obs'"),
                           ({"s/a": np.zeros(5), "s/b": np.zeros(5), "s/a/x": np.zeros(5)}, "'s/a/x'.*'s/a'")):
        with pytest.raises(ValueError, match=inside):
            store.write_episode("e", **make_episode(), extras=extras)
        assert store.partial_ids() == [] and not (tmp_path / "s" / "episodes" / "e").exists()
    # "s/a", "s/b" beside "s/c/x": "s" stays a group (not packed into one array), so all three are kept
    store.write_episode("e", **make_episode(), extras={"s/a": np.ones(5), "s/b": np.zeros(5), "s/c/x": np.ones(5)})
    back = store.load_episode("e")
    assert [back[k].tolist() for k in ("s/a", "s/b", "s/c/x")] == [[1.0] * 5, [0.0] * 5, [1.0] * 5]
    with pytest.raises(ValueError, match="episode id"):
        store.write_episode("../evil", **make_episode())
    with pytest.raises(ValueError, match="reserved"):
        store.write_episode("e", **make_episode(), attrs={"complete": True})


def test_store_level_frame_shape_and_action_dim(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", attrs={"frame_shape": [8, 10, 3], "action_dim": 7})
    store.write_episode("ok", **make_episode())
    with pytest.raises(ValueError, match=r"frame_shape=\(8, 10, 3\)"):
        store.write_episode("e", **make_episode(H=16))
    with pytest.raises(ValueError, match="action_dim=7"):
        store.write_episode("e", **make_episode(A=3))


def test_open_errors(tmp_path):
    for kw in ({"mode": "r"}, {}):  # reading is the default: a misspelt path is not made a new empty store
        with pytest.raises(FileNotFoundError, match="no episode store at"):
            EpisodeStore(tmp_path / "missing", **kw)
    assert not (tmp_path / "missing").exists()
    EpisodeStore.create(tmp_path / "made")
    with pytest.raises(PermissionError, match="read-only"):
        EpisodeStore(tmp_path / "made").consolidate()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("hi")
    with pytest.raises(StoreFormatError, match="not a worldcache episode store"):
        EpisodeStore(junk)
    zarr.open_group(tmp_path / "other", mode="w").attrs["x"] = 1
    with pytest.raises(StoreFormatError, match="kind=None"):
        EpisodeStore(tmp_path / "other")
    EpisodeStore.create(tmp_path / "old")
    meta = tmp_path / "old" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="format_version=99"):
        EpisodeStore(tmp_path / "old", mode="r")
    doc["attributes"]["format_version"] = 1  # the plain layout of older worldcache: read-only
    meta.write_text(json.dumps(doc))
    assert len(EpisodeStore(tmp_path / "old", mode="r")) == 0
    with pytest.raises(StoreFormatError, match="format_version=1; this code writes format_version=2, and reads"):
        EpisodeStore(tmp_path / "old", mode="a")
    with pytest.raises(FileExistsError):
        EpisodeStore.create(tmp_path / "junk")
    assert len(EpisodeStore.create(tmp_path / "junk", overwrite=True)) == 0


def test_attrs_persist(tmp_path):
    store = EpisodeStore.create(tmp_path / "s")
    store.attrs["seeds"] = [1, 2, 3]
    store.attrs.update({"note": "x"})
    again = EpisodeStore(tmp_path / "s", mode="r")
    assert again.attrs["seeds"] == [1, 2, 3] and again.attrs["note"] == "x"


def _write_many(path, worker):
    store = EpisodeStore(path, mode="a")
    for i in range(3):
        store.write_episode(f"w{worker}_ep{i}", **make_episode(seed=10 * worker + i))


def test_concurrent_writers_of_different_episodes(tmp_path):
    import multiprocessing as mp

    path = str(tmp_path / "s")
    EpisodeStore.create(path, attrs={"run": "parallel"})
    ctx = mp.get_context("spawn")  # zarr runs an asyncio loop thread: do not fork it
    procs = [ctx.Process(target=_write_many, args=(path, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = EpisodeStore(path, mode="r")
    assert store.episode_ids() == [f"w{w}_ep{i}" for w in range(2) for i in range(3)]
    assert store.attrs["run"] == "parallel"
    np.testing.assert_array_equal(store.load_episode("w1_ep2")["obs"], make_episode(seed=12)["obs"])


def test_chunked_actions(tmp_path):
    store = EpisodeStore.create(tmp_path / "s", attrs={"action_dim": 7})
    ep = make_episode(T=3)
    ep["actions"] = np.ones((3, 4, 7), np.float32)  # (T, chunk, A)
    store.write_episode("e", **ep)
    assert store["e"]["actions"].shape == (3, 4, 7)
    with pytest.raises(ValueError, match="action_dim=7"):
        store.write_episode("f", **{**ep, "actions": np.ones((3, 4, 5), np.float32)})


def test_lease_one_writer(tmp_path):
    from worldcache.rollouts.store import LeaseError, acquire_lease, read_lease, release_lease

    path = str(tmp_path / "s")
    store = EpisodeStore.create(path)
    store.write_episode("free", **make_episode())  # no lease in the store: written as before
    token = acquire_lease(path)
    assert read_lease(path)["token"] == token and read_lease(path)["pid"] == os.getpid()
    with pytest.raises(LeaseError, match="another driver holds this store's lease.*--break-lease"):
        acquire_lease(path)
    # a lease of a process on this host that no longer runs is said as such (a killed driver's)
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    doc = json.loads((tmp_path / "s" / "lease.json").read_text())
    (tmp_path / "s" / "lease.json").write_text(json.dumps({**doc, "pid": int(gone.stdout), "host": socket.gethostname()}))
    with pytest.raises(LeaseError, match=f"left by pid {int(gone.stdout)} on this host, .* no longer running"):
        acquire_lease(path)
    (tmp_path / "s" / "lease.json").write_text(json.dumps(doc))
    with pytest.raises(LeaseError, match="does not hold it"):  # a writer without the lease
        store.write_episode("a", **make_episode())
    with pytest.raises(LeaseError, match="needs the store's lease"):
        store.remove_partial()
    with pytest.raises(ValueError, match="a lease is a writer's: open the store with mode='a'"):
        EpisodeStore(path, lease=token)  # read-only by default: the lease would be pointless
    with pytest.raises(LeaseError, match=f"a writer holds this store's lease .*pid {os.getpid()}.*delete lease.json"):
        EpisodeStore.create(path, overwrite=True)  # would delete the holder's episodes and lease
    assert EpisodeStore(path, mode="r").episode_ids() == ["free"] and read_lease(path)["token"] == token
    # a partial leftover: removed only under the lease
    (tmp_path / "s" / "episodes" / "p").mkdir()
    zarr.open_group(tmp_path / "s" / "episodes" / "p", mode="w").attrs["complete"] = False
    holder = EpisodeStore(path, mode="a", lease=token)
    assert holder.partial_ids() == ["p"] and holder.remove_partial() == ["p"] and holder.partial_ids() == []
    holder.write_episode("a", **make_episode())
    stale = acquire_lease(path, break_lease=True)  # the holder died: its lease is broken
    assert stale != token and read_lease(path)["token"] == stale
    with pytest.raises(LeaseError):
        holder.write_episode("b", **make_episode())
    release_lease(path, token)  # not the holder any more: nothing happens
    assert read_lease(path)["token"] == stale
    release_lease(path, stale)
    assert read_lease(path) is None
    store.write_episode("b", **make_episode())
    assert EpisodeStore(path, mode="r").episode_ids() == ["a", "b", "free"]
    assert len(EpisodeStore.create(path, overwrite=True)) == 0  # no lease: replaced
    (tmp_path / "s" / "lease.json").write_text("")  # left empty by a writer that died taking it
    with pytest.raises(LeaseError, match="an unreadable lease .*: overwriting would delete"):
        EpisodeStore.create(path, overwrite=True)
    (tmp_path / "file").write_text("not a store")  # a file at the path: replaced, as before the lease check
    assert len(EpisodeStore.create(tmp_path / "file", overwrite=True)) == 0


def test_an_unreadable_lease_is_named_and_can_be_broken(tmp_path):
    from worldcache.rollouts.store import LEASE, LeaseError, acquire_lease, read_lease

    path = str(tmp_path / "s")
    EpisodeStore.create(path)
    (tmp_path / "s" / LEASE).write_text("")  # a driver died between creating the lease file and writing it
    assert read_lease(path) == {"unreadable": True}
    with pytest.raises(LeaseError, match="unreadable.*--break-lease"):
        acquire_lease(path)
    with pytest.raises(LeaseError, match="unreadable"):
        EpisodeStore(path, mode="a", lease="any").write_episode("a", **make_episode())
    token = acquire_lease(path, break_lease=True)
    assert read_lease(path)["token"] == token
    EpisodeStore(path, mode="a", lease=token).write_episode("a", **make_episode())
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["episodes", LEASE, "zarr.json"]  # no temp file


def test_stray_files_and_folders_in_episodes_are_not_episodes(tmp_path):
    from worldcache.rollouts.store import acquire_lease

    path = tmp_path / "s"
    EpisodeStore.create(path).write_episode("a", **make_episode())
    (path / "episodes" / ".DS_Store").write_bytes(b"\0")
    (path / "episodes" / ".ipynb_checkpoints").mkdir()
    store = EpisodeStore(path, mode="a", lease=acquire_lease(str(path)))
    assert store.partial_ids() == [] and store.remove_partial() == [] and store.episode_ids() == ["a"]
    assert (path / "episodes" / ".DS_Store").exists() and (path / "episodes" / ".ipynb_checkpoints").exists()


def test_an_episode_deleted_after_consolidate_is_gone(tmp_path):
    path = tmp_path / "s"
    store = EpisodeStore.create(path)
    for e in ("a", "b"):
        store.write_episode(e, **make_episode())
    assert store.consolidate() == 2
    shutil.rmtree(path / "episodes" / "a")  # by hand: the index still names it
    reader = EpisodeStore(path, mode="r")
    assert reader.episode_ids() == ["b"] and not reader.exists("a") and "a" not in reader and len(reader) == 1


def test_an_episode_deleted_by_hand_then_left_partial_by_a_crash_is_partial(tmp_path, monkeypatch):
    """The run that writes a hand-deleted episode again starts with `remove_partial` (the driver does), which
    indexes the complete episodes: a crash mid-write then leaves that episode partial, not complete by its old
    index entry (it would never be written again, and reading it would fail)."""
    from worldcache.rollouts.store import acquire_lease

    path = tmp_path / "s"
    store = EpisodeStore.create(path)
    for e in ("a", "b"):
        store.write_episode(e, **make_episode())
    store.consolidate()
    shutil.rmtree(path / "episodes" / "b")
    store = EpisodeStore(path, mode="a", lease=acquire_lease(str(path)))
    assert store.remove_partial() == [] and json.loads((path / "index.json").read_text()) == {"episodes": {"a": 5}}
    monkeypatch.setattr(EpisodeStore, "_mark_complete", staticmethod(lambda *a, **k: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        store.write_episode("b", **make_episode(seed=1))
    assert store.episode_ids() == ["a"] and store.partial_ids() == ["b"]
    assert store.remove_partial() == ["b"] and not (path / "episodes" / "b").exists()


def test_an_episode_removed_between_the_lease_check_and_its_marker_is_not_left_complete(tmp_path, monkeypatch):
    """A driver that broke the lease may remove a live writer's episode as partial right after the writer's last
    lease check; the writer's marker would then make the group again, complete and empty."""
    from worldcache.rollouts.store import LeaseError

    path = tmp_path / "s"
    store = EpisodeStore.create(path)
    real, calls = EpisodeStore.check_lease, [0]

    def checked_then_removed(self):
        real(self)
        calls[0] += 1
        if calls[0] == 2:  # the check before the marker: the other driver's remove_partial comes right after it
            shutil.rmtree(path / "episodes" / "a")

    monkeypatch.setattr(EpisodeStore, "check_lease", checked_then_removed)
    with pytest.raises(LeaseError, match="'a' was removed while it was written"):
        store.write_episode("a", **make_episode())
    assert not (path / "episodes" / "a").exists() and store.episode_ids() == [] and store.partial_ids() == []


def test_packed_statistics_and_sharded_frames(tmp_path):
    store = EpisodeStore.create(tmp_path / "s")
    T, rng = 5, np.random.default_rng(0)
    extras = {"cache/computed": rng.random((T, 3)) < 0.5, "cache/drift": rng.random((T, 3)).astype(np.float32),
              "cache/blocks_run": rng.integers(0, 7, (T, 3)).astype(np.int16),
              "frames": rng.integers(0, 256, (T, 4, 8, 10, 3), dtype=np.uint8),
              "noise_seed": rng.integers(0, 2**40, T),  # int64: not float64-exact, kept on its own
              # not float32-exact (2**24 + 1 has no float32; nor has float64's 0.1): this group is packed as float64
              "stats/count": np.array([2**24 + 1, -(2**31), 2**31 - 1, 0, 7], np.int32)[:, None].repeat(3, axis=1),
              "stats/tenth": np.full((T, 3), 0.1)}
    store.write_episode("e", **make_episode(T=T), extras=extras)
    got = store["e"]
    for k, v in extras.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v, equal_nan=True), k
    assert got["stats/count"][0, 0] == 2**24 + 1 and got["stats/tenth"][0, 0] == 0.1
    assert got["attrs"]["packed"] == {"cache": [["computed", "|b1"], ["drift", "<f4"], ["blocks_run", "<i2"]],
                                      "stats": [["count", "<i4"], ["tenth", "<f8"]]}
    # one array per group: float32 where every field fits it exactly, float64 where one does not
    assert store._episodes["e"]["cache"].dtype == np.float32 and store._episodes["e"]["stats"].dtype == np.float64
    assert store._episodes["e"]["stats"].shape == (T, 3, 2)
    ep_dir = tmp_path / "s" / "episodes" / "e"
    assert (ep_dir / "cache" / "zarr.json").exists() and not (ep_dir / "cache" / "drift").exists()
    assert np.array_equal(store.episode_array("e", "cache/drift"), extras["cache/drift"])
    assert np.array_equal(store.episode_array("e", "frames")[2, :2], extras["frames"][2, :2])
    assert sum(len(f) for _, _, f in os.walk(ep_dir / "frames")) == 2  # zarr.json + one shard
    assert store._episodes["e"]["frames"].chunks == (4, 4, 8, 10, 3)  # inner chunks of 16 frames
    assert set(store.load_episode("e", keys=["cache/drift"])) == {"cache/drift", "attrs"}


def test_damaged_metadata_reads_as_no_index_or_a_partial_episode(tmp_path):
    """An index.json cut short is not trusted (each episode's own attrs are read), and an episode whose zarr.json
    is cut short is partial: listed, removed and written again, not a JSONDecodeError that stops every run."""
    from worldcache.rollouts.store import acquire_lease

    path = tmp_path / "s"
    store = EpisodeStore.create(path)
    for e in ("a", "b"):
        store.write_episode(e, **make_episode())
    store.consolidate()
    for cut in ("", '{"episodes": {"a": 5, "b"', '["a", "b"]', '{"episodes": [["a", 5]]}'):
        (path / "index.json").write_text(cut)
        reader = EpisodeStore(path, mode="r")
        assert reader.episode_ids() == ["a", "b"] and len(reader) == 2 and reader.num_steps == 10, cut
    meta = (path / "episodes" / "b" / "zarr.json").read_text()
    (path / "episodes" / "b" / "zarr.json").write_text(meta[:len(meta) // 2])
    store = EpisodeStore(path, mode="a", lease=acquire_lease(str(path)))
    assert store.episode_ids() == ["a"] and store.partial_ids() == ["b"] and not store.exists("b")
    assert store.remove_partial() == ["b"] and not (path / "episodes" / "b").exists()
    store.write_episode("b", **make_episode(seed=1))
    assert store.episode_ids() == ["a", "b"]
    # written over without remove_partial first (make-data, scripts/pack_store.py): replaced as any leftover
    meta = (path / "episodes" / "a" / "zarr.json").read_text()
    (path / "episodes" / "a" / "zarr.json").write_text(meta[:10])
    store.write_episode("a", **make_episode(seed=2))
    assert store.episode_ids() == ["a", "b"]
    np.testing.assert_array_equal(store.load_episode("a")["obs"], make_episode(seed=2)["obs"])


def test_consolidated_index(tmp_path):
    path = tmp_path / "s"
    store = EpisodeStore.create(path)
    for i in range(3):
        store.write_episode(f"e{i}", **make_episode(T=2 + i))
    assert store.consolidate() == 3
    index = json.loads((path / "index.json").read_text())
    assert index == {"episodes": {"e0": 2, "e1": 3, "e2": 4}}
    store.write_episode("e3", **make_episode(T=1))  # written after the index: still found
    (path / "episodes" / "p").mkdir()  # and a partial leftover is still not an episode
    reader = EpisodeStore(path, mode="r")
    assert reader.episode_ids() == ["e0", "e1", "e2", "e3"] and len(reader) == 4 and reader.num_steps == 10
    assert reader.exists("e1") and not reader.exists("p") and reader.partial_ids() == ["p"]


def test_pack_store_round_trips_and_an_interrupted_unpack_resumes(tmp_path):
    """scripts/pack_store.py: unpack(pack(store)) holds the same episodes; unpacking into a store an interrupted
    unpack left (one episode complete, one partial group) completes it instead of keeping a partial store."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pack_store", Path(__file__).parents[1] / "scripts" / "pack_store.py")
    pack_store = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_store)
    src = EpisodeStore.create(tmp_path / "src.zarr", attrs={"fps": 20.0})
    for i in range(2):
        src.write_episode(f"ep{i}", **make_episode(seed=i), extras={"state": np.full((6, 4), i, np.float32)},
                          attrs={"policy": "mixed"})
    pack_store.pack(str(tmp_path / "src.zarr"), str(tmp_path / "p.npz.xz"))
    # into a folder still to be made (.dev/ in a fresh checkout): the same bytes
    pack_store.pack(str(tmp_path / "src.zarr"), str(tmp_path / ".dev" / "p.npz.xz"))
    assert (tmp_path / ".dev" / "p.npz.xz").read_bytes() == (tmp_path / "p.npz.xz").read_bytes()
    dst = EpisodeStore.create(tmp_path / "dst.zarr", attrs={"fps": 20.0})  # an unpack sets the attrs first
    dst.write_episode("ep0", **make_episode(seed=0), extras={"state": np.zeros((6, 4), np.float32)},
                      attrs={"policy": "mixed"})
    dst._episodes.create_group("ep1")  # what a kill mid-write leaves: a group without its complete marker
    pack_store.unpack(str(tmp_path / "p.npz.xz"), str(tmp_path / "dst.zarr"))
    dst = EpisodeStore(tmp_path / "dst.zarr", mode="r")
    assert dst.episode_ids() == ["ep0", "ep1"] and dst.attrs["fps"] == 20.0
    for eid in ("ep0", "ep1"):
        a, b = src.load_episode(eid), dst.load_episode(eid)
        for k in ("obs", "actions", "rewards", "terminated", "truncated", "state"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{eid} {k}")
        assert b["attrs"]["policy"] == "mixed"
    # a pack of an older store (format 1) unpacks into this code's layout, labelled as such, and resumes
    import json
    import lzma

    with lzma.open(tmp_path / "p.npz.xz") as f:
        data = dict(np.load(f))
    meta = json.loads(data["__meta__"].tobytes())
    meta["attrs"]["format_version"] = 1
    data["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with lzma.open(tmp_path / "old.npz.xz", "wb") as f:
        np.savez(f, **data)
    for _ in range(2):
        pack_store.unpack(str(tmp_path / "old.npz.xz"), str(tmp_path / "new.zarr"))
    new = EpisodeStore(tmp_path / "new.zarr", mode="r")
    assert new.attrs["format_version"] == 2 and new.episode_ids() == ["ep0", "ep1"] and new.attrs["fps"] == 20.0
    other = EpisodeStore.create(tmp_path / "other.zarr", attrs={"fps": 10.0})  # another dataset: never mixed in
    other.write_episode("ep0", **make_episode(seed=5))
    with pytest.raises(SystemExit, match="holds episodes of another dataset"):
        pack_store.unpack(str(tmp_path / "p.npz.xz"), str(tmp_path / "other.zarr"))
    assert EpisodeStore(tmp_path / "other.zarr", mode="r").attrs["fps"] == 10.0
