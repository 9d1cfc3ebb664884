"""Zarr (v3) episode store for world-model data and rollouts, on a local disk or any fsspec URL.

In the spirit of diffusion_policy's ReplayBuffer, but one group per episode so that
independent writers (e.g. Ray workers on several machines) never touch the same chunk or
metadata file. The location is a local path, ``file://...``, or a URL zarr's fsspec store
understands (``s3://bucket/x.zarr``, ``gs://...``; ``storage_options`` go to fsspec, e.g.
``{"endpoint_url": ...}`` for an S3-compatible server).

Layout (``FORMAT_VERSION = 2``; version 1 stores, without packing, shards or index, open read-only)::

    <path>/                         root group
        attrs: format_version=2, kind="worldcache-episodes", + free-form user attrs
               (model hash, env config, seeds, ...; optional frame_shape=[H,W,3] and
               action_dim=A, which write_episode then enforces)
        episodes/<episode_id>/      one group per episode (id chosen by the caller)
            obs         (T+1, H, W, 3) uint8   frames incl. the reset frame
            actions     (T, ...)       float32 (T, A), or (T, chunk, A) for chunked actions
            rewards     (T,)           float32
            terminated  (T,)           bool
            truncated   (T,)           bool
            <extra>     (T, ...) or (T+1, ...)  any extra per-step / per-frame arrays,
                                       e.g. "cache/computed" (T, n_calls) bool, "model_ms"
            attrs: num_steps=T, extras=[names], packed={prefix: [[field, dtype]]}, user attrs,
                   and complete=True (set LAST)
        index.json                  {"episodes": {id: T}}: complete episodes at the last consolidate()
        lease.json                  while a driver holds the store (see below)

Files: a store of a million episodes must not need a million metadata reads to be listed,
nor tens of files per episode. So: extras named ``prefix/field`` with one shape and a
float64-exact dtype (e.g. the per-call cache statistics ``cache/computed``, ``cache/drift``,
...) are packed into one array ``prefix`` (shape + (fields,), float32 where exact, else
float64) and unpacked by ``load_episode``/``episode_array`` with their own dtypes; uint8
image arrays (``obs``, ``frames``) are one zarr v3 shard file each, with inner chunks of ~16
frames (Blosc-zstd level 3, no shuffle: consecutive frames are nearly identical, so 16
frames compress far better together, and reading a few frames decodes one inner chunk);
other per-step arrays are one chunk each. ``consolidate()`` writes ``index.json``, so that
``len``/``episode_ids`` read it plus one directory listing (names only) and the metadata of
the episodes written since.

Atomic visibility: all arrays are written first and the episode group's ``complete=True``
attribute last (zarr's LocalStore writes metadata files atomically via rename, from zarr 3.1.3; an object
store writes an object whole). Readers (``episode_ids``, ``load_episode``, ``len``,
iteration) only see complete episodes. Writing an id that is already complete raises
``FileExistsError`` (check ``exists`` to skip); an incomplete leftover for the same id (a
crashed writer) is deleted and rewritten. Root attrs should be set by one process only (each
attrs write rewrites the root metadata file).

One writer per store: a driver takes the store's lease (``lease.json``: a random token, host,
pid, time) with ``acquire_lease`` and passes the token to its workers (``EpisodeStore(...,
mode="a", lease=token)``). While a lease exists, only its holders may write or delete: a second driver
is refused with `LeaseError` naming the holder; ``acquire_lease(..., break_lease=True)``
replaces a stale lease of a dead driver. ``remove_partial`` (leftover incomplete episodes)
needs the lease. ``make-data`` takes the lease too, for its whole run. A store without a lease is written
as before. On a local disk the lease is created exclusively; on an object store it is written and read back
(last writer wins: two drivers starting in the same instant are not excluded).

This module deliberately has no intra-package imports (only numpy + zarr).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import FsspecStore, LocalStore

FORMAT_VERSION = 2  # 2: packed statistics, sharded images, index.json, lease.json
READ_ONLY_VERSIONS = (1,)  # plain layout: still readable
KIND = "worldcache-episodes"
OBS_CHUNK_FRAMES = 16
_RESERVED_EP_ATTRS = ("complete", "num_steps", "extras")
_CORE = ("obs", "actions", "rewards", "terminated", "truncated")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


LEASE = "lease.json"
INDEX = "index.json"
_PACKABLE = (np.bool_, np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.float16, np.float32,
             np.float64)  # exact in float64
_FLOAT32_EXACT = (np.bool_, np.int8, np.int16, np.uint8, np.uint16, np.float16, np.float32)


class StoreFormatError(ValueError):
    """The path is not an episode store, or one with an unsupported format version."""


class LeaseError(FileExistsError):
    """Another driver holds the store's lease (its lease file exists), or this writer lost it."""


def _local_path(url: str) -> str | None:
    """The local path of `url` (a plain path or file://), or None for a remote URL."""
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if "://" in url else url


def _remote_options(storage_options: dict | None) -> dict:
    # Other processes add episodes: a cached directory listing (s3fs, gcsfs) would hide them.
    return {"use_listings_cache": False, **(storage_options or {})}


def _zarr_store(url: str, read_only: bool, storage_options: dict | None):
    local = _local_path(url)
    if local is not None:
        return LocalStore(local, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=_remote_options(storage_options), read_only=read_only)


def _fs(url: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and root path of a store location (for the files zarr does not manage)."""
    local = _local_path(url)
    if local is not None:
        return fsspec.filesystem("file"), os.path.abspath(local)
    return fsspec.core.url_to_fs(url, **_remote_options(storage_options))


def _group_names(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Episode group names under a store's episodes/ from one directory listing (no metadata reads). Only
    directories with an episode id's name: a stray file or folder (.DS_Store, .ipynb_checkpoints) is not an episode."""
    try:
        entries = fs.ls(f"{root}/episodes", detail=True)
    except FileNotFoundError:
        return []
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    return [n for n in names if _ID_RE.match(n)]


def read_lease(url: str, storage_options: dict | None = None) -> dict | None:
    """The lease file's content; None without one; ``{"unreadable": True}`` for one that is not a lease (left
    empty or half-written by a driver that died while taking it, or by a full disk)."""
    fs, root = _fs(str(url), storage_options)
    try:
        doc = json.loads(fs.cat_file(f"{root}/{LEASE}"))
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a file where the store should be
        raise StoreFormatError(f"{url}: not a folder (a file is there, or at a folder above it): an episode store "
                               f"is a folder") from None
    except ValueError:  # json's decode error, or bytes that are not UTF-8
        return {"unreadable": True}
    return doc if isinstance(doc, dict) else {"unreadable": True}


def holds_lease(url: str, token: str, storage_options: dict | None = None) -> bool:
    """Whether the lease file at `url` is there and holds `token` (as the one writing it sees it)."""
    return (read_lease(str(url), storage_options) or {}).get("token") == token


def _running(pid) -> bool:
    """Whether process `pid` exists on this host (one of another user counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True  # another user's, or no pid to judge by: taken as alive
    return True


def acquire_lease(url: str, storage_options: dict | None = None, break_lease: bool = False) -> str:
    """Take the store's lease; returns its token. Raises `LeaseError` while another holds it (unless
    `break_lease`: for a lease left by a driver that died)."""
    url = str(url)
    fs, root = _fs(url, storage_options)
    path, token = f"{root}/{LEASE}", uuid.uuid4().hex
    doc = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    old = read_lease(url, storage_options)
    if old is not None and not break_lease:
        if old.get("unreadable"):
            raise LeaseError(f"{url}: its lease file {LEASE} is unreadable (empty or half-written: a driver died "
                             f"while taking it). If no driver is writing this store, rerun with --break-lease "
                             f"(break_lease=True)")
        age = time.time() - float(old.get("since", 0))
        if old.get("host") == socket.gethostname() and not _running(old.get("pid")):
            raise LeaseError(f"{url}: its lease was left by pid {old.get('pid')} on this host, {age / 60:.1f} min "
                             f"ago, which is no longer running here (killed?, or a container of the same host name). "
                             f"If no other machine or container writes this store, rerun with --break-lease "
                             f"(break_lease=True)")
        raise LeaseError(f"{url}: another driver holds this store's lease (host {old.get('host')}, pid "
                         f"{old.get('pid')}, {age / 60:.1f} min ago). One writer per store: wait for it, or if that "
                         f"driver is dead, rerun with --break-lease (break_lease=True)")
    fs.makedirs(root, exist_ok=True)
    local = _local_path(url)
    if local is not None:
        # written whole to a file of its own, then linked (exclusive: of two drivers racing here, one fails) or,
        # breaking a lease, renamed into place: the lease file is never seen empty or half-written
        tmp = f"{path}.{token}.tmp"
        with open(tmp, "w") as f:
            f.write(doc)
        try:
            if break_lease:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        except FileExistsError:
            raise LeaseError(f"{url}: another driver took the lease just now") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, doc.encode())
    if not holds_lease(url, token, storage_options):
        raise LeaseError(f"{url}: another driver took the lease just now")
    return token


def release_lease(url: str, token: str, storage_options: dict | None = None) -> None:
    """Give the lease back (only if `token` still holds it)."""
    fs, root = _fs(str(url), storage_options)
    if holds_lease(url, token, storage_options):
        fs.rm_file(f"{root}/{LEASE}")


def _obs_codec() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")  # shuffling cannot help 1-byte pixels


class EpisodeStore(Mapping):
    """Episode store at a local path or fsspec URL. Mapping-like: ``store[id]`` loads an episode,
    ``id in store``, ``len(store)`` and iteration cover complete episodes only."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", storage_options: dict | None = None,
                 lease: str | None = None):
        """Open a store. mode "r" (the default: a misspelt path is an error, not a new empty store): read-only,
        must exist. mode "a": read/write; the store is created when ``path`` does not exist yet. `lease`: the
        token of the lease this writer acts under (see `acquire_lease`)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r} (use EpisodeStore.create to overwrite)")
        if lease is not None and mode == "r":
            raise ValueError("a lease is a writer's: open the store with mode='a' to write under it")
        self.path = os.fspath(path)
        self.mode, self.storage_options, self.lease = mode, storage_options, lease
        try:
            self._root = self._open_root(self._store(mode == "r"), mode)
        except FileNotFoundError:
            if mode == "r":
                raise FileNotFoundError(f"no episode store at {self.path!r}") from None
            self._root = self._init_root(self._store(False), {}, overwrite=False)
        self._episodes = self._root.require_group("episodes") if mode == "a" else self._root["episodes"]
        self._indexed: dict[str, int] | None = None

    def _store(self, read_only: bool):
        return _zarr_store(self.path, read_only, self.storage_options)

    # ---------------------------------------------------------------- creation / opening
    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict[str, Any] | None = None,
               overwrite: bool = False, storage_options: dict | None = None) -> "EpisodeStore":
        """Create a new empty store (error if ``path`` exists, unless ``overwrite``; `LeaseError` while a writer
        holds the store's lease, which overwriting would delete with its episodes)."""
        path = os.fspath(path)
        fs, root = _fs(path, storage_options)
        if fs.exists(root):
            if not overwrite:
                raise FileExistsError(f"{path!r} already exists (pass overwrite=True to replace it)")
            held = read_lease(path, storage_options) if fs.isdir(root) else None  # a file there: replaced
            if held is not None:
                who = ("an unreadable lease (a writer died while taking it?)" if held.get("unreadable") else
                       f"a writer holds this store's lease (host {held.get('host')}, pid {held.get('pid')})")
                raise LeaseError(f"{path}: {who}: overwriting would delete what it writes; wait for it, or if it is "
                                 f"dead, delete {LEASE} first")
            fs.rm(root, recursive=True)
        cls._init_root(_zarr_store(path, False, storage_options), attrs or {}, overwrite=True)
        return cls(path, mode="a", storage_options=storage_options)

    @staticmethod
    def _init_root(store, attrs: dict[str, Any], overwrite: bool) -> zarr.Group:
        # not "w-": a new store's folder may already hold the lease of the driver creating it
        root = zarr.open_group(store, mode="w" if overwrite else "a", zarr_format=3)
        root.attrs.update({**attrs, "format_version": FORMAT_VERSION, "kind": KIND})
        root.require_group("episodes")
        return root

    def _open_root(self, store, mode: str) -> zarr.Group:
        path = self.path
        try:
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+", zarr_format=3)
        except Exception as e:  # missing/invalid zarr.json, or a zarr v2 / array path
            fs, loc = _fs(path, self.storage_options)
            # nothing there yet, or only the lease of the driver about to create the store
            there = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(loc, detail=False)] if fs.exists(loc) else []
            if isinstance(e, FileNotFoundError) and not [n for n in there if not n.startswith(LEASE)]:
                raise FileNotFoundError(path) from None
            raise StoreFormatError(f"{path!r} is not a worldcache episode store (zarr v3 group): {e}") from e
        kind, version = root.attrs.get("kind"), root.attrs.get("format_version")
        if kind != KIND:
            raise StoreFormatError(f"{path!r} is a zarr group but not a worldcache episode store (kind={kind!r})")
        if version != FORMAT_VERSION and not (mode == "r" and version in READ_ONLY_VERSIONS):
            also = f", and reads {list(READ_ONLY_VERSIONS)} read-only" if version in READ_ONLY_VERSIONS else ""
            raise StoreFormatError(
                f"{path!r} has format_version={version!r}; this code writes format_version={FORMAT_VERSION}{also}. "
                f"Write into a new store (e.g. regenerate it with the command that made it)")
        if "episodes" not in root:
            raise StoreFormatError(f"{path!r} has no 'episodes' group")
        return root

    # ---------------------------------------------------------------- reading
    @property
    def attrs(self):
        """Root attributes (dict-like, persisted on assignment)."""
        return self._root.attrs

    def _index(self) -> dict[str, int]:
        """{id: num_steps} of the episodes complete at the last `consolidate` (``index.json``; {} without one).
        Complete episodes are never removed, so a cached copy only misses newer ones."""
        if self._indexed is None:
            fs, root = _fs(self.path, self.storage_options)
            try:
                self._indexed = dict(json.loads(fs.cat_file(f"{root}/{INDEX}"))["episodes"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):  # none, or cut short or not an index:
                self._indexed = {}                                         # each episode's own attrs are read
        return self._indexed

    def _group_names(self) -> list[str]:
        return _group_names(*_fs(self.path, self.storage_options))

    def _complete(self) -> dict[str, int]:
        """{id: num_steps} of every complete episode: the index (less any group deleted since), plus the groups
        written since (attrs read)."""
        self._indexed = None  # re-read: another process may have consolidated
        names = self._group_names()
        present = set(names)
        done = {k: v for k, v in self._index().items() if k in present}
        for name in names:
            if name not in done:
                try:
                    attrs = self._episodes[name].attrs
                except KeyError:  # removed meanwhile
                    continue
                except ValueError:  # its zarr.json cut short (a crash on a file system without atomic renames)
                    continue  # partial: `remove_partial` deletes it and a run writes it again
                if attrs.get("complete") is True:
                    done[name] = int(attrs["num_steps"])
        return done

    def episode_ids(self) -> list[str]:
        """Sorted ids of complete episodes."""
        return sorted(self._complete())

    def exists(self, episode_id: str) -> bool:
        """True when the episode was written completely (its own attrs: the index may be older than a deletion)."""
        if not isinstance(episode_id, str) or not _ID_RE.match(episode_id):  # ("..", "a/b"): no episode's id
            return False
        try:
            return self._episodes[episode_id].attrs.get("complete") is True
        except (KeyError, ValueError):  # none, or its zarr.json unreadable (partial, as `_complete` reads it)
            return False

    @property
    def num_steps(self) -> int:
        """Total number of steps (actions) over complete episodes."""
        return sum(self._complete().values())

    def _group(self, episode_id: str) -> zarr.Group:
        if not self.exists(episode_id):
            raise KeyError(f"no complete episode {episode_id!r} in {self.path!r}")
        return self._episodes[episode_id]

    def episode_array(self, episode_id: str, name: str):
        """The lazy zarr array, for reading single steps/frames without loading the episode (a packed
        per-step statistic, see `write_episode`, comes back as numpy)."""
        grp = self._group(episode_id)
        names = list(_CORE) + list(grp.attrs.get("extras", []))
        if name not in names:
            raise KeyError(f"episode {episode_id!r} has no array {name!r}; available: {names}")
        packed = grp.attrs.get("packed", {})
        prefix = name.rsplit("/", 1)[0]
        if "/" in name and prefix in packed:
            return _unpack(grp[prefix][...], packed[prefix], prefix)[name]
        return grp[name]

    def load_episode(self, episode_id: str, keys: list[str] | None = None) -> dict[str, Any]:
        """All arrays of an episode as numpy (or only ``keys``: a list of names, or one), plus ``"attrs"`` (a dict)."""
        grp = self._group(episode_id)
        attrs = dict(grp.attrs)
        names = list(_CORE) + list(attrs.get("extras", []))
        if isinstance(keys, str):  # one name, not its letters
            keys = [keys]
        if keys is not None:
            unknown = set(keys) - set(names)
            if unknown:
                raise KeyError(f"episode {episode_id!r} has no arrays {sorted(unknown)}; available: {names}")
            names = [n for n in names if n in keys]
        packed = attrs.get("packed", {})
        out: dict[str, Any] = {}
        for prefix, fields_ in packed.items():
            if any(f"{prefix}/{f}" in names for f, _ in fields_):
                out.update(_unpack(grp[prefix][...], fields_, prefix))
        out = {n: out[n] if n in out else grp[n][...] for n in names}
        out["attrs"] = attrs
        return out

    def __getitem__(self, episode_id: str) -> dict[str, Any]:
        return self.load_episode(episode_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self.episode_ids())

    def __len__(self) -> int:
        return len(self._complete())

    def __contains__(self, episode_id: object) -> bool:
        return isinstance(episode_id, str) and self.exists(episode_id)

    def __repr__(self) -> str:
        return f"EpisodeStore({self.path!r}, episodes={len(self)}, mode={self.mode!r})"

    # ---------------------------------------------------------------- writing
    def write_episode(self, episode_id: str, obs, actions, rewards, terminated, truncated,
                      extras: dict[str, np.ndarray] | None = None,
                      attrs: dict[str, Any] | None = None) -> None:
        """Write one episode; it becomes visible only once every array is written."""
        if self.mode == "r":
            raise PermissionError(f"store {self.path!r} is open read-only")
        if not isinstance(episode_id, str) or not _ID_RE.match(episode_id):
            raise ValueError(f"episode id must match {_ID_RE.pattern} (a single path component), got {episode_id!r}")
        arrays = self._validate(obs, actions, rewards, terminated, truncated, extras or {})
        attrs = dict(attrs or {})
        clash = [k for k in _RESERVED_EP_ATTRS if k in attrs]
        if clash:
            raise ValueError(f"episode attrs {clash} are reserved by the store")
        if self.exists(episode_id):
            raise FileExistsError(f"episode {episode_id!r} already exists in {self.path!r}")
        self.check_lease()
        try:
            leftover = episode_id in self._episodes  # an incomplete group from a crashed writer
        except ValueError:  # one whose zarr.json is cut short (zarr reads it here); deleting it reads nothing
            leftover = True
        if leftover:
            del self._episodes[episode_id]

        T = arrays["actions"].shape[0]
        extra_names = [n for n in arrays if n not in _CORE]
        packs = _packs(arrays)
        if packs:
            attrs["packed"] = {p: [[n.rsplit("/", 1)[1], arrays[n].dtype.str] for n in names]
                               for p, names in packs.items()}
        grp = self._episodes.create_group(episode_id, attributes=attrs)
        for prefix, names in packs.items():  # one array (one file) for a group of per-step statistics
            wide = any(arrays[n].dtype.type not in _FLOAT32_EXACT for n in names)
            data = np.stack([arrays.pop(n).astype(np.float64 if wide else np.float32) for n in names], axis=-1)
            grp.create_array(prefix, data=data, chunks=data.shape)
        for name, arr in arrays.items():
            if arr.dtype == np.uint8 and arr.ndim >= 4:  # images: one shard file, inner chunks of ~16 frames
                per_row = int(np.prod(arr.shape[1:-3], dtype=int))  # frames per row: 1, or chunk for (T, chunk, ...)
                inner = (min(max(1, OBS_CHUNK_FRAMES // per_row), arr.shape[0]),) + arr.shape[1:]
                shard = (-(-arr.shape[0] // inner[0]) * inner[0],) + arr.shape[1:]
                grp.create_array(name, data=arr, chunks=inner, shards=shard, compressors=_obs_codec())
            else:
                grp.create_array(name, data=arr, chunks=arr.shape)  # tiny: one chunk per episode
        self.check_lease()  # again: a driver that broke the lease meanwhile may have removed these arrays as partial
        self._mark_complete(grp, T, extra_names)
        if "obs" not in self._episodes[episode_id]:  # removed between the check and the mark, which made the group
            del self._episodes[episode_id]           # again: a complete marker over nothing
            raise LeaseError(f"{self.path}: episode {episode_id!r} was removed while it was written (its store's "
                             f"lease was broken by another driver); this writer no longer holds it")

    def check_lease(self) -> None:
        """Writes need the store's lease when it has one: raise `LeaseError` if another driver holds it."""
        held = read_lease(self.path, self.storage_options)
        if held is not None and held.get("unreadable"):
            raise LeaseError(f"{self.path}: the store's lease file {LEASE} is unreadable; this writer does not hold it")
        if held is not None and held.get("token") != self.lease:
            raise LeaseError(f"{self.path}: the store's lease is held by another driver (host {held.get('host')}, "
                             f"pid {held.get('pid')}); this writer does not hold it")

    def partial_ids(self) -> list[str]:
        """Ids of incomplete episode groups (leftovers of crashed writers)."""
        done = self._complete()
        return sorted(n for n in self._group_names() if n not in done)

    def consolidate(self) -> int:
        """Record every complete episode in ``index.json``, so that listing the store (``len``, ids) reads one
        file instead of one metadata file per episode. Writers call it when a run ends; episodes written later
        are still found (their metadata is read). Returns the number of episodes indexed."""
        if self.mode == "r":
            raise PermissionError(f"store {self.path!r} is open read-only")
        self.check_lease()
        done = self._complete()
        fs, root = _fs(self.path, self.storage_options)
        tmp = f"{root}/{INDEX}.{uuid.uuid4().hex}.tmp"
        fs.pipe_file(tmp, json.dumps({"episodes": dict(sorted(done.items()))}).encode())
        fs.mv(tmp, f"{root}/{INDEX}")  # readers never see a half-written index
        self._indexed = done
        return len(done)

    def remove_partial(self) -> list[str]:
        """Delete every incomplete episode group and index the complete ones; needs the store's lease (no live
        writer can own them). The index then names no episode deleted by hand: written again and left partial by
        a crash, such an episode would otherwise read as complete, by its stale index entry."""
        if self.lease is None:
            raise LeaseError(f"{self.path}: removing partial episodes needs the store's lease (acquire_lease)")
        self.check_lease()
        ids = self.partial_ids()
        for name in ids:
            del self._episodes[name]
        self.consolidate()
        return ids

    @staticmethod
    def _mark_complete(grp: zarr.Group, T: int, extra_names: list[str]) -> None:
        # Last write of an episode: readers ignore the group until this attribute exists.
        grp.attrs.update({"num_steps": T, "extras": extra_names, "complete": True})

    def _validate(self, obs, actions, rewards, terminated, truncated, extras) -> dict[str, np.ndarray]:
        obs = np.asarray(obs)
        actions = np.asarray(actions)
        if obs.dtype != np.uint8:
            raise TypeError(f"obs must be uint8 (T+1, H, W, 3), got dtype {obs.dtype} shape {obs.shape}")
        if actions.ndim < 2 or not np.issubdtype(actions.dtype, np.floating):
            raise ValueError(f"actions must be a float (T, A) or (T, chunk, A) array, got dtype {actions.dtype} "
                             f"shape {actions.shape}")
        T = actions.shape[0]
        if T < 1:
            raise ValueError("an episode needs at least one step (actions has T=0 rows)")
        if obs.ndim != 4 or obs.shape[0] != T + 1 or obs.shape[-1] != 3:
            raise ValueError(f"obs must be (T+1, H, W, 3) = ({T + 1}, H, W, 3) for T={T} actions, got {obs.shape}")
        fs, ad = self._root.attrs.get("frame_shape"), self._root.attrs.get("action_dim")
        if fs is not None and list(obs.shape[1:]) != list(fs):
            raise ValueError(f"obs frames are {obs.shape[1:]} but this store holds frame_shape={tuple(fs)}")
        if ad is not None and actions.shape[-1] != ad:
            raise ValueError(f"actions has A={actions.shape[-1]} but this store holds action_dim={ad}")
        out = {"obs": obs, "actions": actions.astype(np.float32, copy=False)}
        for name, val in (("rewards", rewards), ("terminated", terminated), ("truncated", truncated)):
            val = np.asarray(val)
            if val.shape != (T,):
                raise ValueError(f"{name} must have shape (T,) = ({T},), got {val.shape}")
            if name == "rewards":
                if not np.issubdtype(val.dtype, np.number) or val.dtype == np.bool_:
                    raise TypeError(f"rewards must be numeric, got dtype {val.dtype}")
                val = val.astype(np.float32, copy=False)
            elif val.dtype != np.bool_:
                raise TypeError(f"{name} must be bool, got dtype {val.dtype}")
            out[name] = val
        for name, val in extras.items():
            if not isinstance(name, str) or name in _CORE or not all(_ID_RE.match(p) for p in name.split("/")):
                raise ValueError(f"bad extra array name {name!r} (a core name, or not a/b/c of simple names)")
            val = np.asarray(val)
            if val.ndim == 0 or val.shape[0] not in (T, T + 1):
                raise ValueError(f"extra {name!r} must have first dim T={T} (per step) or T+1 (per frame), "
                                 f"got {val.shape}")
            if val.dtype == object:
                raise TypeError(f"extra {name!r} has dtype object; use a numeric/bool array")
            out[name] = val
        for name in out:  # an array cannot hold another: "obs/x", or "s/a" beside "s/a/x"
            parts = name.split("/")
            if above := [p for p in ("/".join(parts[:k]) for k in range(1, len(parts))) if p in out]:
                raise ValueError(f"extra array {name!r} would lie inside the array {above[0]!r}: an array cannot "
                                 f"hold others; rename one")
        return out


def _packs(arrays: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Extras ``prefix/field`` that share a prefix, a shape and a float64-exact dtype: {prefix: names}."""
    groups: dict[str, list[str]] = {}
    for name in arrays:
        if "/" in name and name not in _CORE:
            groups.setdefault(name.rsplit("/", 1)[0], []).append(name)
    under = lambda p: [n for n in arrays if n.startswith(p + "/")]  # noqa: E731  (p/x/y too: p stays a group)
    return {p: names for p, names in groups.items()
            if len(names) > 1 and p not in arrays and len({arrays[n].shape for n in names}) == 1
            and all(arrays[n].dtype.type in _PACKABLE for n in names) and len(under(p)) == len(names)}


def _unpack(data: np.ndarray, fields_: list, prefix: str | None = None) -> dict[str, np.ndarray]:
    out = {}
    for j, (field_, dtype) in enumerate(fields_):
        out[f"{prefix}/{field_}" if prefix else field_] = data[..., j].astype(np.dtype(dtype))
    return out
