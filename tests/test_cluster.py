"""Multi-node rollouts into an object store: a simulated two-node Ray cluster (`ray.cluster_utils.Cluster`) writes
a complete store to an S3-compatible endpoint that the test starts on the loopback address (moto's server mode;
never a real cloud). The checkpoint reaches the actors through Ray's object store; the actors write to the URL."""
import json
import socket

import moto.server as moto_server
import numpy as np
import pytest
import ray
import s3fs  # the dev extra installs it: a missing one fails here instead of skipping the test
from ray.cluster_utils import Cluster

from worldcache.cli import main
from worldcache.envs.cosmos_env import START_FRAMES
from worldcache.rollouts import EpisodeStore, LeaseError, acquire_lease, episode_id, open_store, run_rollouts
from worldcache.world_model import WorldModel, WorldModelSpec

pytestmark = pytest.mark.slow  # Ray clusters and the bundled model end to end

H, W, K, A = 16, 24, 4, 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on 127.0.0.1 and the storage options that reach it."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
            "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=opts["endpoint_url"], region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="rollouts")
    yield opts
    server.stop()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 2**20})
    c.add_node(num_cpus=1, object_store_memory=150 * 2**20)
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    WorldModel.build(WorldModelSpec(height=H, width=W, chunk=K, num_steps=4, action_dim=A, action_low=[-2.0] * A,
                                    action_high=[2.0] * A), hidden_heads=2, head_dim=16,
                     num_layers=2, vae_base_dim=8).save_pretrained(path)
    np.save(path / START_FRAMES, np.random.default_rng(0).integers(0, 256, (5, H, W, 3), dtype=np.uint8))
    return path


def test_two_nodes_write_a_complete_store_to_s3(cluster, s3, ckpt, monkeypatch, tmp_path, capsys):
    url = "s3://rollouts/two_nodes.zarr"
    # the checkpoint as a path relative to the driver's working directory, which the actors (started before the
    # chdir, elsewhere) do not share: they can only have the model from the files the driver sends them
    monkeypatch.chdir(ckpt.parent)
    cfg = {"checkpoint": ckpt.name, "out": url, "storage_options": s3, "steps": 2, "episodes": 4, "workers": 2,
           "num_envs": 1, "num_cpus": 1, "policy": "random"}
    summary = run_rollouts(cfg, progress=False)
    assert summary["workers"] == 2 and summary["nodes"] == 2  # one actor on each node
    assert summary["episodes_written"] == 4
    store = open_store(url, storage_options=s3)
    assert store.episode_ids() == [episode_id(i, 0) for i in range(4)]
    for eid in store.episode_ids():
        ep = store[eid]
        assert ep["actions"].shape == (2, K, A) and ep["frames"].shape == (2, K, H, W, 3)
        assert ep["cache/computed"].shape == (2, 4)
    # the command line reads it too, with the same options as JSON
    capsys.readouterr()
    assert main(["inspect", url, "--storage-options", json.dumps(s3), "--video", str(tmp_path / "v")]) == 0
    assert f"{url}: 4 episodes, 8 steps" in capsys.readouterr().out
    assert sorted(p.stem for p in (tmp_path / "v").iterdir()) == store.episode_ids()
    fs = s3fs.S3FileSystem(**s3)
    assert not fs.exists("rollouts/two_nodes.zarr/lease.json")  # released at the end
    # resuming from the object store writes nothing new; a second driver is refused while a lease is held
    assert run_rollouts(cfg, progress=False)["episodes_written"] == 0
    token = acquire_lease(url, s3)
    with pytest.raises(LeaseError, match="another driver holds"):
        run_rollouts({**cfg, "episodes": 5}, progress=False)
    with pytest.raises(LeaseError, match="does not hold it"):  # nor can a writer without the lease write
        EpisodeStore(url, mode="a", storage_options=s3).write_episode(
            "x", obs=np.zeros((2, H, W, 3), np.uint8), actions=np.zeros((1, K, A), np.float32),
            rewards=np.zeros(1), terminated=np.zeros(1, bool), truncated=np.zeros(1, bool))
    assert EpisodeStore(url, mode="a", storage_options=s3, lease=token).check_lease() is None
