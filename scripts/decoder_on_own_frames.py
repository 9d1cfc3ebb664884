"""Fine-tune a checkpoint's state decoder on the world model's own frames as well as the real ones.

The env's reward reads positions off *predicted* frames, which are softer than real ones and lose the thin forearm
over a rollout; a decoder trained on real frames alone then misreads them (README, Benchmarks, Fidelity). This
predicts open-loop windows of `--chunks` chunks from training episodes of the store (the trainer's split: the last
`--holdout` fraction of the episode ids is never used), each from a real frame and the real actions, writes them
beside the real training episodes into one store (predicted frames with the simulator's states), and fine-tunes
the checkpoint's decoder on it (`train_state_decoder`, init from the checkpoint's decoder).

    python scripts/decoder_on_own_frames.py --data data/pusher2.zarr --store data/own_frames.zarr \\
        --out runs/own_decoder --episodes 120 --steps 3000   # the bundled decoder (after DiT run 5): ~12 min, 2 cores
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from worldcache.rollouts.store import EpisodeStore
from worldcache.scene import check_scene
from worldcache.seeding import derived_seed
from worldcache.state_decoder import train_state_decoder
from worldcache.train import load_episodes, split
from worldcache.world_model import BUNDLED, WorldModel


def write_own_frames(model: WorldModel, train: list[dict], store_path: str, episodes: int, chunks: int,
                     num_steps: int, batch: int = 8, stride: int = 1) -> int:
    """The real training episodes, then the model's predictions of windows at steps 0 and `length` / 2 of
    `episodes` of them: the first, or every `stride`-th (a store of several datasets one after another); returns the
    number of predicted windows. Window (episode e, step t) draws the noise `derived_seed(e, t)`. (Before
    2026-12-07 every window of a batch drew the batch's offset as its seed, so a batch's windows shared one noise;
    the bundled decoder was fine-tuned on frames predicted that way.)"""
    if Path(store_path).exists():  # never delete what is there: it may be the training data, or anything
        raise FileExistsError(f"{store_path} exists: give a new --store path (this script writes a new store)")
    store = EpisodeStore.create(store_path, attrs={"fps": 20.0})
    for i, ep in enumerate(train):
        t = len(ep["actions"])
        store.write_episode(f"a{i:04d}", ep["obs"], ep["actions"], np.zeros(t, np.float32), np.zeros(t, bool),
                            np.zeros(t, bool), extras={"state": ep["state"]})
    length = chunks * model.spec.chunk
    wins = [(e, t) for e in range(len(train))[::stride][:episodes] for t in (0, length // 2)
            if t + length <= len(train[e]["actions"])]
    if not wins:
        raise ValueError(f"no training episode has {length} steps: use fewer --chunks")
    for j in tqdm(range(0, len(wins), batch), desc="predict own frames", unit="batch"):
        part = wins[j:j + batch]
        starts = np.stack([train[e]["obs"][t] for e, t in part])
        acts = np.stack([train[e]["actions"][t:t + length] for e, t in part])
        with torch.no_grad():  # window (e, t) draws its own noise, whatever its batch or the options
            frames, _ = model.rollout(starts, acts, num_steps=num_steps,
                                      seed=[derived_seed(e, t) for e, t in part])
        for (e, t), f, s0 in zip(part, frames.cpu().numpy(), starts):
            store.write_episode(f"b{e:04d}_{t:02d}", np.concatenate([s0[None], f]), train[e]["actions"][t:t + length],
                                np.zeros(length, np.float32), np.zeros(length, bool), np.zeros(length, bool),
                                extras={"state": train[e]["state"][t:t + length + 1]})
    return len(wins)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="model and decoder to start from (default: the bundled model)")
    p.add_argument("--data", required=True, help="the model's training store (with per-frame states)")
    p.add_argument("--store", required=True, help="where to write the real + predicted training store")
    p.add_argument("--out", required=True, help="folder for the fine-tuned state decoder")
    p.add_argument("--episodes", type=int, default=120, help="training episodes to predict 2 windows of")
    p.add_argument("--stride", type=int, default=1, help="predict every STRIDE-th training episode (default: the "
                   "first EPISODES), so a store of two datasets one after another has windows of both")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--denoise-steps", type=int, default=8, help="8 land ~54 dB from 35 on the bundled model")
    p.add_argument("--holdout", type=float, default=0.1, help="the trainer's held-out fraction, never used here")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--compile", action="store_true", help="compiled DiT blocks for the rollouts (faster on CPU; the "
                   "predicted frames equal up to float rounding)")
    args = p.parse_args(argv)
    if args.stride < 1 or args.episodes < 1:
        p.error("--stride and --episodes must be >= 1")
    model = WorldModel.from_pretrained(args.checkpoint, compile=args.compile)
    episodes, attrs = load_episodes(args.data)
    check_scene(model.spec.scene, attrs, args.data)  # real frames of another view would teach the wrong reading
    train, _ = split(episodes, args.holdout)
    n = write_own_frames(model, train, args.store, args.episodes, args.chunks, args.denoise_steps,
                         stride=args.stride)
    res = train_state_decoder(args.store, None, steps=args.steps, batch_size=args.batch, lr=args.lr, holdout=0.0,
                              seed=0, init_from=Path(args.checkpoint or BUNDLED))
    # it learned the model's view (its frames and the real ones of its scene), whatever its start had: say so, as
    # the env and evaluate-policies check it (the store of own frames has no make-data record to take it from)
    res["decoder"].config.scene = model.spec.scene
    res["decoder"].save(args.out)  # saved once, with that label
    print(json.dumps({"predicted_windows": n, "train_frames": res["train_frames"],
                      "final_loss": float(np.mean(res["losses"][-50:])), "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
