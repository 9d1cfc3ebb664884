"""What one model call of a world model costs on this machine, for several checkpoints in one process.

Each repeat predicts one chunk at 2 and at 12 denoising steps from one of the checkpoint's own start frames; a call
is the difference / 10, and the rest of the 2-step prediction (VAE, embedding the actions, ...) gives the DiT's
share of a 35-step env step. Checkpoints alternate within each repeat, so machine drift hits them alike: compare
figures of one run only, and best the per-repeat ratios (the last column), which cancel drift between repeats.
`--per-token` also times each checkpoint as models ran when issue 13's cost goal was set: diffusers' per-token
adaLN modulation (what `FrameModulation` replaces) and the loop under `no_grad` (what `inference_mode` replaces);
`--no-grad` also with only the loop under `no_grad`; `--compile` also with its DiT's blocks compiled
(`WorldModel.compile_dit`; compiled before the first repeat, so the timed calls never compile).

    python scripts/call_cost.py                                   # the bundled model
    python scripts/call_cost.py worldcache/assets/pusher /tmp/old/worldcache/assets/pusher --per-token --compile
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from worldcache import dit as dit_module
from worldcache import world_model
from worldcache.world_model import BUNDLED, WorldModel


@contextlib.contextmanager
def per_token_modulation():
    """diffusers' own layout: per-frame embeddings expanded to every token before the blocks."""
    embed = dit_module.DiT.embed

    def expanded(self, *args, **kwargs):
        h, ctx = embed(self, *args, **kwargs)
        if ctx.embedded_timestep.ndim == 3 and ctx.embedded_timestep.shape[1] != h.shape[1]:
            t, hh, ww = ctx.grid
            ctx.embedded_timestep, ctx.temb = (v.view(len(v), t, 1, 1, -1).expand(-1, -1, hh, ww, -1).flatten(1, 3)
                                               for v in (ctx.embedded_timestep, ctx.temb))
        return h, ctx

    dit_module.DiT.embed = expanded
    try:
        yield
    finally:
        dit_module.DiT.embed = embed


@contextlib.contextmanager
def no_grad_loop():
    """The denoising loop under `torch.no_grad` instead of `torch.inference_mode` (before the seventeenth session)."""
    loop = world_model.denoise
    world_model.denoise = torch.no_grad()(loop.__wrapped__)
    try:
        yield
    finally:
        world_model.denoise = loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", default=[str(BUNDLED)])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-token", action="store_true",
                    help="also time as models ran when the cost goal was set (per-token adaLN, loop under no_grad)")
    ap.add_argument("--no-grad", action="store_true", help="also time with the loop under no_grad")
    ap.add_argument("--compile", action="store_true", help="also time the model with its DiT's blocks compiled")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {path: WorldModel.from_pretrained(path) for path in args.checkpoints}
    starts = {path: np.load(f"{path}/start_frames.npy") for path in args.checkpoints}
    modes = (["per-frame"] + (["per-token"] if args.per_token else []) + (["no-grad"] if args.no_grad else [])
             + (["compiled"] if args.compile else []))
    # each mode below sets the blocks it runs
    compiled = {path: model.compile_dit().dit.compiled_blocks for path, model in models.items()} if args.compile else {}
    calls = {(p, m): [] for p in models for m in modes}
    shares = {(p, m): [] for p in models for m in modes}
    for rep in range(args.repeats):
        for path, model in models.items():
            s = model.spec
            frame = starts[path][rep % len(starts[path])][None]
            actions = np.random.default_rng(rep).uniform(-1, 1, (1, s.chunk, s.action_dim)).astype(np.float32)
            for mode in modes:
                model.dit.compiled_blocks = compiled[path] if mode == "compiled" else None
                with contextlib.ExitStack() as stack:
                    if mode == "per-token":
                        stack.enter_context(per_token_modulation())
                    if mode in ("per-token", "no-grad"):
                        stack.enter_context(no_grad_loop())
                    if rep == 0:
                        model.predict(frame, actions, num_steps=2)  # warm-up
                    t0 = time.perf_counter()
                    model.predict(frame, actions, num_steps=2)
                    t2 = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    model.predict(frame, actions, num_steps=12)
                    t12 = time.perf_counter() - t0
                call = (t12 - t2) / 10 * 1e3
                rest = t2 * 1e3 - 2 * call
                calls[(path, mode)].append(call)
                shares[(path, mode)].append(35 * call / (35 * call + rest))
    base = next(iter(calls))
    for (path, mode), v in calls.items():
        # the machine's speed drifts over minutes; a ratio within each repeat cancels the drift
        ratio = statistics.median(np.divide(v, calls[base]))
        print(f"{path} [{mode}]: model call ms {np.round(v, 1).tolist()} median {statistics.median(v):.1f}; "
              f"DiT share of a 35-step env step {statistics.median(shares[(path, mode)]):.3f}; "
              f"median ratio per repeat to {base[0]} [{base[1]}] {ratio:.3f}")


if __name__ == "__main__":
    main()
