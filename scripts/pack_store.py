"""Pack an episode store into one small file and back, to move training data to a GPU machine.

The Zarr store compresses each frame on its own (~5x); rendered episodes compress ~50x as a whole, so a 400-episode
training store of ~90 MB packs into ~10 MB (xz over one uncompressed npz).

    python scripts/pack_store.py pack data/pusher.zarr data/pusher.npz.xz
    python scripts/pack_store.py unpack data/pusher.npz.xz data/pusher.zarr
"""
from __future__ import annotations

import io
import json
import lzma
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldcache.rollouts.store import _RESERVED_EP_ATTRS, EpisodeStore

CORE = ("obs", "actions", "rewards", "terminated", "truncated")


def pack(store_path: str, out: str) -> None:
    store = EpisodeStore(store_path, mode="r")
    arrays, meta = {}, {"attrs": dict(store.attrs), "episodes": {}}
    for eid in tqdm(sorted(store.episode_ids()), desc="pack", unit="ep"):
        ep = store.load_episode(eid)
        attrs = {k: v for k, v in ep.pop("attrs").items() if k not in ("packed", *_RESERVED_EP_ATTRS)}
        meta["episodes"][eid] = {"attrs": attrs, "extras": [k for k in ep if k not in CORE]}
        arrays.update({f"{eid}/{k}": v for k, v in ep.items()})
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # .dev/ does not exist in a fresh checkout
    with lzma.open(out, "wb", preset=6) as f:
        f.write(buf.getvalue())


def unpack(packed: str, store_path: str) -> None:
    with lzma.open(packed, "rb") as f:
        data = np.load(io.BytesIO(f.read()))
    meta = json.loads(data["__meta__"].tobytes())
    store = EpisodeStore(store_path, mode="a")
    # the store's own format keys are this code's: a pack of an older store unpacks into the current layout
    attrs = {k: v for k, v in meta["attrs"].items() if k not in ("format_version", "kind")}
    if len(store) and any(store.attrs.get(k) != v for k, v in attrs.items()):  # another dataset's store
        sys.exit(f"{store_path} holds episodes of another dataset (its attrs differ from the pack's): unpack into "
                 f"a new path")
    store.attrs.update(attrs)
    for eid, info in tqdm(meta["episodes"].items(), desc="unpack", unit="ep"):
        if store.exists(eid):  # an interrupted unpack resumes: complete episodes stay, a partial one is rewritten
            continue
        core = {k: data[f"{eid}/{k}"] for k in CORE}
        store.write_episode(eid, **core, extras={k: data[f"{eid}/{k}"] for k in info["extras"]}, attrs=info["attrs"])


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
