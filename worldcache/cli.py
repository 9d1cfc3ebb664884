"""`worldcache` command line. Each subcommand imports its module lazily so `--help` is instant."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import time

    import torch

    from .cache import load_policy
    from .dit import DiT
    from .sampler import default_scheduler, denoise
    from .tiny import tiny_inputs, tiny_transformer

    dit = DiT(tiny_transformer(seed=args.seed, num_layers=8, heads=4, head_dim=32))
    noise, cond, emb, _ = tiny_inputs(batch=1, height=16, width=20, seed=args.seed)
    kw = dict(num_steps=args.steps, cond_latents=cond, num_cond_frames=1)
    rows = []
    for spec in ["none", *args.cache]:
        policy = load_policy(spec)
        start = time.perf_counter()
        out = denoise(dit, default_scheduler(), noise, emb, policy=policy, **kw)
        rows.append((policy.name, time.perf_counter() - start, out))
    base_t, base = rows[0][1], rows[0][2].latents
    print(f"{'policy':<12} {'time_s':>8} {'speedup':>8} {'computed':>9} {'rel_err':>8}")
    for name, t, out in rows:
        err = float((out.latents - base).abs().mean() / base.abs().mean())
        print(f"{name:<12} {t:8.3f} {base_t / t:8.2f} {out.computed_fraction:9.2f} {err:8.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldcache", description="Training-free caching for video world models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="cached vs. uncached denoising on a small random Cosmos DiT")
    d.add_argument("--cache", nargs="*", default=["worldcache", "dicache"],
                   help="cache policy names or YAML files (default: worldcache dicache)")
    d.add_argument("--steps", type=int, default=35)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .cache import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"worldcache: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
