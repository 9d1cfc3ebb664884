"""The driver: `run_rollouts` schedules the missing episodes of a config on Ray actors, under the store's lease.

Steps: open (or create) the store at ``cfg.out`` (a path or URL), take its lease (`store.acquire_lease`: a
second driver is refused), check the store was made with the same settings (`identity.init_or_check`), remove
leftover partial episodes, and hand batches of ``num_envs`` missing episode indices to ``workers`` actors. The
checkpoint's files go to the actors through Ray's object store; the actors write into the store themselves.
After the batches, every actor flushes its writer; episodes still missing (an actor died with episodes queued)
are run again, up to ``max_task_retries`` more rounds; a round whose writes failed and wrote nothing is the last.
The lease is released at the end. A first run that fails before writing an episode removes the store it made.

Fault tolerance inside a round is Ray's: actors restart (``max_restarts``) and re-run the batch that was running
(``max_task_retries``).
"""
from __future__ import annotations

import contextlib
import os
import time

from worldcache.interrupt import reclaim_sigterm, sigterm_as_interrupt

from .actor import RolloutWorker
from .config import RolloutConfig, episode_id
from .identity import checkpoint_files, checkpoint_folder, init_or_check, policy_file, rollout_attrs
from .store import EpisodeStore, _fs, _group_names, _local_path, acquire_lease, release_lease


FLUSH_ON_ERROR_S = 60  # how long a failing run waits for the actors' writers before it stops them


def _init_ray(address: str | None) -> bool:
    """Use the caller's Ray, join `address` ("auto": a running cluster), or start a local one. True if started."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False)
    reclaim_sigterm()  # ray.init sets its own SIGTERM handler (an exit): under `worldcache rollout`, stop as on Ctrl-C
    return True


def _cluster_alive(started: bool) -> bool:
    """False when the local cluster this run started has lost its GCS or raylet: a SIGTERM to the whole process
    group (a scheduler's or systemd's stop) reaches them too. Waiting on the dead actors then outlasts Ray's own
    60 s GCS timeout, which ends the process before the lease is given back; there is nothing left to flush. A
    cluster joined or given is taken as alive (its processes are not this run's), as is any where Ray's internal
    node handle cannot be read."""
    if not started:
        return True
    try:
        import ray
        from ray._private import ray_constants

        procs = ray._private.worker._global_node.all_processes
        return all(p.process.poll() is None for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER,
                                                          ray_constants.PROCESS_TYPE_RAYLET)
                   for p in procs.get(kind, []))
    except Exception:  # internal API moved: the flush is tried as before
        return True


def _resolve(cfg: RolloutConfig, **overrides) -> RolloutConfig:
    cfg = RolloutConfig.load({**cfg.as_kwargs(), **{k: v for k, v in overrides.items() if v is not None}})
    local = _local_path(cfg.out)
    if local is not None:  # a local store: the same absolute path for every actor on this machine
        cfg.out = os.path.abspath(local)
    return cfg


def run_rollouts(config, out: str | None = None, episodes: int | None = None, workers: int | None = None,
                 address: str | None = None, progress: bool = True, break_lease: bool = False) -> dict:
    """Roll out the missing episodes of `config` (dict, YAML path or configs/ name) into its store.

    `out`, `episodes`, `workers` override the config; `address` joins a Ray cluster ("auto", "ray://...");
    `break_lease` replaces the lease of a driver that died. Returns a summary: episodes written/skipped (already
    in the store), partial leftovers removed, steps, rollout seconds (actors ready -> last episode written),
    steps/s, episodes/s, mean skip rate, write_s (background writes), store_s (time the actors waited for the
    store) and write_share = store_s / the actors' busy time.
    """
    cfg = _resolve(RolloutConfig.load(config), out=out, episodes=episodes, workers=workers)
    folder = checkpoint_folder(cfg)
    files = checkpoint_files(folder)
    attrs = rollout_attrs(cfg, files, folder)  # validates the cache config before any actor starts
    # the actors get the cache as resolved here: a YAML path need not exist on their node, nor be read again there
    cfg.cache = attrs["cache"]["policy"]
    cfg.cache_config = {k: v for k, v in attrs["cache"].items() if k != "policy"}
    cfg.num_steps = attrs["env"]["num_steps"]
    fs, root = _fs(cfg.out, cfg.storage_options)
    created = not fs.exists(root)
    # the lease first: of two drivers starting on a new store, only its holder creates it
    lease = acquire_lease(cfg.out, cfg.storage_options, break_lease=break_lease)
    try:
        store = EpisodeStore(cfg.out, mode="a", storage_options=cfg.storage_options, lease=lease)
        init_or_check(store, attrs)
        removed = store.remove_partial()
        todo = _missing(store, range(cfg.episodes), cfg.seed)
        summary = {"store": cfg.out, "episodes_written": 0, "episodes_skipped": cfg.episodes - len(todo),
                   "partial_removed": len(removed), "steps": 0, "rollout_s": 0.0, "steps_per_s": 0.0,
                   "episodes_per_s": 0.0, "mean_skip_rate": float("nan"), "write_s": 0.0, "store_s": 0.0,
                   "write_share": 0.0, "workers": 0, "nodes": 0}
        if todo:
            summary.update(_run(cfg, files, lease, todo, store, address, progress))
        store.consolidate()  # index of the complete episodes: listing the store reads one file
        return summary
    except BaseException:
        if created:  # a first run that failed (too few CPUs, a model that does not load) leaves no empty store
            _remove_if_no_episodes(fs, root)
        raise
    finally:
        release_lease(cfg.out, lease, cfg.storage_options)


def _remove_if_no_episodes(fs, root: str) -> None:
    if not _group_names(fs, root):  # not even a partial episode group
        with contextlib.suppress(OSError):  # the run's own error is the one to see
            fs.rm(root, recursive=True)


def _missing(store: EpisodeStore, indices, seed: int) -> list[int]:
    """The episode indices not complete in the store (one listing of it, not one read per episode)."""
    done = set(store.episode_ids())
    return [i for i in indices if episode_id(i, seed) not in done]


def _run(cfg: RolloutConfig, files: dict, lease: str, todo: list[int], store: EpisodeStore, address, progress):
    import ray
    from ray.util import ActorPool

    started = _init_ray(address)
    actors = []
    try:
        gpu = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        need = {"CPU": cfg.num_cpus, **({"GPU": cfg.num_gpus} if gpu else {})}
        have = ray.cluster_resources()
        n_workers = min(cfg.workers, -(-len(todo) // cfg.num_envs))
        if gpu and cfg.num_gpus == 0 and not have.get("GPU", 0):  # Ray is asked for none, so none is awaited
            raise ValueError(f"device {cfg.device!r} with num_gpus 0, but Ray has 0 GPUs: use device cpu, or give "
                             f"num_gpus > 0 on a cluster that gains GPU nodes")
        short = [k for k, v in need.items() if v * n_workers > have.get(k, 0)]
        if short and address is None:  # a fixed local cluster never grows: actors would wait forever
            raise ValueError(f"{n_workers} workers need {need} each but Ray has {have.get('CPU')} CPUs / "
                             f"{have.get('GPU', 0)} GPUs; lower workers, num_cpus or num_gpus")
        Worker = ray.remote(RolloutWorker).options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus if gpu else 0, max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_task_retries)
        files_ref = ray.put(files)  # the checkpoint reaches every node through the object store
        actors = [Worker.remote(cfg.as_kwargs(), files_ref, "cuda" if gpu else "cpu", lease, policy_file(cfg))
                  for _ in range(n_workers)]
        nodes = set(ray.get([a.ready.remote() for a in actors]))  # model loading is not rollout time
        tot = {"steps": 0, "calls": 0, "computed": 0, "write_s": 0.0, "store_s": 0.0, "busy_s": 0.0}
        wanted = len(todo)
        t0 = time.perf_counter()
        from tqdm import tqdm

        with tqdm(total=len(todo), unit="ep", disable=not progress, desc="rollouts") as bar:
            for rounds in range(1, 2 + cfg.max_task_retries):  # a round per loss: a dead actor's queued episodes
                batches = [todo[k:k + cfg.num_envs] for k in range(0, len(todo), cfg.num_envs)]
                for r in ActorPool(actors).map_unordered(lambda a, b: a.run.remote(b), batches):
                    for k in ("steps", "calls", "computed"):
                        tot[k] += r[k]
                    tot["store_s"] += r["blocked_s"]
                    tot["busy_s"] += r["task_s"]
                    bar.update(len(r["queued"]))
                    bar.set_postfix(steps_s=f"{tot['steps'] / (time.perf_counter() - t0):.2f}",
                                    skip=f"{1 - tot['computed'] / max(tot['calls'], 1):.2f}")
                errors = []
                for f in ray.get([a.flush.remote() for a in actors]):
                    tot["write_s"] += f["write_s"]
                    tot["store_s"] += f["flush_s"]
                    tot["busy_s"] += f["flush_s"]
                    errors += f["errors"]
                left = _missing(store, todo, cfg.seed)  # counted in the store: a restarted actor's tally is lost
                stuck = errors and len(left) == len(todo)  # writes failed and none landed: they would fail again
                todo = left
                if not todo or stuck:
                    break
                bar.reset(total=len(todo))
            if todo:
                raise RuntimeError(f"{len(todo)} episodes could not be written after {rounds} round(s): "
                                   f"{errors[:3] or todo[:5]}")
        dt = time.perf_counter() - t0
    except BaseException:
        # a failed batch (or Ctrl-C): the live actors first write what they hold, finished episodes stay; waited on in
        # slices, so that a cluster dying meanwhile (its GCS and raylet a moment after the driver's signal) ends it
        pending = [a.flush.remote() for a in actors] if actors and _cluster_alive(started) else []
        deadline = time.monotonic() + FLUSH_ON_ERROR_S
        while pending and time.monotonic() < deadline and _cluster_alive(started):
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        raise
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return {"episodes_written": wanted, "steps": tot["steps"], "rollout_s": dt,
            "steps_per_s": tot["steps"] / dt, "episodes_per_s": wanted / dt,
            "mean_skip_rate": 1 - tot["computed"] / tot["calls"] if tot["calls"] else float("nan"),
            "write_s": tot["write_s"], "store_s": tot["store_s"],
            "write_share": tot["store_s"] / tot["busy_s"] if tot["busy_s"] else 0.0,
            "workers": len(actors), "nodes": len(nodes)}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_summary(s: dict) -> str:
    removed = f", {s['partial_removed']} partial leftovers removed" if s.get("partial_removed") else ""
    if not s["episodes_written"]:  # a run resumed with nothing left to do: no rates of nothing
        return f"{s['store']}: all {s['episodes_skipped']} episode(s) already there{removed}; nothing to roll out"
    return (f"{s['store']}: {s['episodes_written']} episodes written, {s['episodes_skipped']} already there{removed}; "
            f"{s['steps']} steps in {s['rollout_s']:.1f} s ({s['steps_per_s']:.2f} steps/s, "
            f"{s['episodes_per_s']:.2f} episodes/s, {_count(s['workers'], 'worker')} on {_count(s['nodes'], 'node')}); "
            f"mean skip rate {s['mean_skip_rate']:.2f}; store writes {s['write_s']:.2f} s in the background, the "
            f"rollout waited {s['store_s']:.2f} s for them = {100 * s['write_share']:.1f} % of its time")


def rollout_main(config, out: str | None = None, episodes: int | None = None, workers: int | None = None,
                 address: str | None = None, break_lease: bool = False) -> int:
    """`worldcache rollout CONFIG.yaml [--out STORE] [--episodes N] [--workers N] [--address A] [--break-lease]`.

    SIGTERM (timeout, a batch scheduler's preemption, docker stop) stops it as Ctrl-C does: the actors write
    what they hold, finished episodes stay, and the lease is given back."""
    with sigterm_as_interrupt():
        print(format_summary(run_rollouts(config, out=out, episodes=episodes, workers=workers, address=address,
                                          progress=True, break_lease=break_lease)))
    return 0


__all__ = ["format_summary", "rollout_main", "run_rollouts"]
