"""`worldcache` command line. Each subcommand imports its module lazily so `--help` is instant.

One name per meaning across all subcommands: ``--denoise-steps`` (denoising steps per prediction), ``--env-steps``
(env steps), ``--cache`` (cache policies), ``--control`` (control policies)."""
from __future__ import annotations

import argparse
import shlex
import sys

from .scene import SCENES, check_scene  # light: no MuJoCo


def _demo(args) -> int:
    import time

    from .cache import load_policy
    from .dit import DiT
    from .sampler import default_scheduler, denoise
    from .tiny import tiny_inputs, tiny_transformer

    dit = DiT(tiny_transformer(seed=args.seed, num_layers=8, heads=4, head_dim=32))
    noise, cond, emb, _ = tiny_inputs(batch=1, height=16, width=20, seed=args.seed)
    kw = dict(num_steps=args.denoise_steps, cond_latents=cond, num_cond_frames=1)
    # every policy first: a bad name fails before any run; each row is labelled as given (a YAML by its path)
    policies = [(str(spec), load_policy(spec)) for spec in ["none", *args.cache]]
    rows = []
    denoise(dit, default_scheduler(), noise, emb, **kw)  # untimed: first-call costs would pad the baseline's time
    for name, policy in policies:
        start = time.perf_counter()
        out = denoise(dit, default_scheduler(), noise, emb, policy=policy, **kw)
        rows.append((name, time.perf_counter() - start, out))
    base_t, base = rows[0][1], rows[0][2].latents
    w = max(12, *(len(name) for name, _, _ in rows))
    print(f"{'policy':<{w}} {'time_s':>8} {'speedup':>8} {'computed':>9} {'rel_err':>8}")
    for name, t, out in rows:
        err = float((out.latents - base).abs().mean() / base.abs().mean())
        print(f"{name:<{w}} {t:8.3f} {base_t / t:8.2f} {out.computed_fraction:9.2f} {err:8.4f}")
    return 0


def _make_data(args) -> int:
    from .interrupt import sigterm_as_interrupt
    from .mujoco_data import generate

    with sigterm_as_interrupt():  # a run stopped by timeout or a scheduler gives the store's lease back
        s = generate(args.out, episodes=args.episodes, steps=args.env_steps, seed=args.seed, height=args.height,
                     width=args.width, policy=args.policy, scene=args.scene, break_lease=args.break_lease)
    print(f"{s['path']}: {s['written']} episode(s) written, {s['skipped']} already there; {s['episodes_total']} in "
          f"the store" + (f"; {s['frames_per_s']:.0f} frames/s" if s["written"] else ""))
    return 0


def _train(args) -> int:
    from .train import TrainConfig, Trainer

    cfg = TrainConfig(data=args.data, out=args.out, stages=tuple(args.stages), vae_steps=args.vae_steps,
                      dit_steps=args.dit_steps, dit_batch=args.dit_batch, dit_lr=args.dit_lr,
                      decoder_steps=args.decoder_steps, seed=args.seed, threads=args.threads, device=args.device,
                      bf16=args.bf16, init_from=args.init_from, vae_from=args.vae_from, num_layers=args.layers,
                      continue_from=args.continue_from,
                      heads=args.heads, head_dim=args.head_dim, dit_minutes=args.dit_minutes,
                      vae_minutes=args.vae_minutes, vae_lr=args.vae_lr, vae_batch=args.vae_batch,
                      vae_decoder_only=args.vae_decoder_only, vae_handover=args.vae_handover,
                      compile=args.compile, cond_noise=args.cond_noise,
                      cond_blur=args.cond_blur,
                      self_cond=args.self_cond, self_cond_windows=args.self_cond_windows,
                      self_cond_source=args.self_cond_source,
                      eval_windows=args.eval_windows, dit_ema=args.dit_ema)
    from .interrupt import sigterm_as_interrupt

    command = shlex.join(["worldcache", *args.argv])  # as typed, runnable again (not this file's path)
    with sigterm_as_interrupt():  # a run stopped by timeout or a scheduler saves its stage's state, as on Ctrl-C
        out = Trainer(cfg, command=command).run()
    print(f"model written to {out}")
    return 0


def _convert(args) -> int:
    from .convert import convert

    summary = convert(args.transformer, args.vae, args.prompt_embeds, args.out, variant=args.variant,
                      unsafe_pickle=args.unsafe_pickle, action_low=args.action_low, action_high=args.action_high,
                      dtype=args.dtype, action_dim=args.action_dim, chunk=args.chunk, height=args.height,
                      width=args.width)
    print(summary.text())
    return 0


def _evaluate_model(args) -> int:
    import json

    from pathlib import Path

    from .bench import needs_calibration, warm_up
    from .bench.episodes import calibration_episode
    from .cache import load_policy
    from .quality import evaluate_open_loop, format_scores
    from .rollouts.store import EpisodeStore
    from .state_decoder import CONFIG_FILE, StateDecoder
    from .train import load_episodes, split
    from .world_model import BUNDLED, WorldModel, read_spec

    if args.json:  # made first: a missing folder must not cost the whole evaluation
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    # a missing store, or one of another frame size or scene, fails before the model loads
    attrs, spec = EpisodeStore(args.data, mode="r").attrs, read_spec(args.checkpoint)
    if (shape := attrs.get("frame_shape")) and tuple(shape[:2]) != (spec.height, spec.width):
        raise ValueError(f"{args.data}: {shape[0]}x{shape[1]} frames, but the model predicts {spec.height}x"
                         f"{spec.width}: give a store of its size (make-data --height/--width)")
    check_scene(spec.scene, attrs, args.data)
    policy, calibration = load_policy(args.cache), None
    if needs_calibration(policy):  # MagCache: its ratios from a training episode, not the windows it is scored on
        try:  # (with --holdout 0, bench's rule: the store's first episode, which is scored too)
            calibration = calibration_episode(spec, args.data, args.holdout)
        except ValueError as e:
            raise ValueError(f"--cache {args.cache} calibrates on a training episode, as bench does: {e}; lower "
                             f"--holdout, or give its mag_ratios in a cache YAML") from None
    model = WorldModel.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, compile=args.compile)
    own = Path(args.checkpoint or BUNDLED)  # its decoder if it has one; a folder given must hold one (load says)
    decoder = (StateDecoder.load(args.decoder) if args.decoder else
               StateDecoder.load(own) if (own / CONFIG_FILE).is_file() else None)
    if decoder is not None:
        decoder.check_frames(model.spec, args.decoder or own)  # refused even for its own: the figures need it
        try:
            decoder.check_scene(model.spec.scene, args.decoder or own)
        except ValueError as e:
            if args.decoder:  # asked for: refused
                raise
            # the folder's own (a checkpoint of a DiT continued on a new scene before `train` left such a decoder
            # out): the pixel figures stand without it
            print(f"worldcache evaluate-model: {e}; its position figures are left out", file=sys.stderr)
            decoder = None
    episodes, _ = load_episodes(args.data)  # after the decoder's checks: a refusal costs no read of the store
    held = split(episodes, args.holdout)[1] if args.holdout > 0 else episodes
    if not held:  # one episode is never held out (it is needed for training)
        raise ValueError(f"{args.data}: --holdout {args.holdout} holds out none of its {len(episodes)} episode(s); "
                         f"give --holdout 0 to score them all")
    if calibration is not None:
        warm_up(model, [policy], args.denoise_steps, episode=calibration)
    res = evaluate_open_loop(model, held, chunks=args.chunks, policy=policy,
                             num_steps=args.denoise_steps, max_windows=args.windows, moving=args.moving,
                             decoder=decoder, real_cond=args.real_cond)
    print(format_scores(res))
    if args.json:  # what was measured, as evaluate-policies records it
        res["settings"] = {"checkpoint": args.checkpoint or "bundled", "data": args.data, "holdout": args.holdout,
                           "episodes": len(held), "chunks": args.chunks, "max_windows": args.windows,
                           "denoise_steps": args.denoise_steps or model.spec.num_steps, "cache": args.cache,
                           "cache_config": {"policy": policy.name, **policy.settings()},  # as it ran (a YAML may change)
                           "moving": args.moving, "real_cond": args.real_cond,
                           "decoder": (args.decoder or str(own)) if decoder is not None else None}
        with open(args.json, "w") as f:
            f.write(json.dumps(res, indent=2) + "\n")
    return 0


def _bench_split(args) -> int:
    import time

    import numpy as np

    from .cache import load_cache
    from .world_model import WorldModel

    policy, yaml_steps = load_cache(args.cache)  # a tuned YAML runs at its steps, as bench and bench-vec run it
    model = WorldModel.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, compile=args.compile)
    s = model.spec
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (args.batch, s.height, s.width, 3), dtype=np.uint8)
    actions = rng.uniform(s.action_low, s.action_high, (args.batch, s.chunk, s.action_dim))
    steps = args.denoise_steps or yaml_steps or s.num_steps
    model.predict(frame, actions, policy=policy, num_steps=2)  # warm-up
    vae = dit = 0.0  # "vae": everything in the step that is not the DiT loop (encode, decode, glue)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, out = model.predict(frame, actions, policy=policy, num_steps=steps, timing=True)
        step = time.perf_counter() - t0
        loop = out.loop_ms / 1e3  # each batched call once
        dit += loop
        vae += step - loop
    total = vae + dit
    print(f"per env step (one chunk of {s.chunk} frames, batch {args.batch}, {steps} steps, "
          f"cache={policy.name}, {args.repeats} repeats):")
    print(f"  DiT denoising loop {dit / args.repeats:8.3f} s  ({100 * dit / total:5.1f} %)")
    print(f"  VAE and the rest   {vae / args.repeats:8.3f} s  ({100 * vae / total:5.1f} %)")
    return 0


def _bench(args) -> int:
    from .bench import run_bench

    policies = None if args.cache is None else [_policy_spec(p) for p in args.cache]
    run_bench(args.checkpoint, policies=policies, episodes=args.episodes, chunks=args.chunks,
              num_steps=args.reference_steps, denoise_steps=args.denoise_steps, ablation=not args.no_ablation,
              grid=not args.no_grid, json_out=args.json, seed=args.seed, repeats=args.repeats, device=args.device,
              first_seed=args.first_seed, dtype=args.dtype, data=args.data, holdout=args.holdout,
              compile=args.compile, **_threshold_scales(args))
    return 0


def _threshold_scales(args) -> dict:
    # unset: the bench's own default grid (bench.grid.THRESHOLD_SCALES), not imported here to keep the CLI light
    return {} if args.threshold_scales is None else {"threshold_scales": tuple(args.threshold_scales)}


def _tune(args) -> int:
    from .bench import tune

    tune(args.checkpoint, policies=[_policy_spec(p) for p in args.cache], denoise_steps=args.denoise_steps,
         **_threshold_scales(args), min_psnr=args.min_psnr, min_speedup=args.min_speedup, out=args.out,
         episodes=args.episodes, chunks=args.chunks, data=args.data, holdout=args.holdout, first_seed=args.first_seed,
         json_out=args.json, device=args.device, dtype=args.dtype, seed=args.seed, reference_steps=args.reference_steps,
         compile=args.compile)
    return 0


def _calibrate(args) -> int:
    from .cache.config import CACHE_CONFIG_DIR
    from .calibrate import calibrate_teacache

    out = args.out or CACHE_CONFIG_DIR / "teacache.yaml"
    data = calibrate_teacache(args.checkpoint, episodes=args.episodes, chunks=args.chunks,
                              num_steps=args.denoise_steps, first_seed=args.first_seed, out=out,
                              device=args.device, dtype=args.dtype)
    cal = data["calibration"]
    print(f"{args.policy}: coefficients {data['coefficients']} (highest power first), fit RMSE {cal['fit_rmse']} on "
          f"{cal['pairs']} call pairs, input change in {cal['input_range']}; written to {out}")
    return 0


def _policy_spec(text: str):
    """"NAME" or a YAML path as is; "NAME:key=value,key=value" -> {"policy": NAME, key: value, ...} (YAML values)."""
    import yaml

    from .cache.config import load_yaml, yaml_problem

    if ":" not in text:
        return text
    name, _, settings = text.partition(":")
    spec = {"policy": name}
    for item in filter(None, settings.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--cache {text!r}: expected NAME:key=value[,key=value...], got {item!r}")
        try:
            spec[key.strip()] = load_yaml(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--cache {text!r}: {key.strip()}={value!r} is not a YAML value: {yaml_problem(e)}") \
                from None
    return spec


def _evaluate_policies(args) -> int:
    from .fidelity import evaluate_policies

    evaluate_policies(args.checkpoint, episodes=args.episodes, steps=args.env_steps, policies=args.control,
                      seed=args.seed, cache=tuple(args.cache), num_steps=args.denoise_steps,
                      device=args.device, json_out=_one_or_list(args.json), compile=args.compile,
                      first_seed=args.first_seed, decoder=_one_or_list(args.decoder), real_cond=args.real_cond)
    return 0


def _one_or_list(values: list | None):
    """An option of nargs="+": its one value, or the list of several."""
    return values if values is None or len(values) > 1 else values[0]


def _compare_fidelity(args) -> int:
    from .fidelity import compare_results, fmt, read_result

    a, b = read_result(args.a), read_result(args.b)
    r = compare_results(a, b, cache=args.cache, draws=args.draws)
    lo, hi = r["difference_ci90"]
    print(f"Spearman of mean returns ({args.cache}): A {fmt(r['a'], '.3f')}, B {fmt(r['b'], '.3f')}\n"
          f"B - A over {r['draws']} paired resamples of the {len(a['policies'][0]['real_returns'])} starts: "
          f"mean {r['difference_mean']:+.3f}, 90 % interval [{lo:+.3f}, {hi:+.3f}], "
          f"P(B lower) {r['p_b_lower']:.2f}, P(B higher) {r['p_b_higher']:.2f}")
    return 0


def _pool_fidelity(args) -> int:
    from .fidelity import format_table, format_terms, pool_results, read_result

    result = pool_results([read_result(f, ("settings", "policies", "spearman")) for f in args.results],
                          json_out=args.json)
    print("\n".join(filter(None, (format_table(result), format_terms(result)))))
    return 0


def _bench_vec(args) -> int:
    from .envs.vector_env import bench_vector

    bench_vector(args.num_envs, args.env_steps, args.checkpoint, args.cache, num_steps=args.denoise_steps,
                 device=args.device, compile=args.compile)
    return 0


def _rollout(args) -> int:
    from .rollouts.driver import rollout_main

    return rollout_main(args.config, out=args.out, episodes=args.episodes, workers=args.workers,
                        address=args.address, break_lease=args.break_lease)


def _inspect(args) -> int:
    from .rollouts.reader import inspect_main

    return inspect_main(args.store, plots=args.plots, video=args.video, side_by_side=args.side_by_side,
                        storage_options=args.storage_options)


def _scale_check(args) -> int:
    from .rollouts.scale import scale_main

    return scale_main(args.out, episodes=args.episodes)


def _bench_rollouts(args) -> int:
    from .rollouts.benchmark import bench_rollouts

    over = {"num_cpus": args.num_cpus} if args.num_cpus else {}
    bench_rollouts(args.config, episodes=args.episodes, workers=tuple(args.workers), out_dir=args.out_dir, **over)
    return 0


def _add_model(parser, dtype: bool = True) -> None:
    """--checkpoint, --device (and --dtype): the model a command loads, as every such command takes them."""
    parser.add_argument("--checkpoint", default=None, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--device", default="cpu", type=_device, help="torch device, e.g. cuda (default: cpu)")
    if dtype:
        parser.add_argument("--dtype", default="fp32", choices=["bf16", "fp16", "fp32"],
                            help="model weights (default: fp32)")


def _add_compile(parser, note: str = "") -> None:
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT's blocks: model calls take ~28%% less time on CPU, after a first "
                             "compile of ~20 s; results equal up to float rounding" + note)


def _at_least(low: int):
    """An argparse type: an integer >= `low` (a count: 1; a seed: 0), refused with a message otherwise."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not v >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return v
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _finite(text: str) -> float:
    """An argparse type: a finite number (a PSNR floor: nan would pass no row and be found after the whole run)."""
    import math

    if not math.isfinite(v := _number(text)):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0 (minutes, learning rates, CPUs, speedups, threshold scales)."""
    if not 0 < (v := _finite(text)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (a held-out share)."""
    if not 0 <= (v := _number(text)) <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def _json_object(text: str) -> dict:
    """An argparse type: a JSON object (fsspec's storage options on the command line)."""
    import json

    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({e})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{\"key\": value, ...}}), got {text!r}")
    return v


def _out_file(text: str) -> str:
    """An argparse type: a file written after the work, so checked before it: not a folder, and in a folder that
    exists or can be made (the command makes it), writable."""
    import os
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file path")
    up = path.parent
    while not up.exists() and up != up.parent:
        up = up.parent
    if not up.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {up} is a file, not a folder")
    if not os.access(path if path.exists() else up, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: not writable here")
    import tempfile

    try:  # root passes os.access on /proc: a file tried in its folder, or a folder made in the nearest there is
        if up == path.parent:
            tempfile.TemporaryFile(dir=up).close()
        else:
            tempfile.TemporaryDirectory(dir=up).cleanup()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot be written there ({e.strerror})") from None
    return text


def _yaml_out(text: str) -> str:
    """An argparse type: a cache YAML to write, named so that `--cache`, the env and `load_cache` read it as one."""
    from pathlib import Path

    if not text.endswith((".yaml", ".yml")) and not Path(text).is_dir():  # a folder is said as such
        raise argparse.ArgumentTypeError(f"{text}: give a .yaml or .yml name (a cache is read as a file by that "
                                         f"suffix; another name is read as a policy name)")
    return _out_file(text)


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (a typo or a missing GPU is said before any work)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no {dev.type} device")
    return text


COUNT, NONNEG = _at_least(1), _at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldcache", description="Training-free caching for video world models.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="cached vs. uncached denoising on a small random Cosmos DiT")
    d.add_argument("--cache", nargs="*", default=["worldcache", "dicache"],
                   help="cache policy names or YAML files (default: worldcache dicache)")
    d.add_argument("--denoise-steps", type=COUNT, default=35, help="denoising steps (default: 35)")
    d.add_argument("--seed", type=NONNEG, default=0, help="seed of the random DiT and its inputs (default: 0)")
    d.set_defaults(func=_demo)

    m = sub.add_parser("make-data", help="render MuJoCo Pusher episodes into a Zarr episode store")
    m.add_argument("--out", default="data/pusher.zarr", help="the episode store, made or resumed (default: %(default)s)")
    m.add_argument("--episodes", type=COUNT, default=240,
                   help="episodes 0..N-1 of this --seed; those already in the store are skipped (default: %(default)s)")
    m.add_argument("--env-steps", type=COUNT, default=48, help="env steps per episode (default: %(default)s)")
    m.add_argument("--seed", type=NONNEG, default=0,
                   help="the episodes' seed: episode i is a function of (seed, i) (default: 0)")
    m.add_argument("--height", type=COUNT, default=80, help="frame height in pixels (default: %(default)s)")
    m.add_argument("--width", type=COUNT, default=96, help="frame width in pixels (default: %(default)s)")
    # --control, as evaluate-policies names the same policies; --policy, its old name, stays for recorded commands
    m.add_argument("--control", "--policy", dest="policy", default="mixed",
                   help="exploration policy: mixed, scripted, random, explore (motion that ignores the task), "
                        "varied (mixed or explore, drawn per episode), explore-wide or varied-wide (the same over "
                        "the arm's whole reach, out of view included)")
    m.add_argument("--scene", default="v1", choices=list(SCENES),
                   help="v1: the bundled model's data; v2: the next data version, the camera farther back so the "
                        "whole arm stays in view, and explore's directions bounded (README, \"The bundled model\")")
    m.add_argument("--break-lease", action="store_true",
                   help="replace the store's lease left by a run that was killed (one writer per store)")
    m.set_defaults(func=_make_data)

    t = sub.add_parser("train", help="train the world model (VAE, DiT, then the state decoder); resumable")
    t.add_argument("--data", default="data/pusher.zarr", help="a make-data store (default: %(default)s)")
    t.add_argument("--out", default="runs/pusher", help="the run's folder; the model goes to OUT/model (default: "
                   "%(default)s)")
    t.add_argument("--stages", nargs="+", default=["vae", "dit", "decoder"], choices=["vae", "dit", "decoder"],
                   help="which to train (run as vae, dit, decoder; default: all three); decoder: the state "
                        "decoder (frame -> positions) the env's default reward reads")
    t.add_argument("--vae-steps", type=COUNT, default=1500, help="VAE stage training steps (default: %(default)s)")
    t.add_argument("--dit-steps", type=COUNT, default=3000, help="DiT stage training steps (default: %(default)s)")
    t.add_argument("--dit-batch", type=COUNT, default=16,
                   help="DiT training batch; also the batch of its preparation (encoding windows, own frames) "
                        "(default: %(default)s)")
    t.add_argument("--decoder-steps", type=COUNT, default=3000, help="state decoder training steps, batch 64 "
                   "(default: %(default)s)")
    t.add_argument("--seed", type=NONNEG, default=0, help="seed of the initial weights and of every draw (default: 0)")
    t.add_argument("--dit-lr", type=_positive, default=3e-4, help="DiT stage learning rate (default: 3e-4)")
    t.add_argument("--threads", type=NONNEG, default=0, help="torch threads (default 0: torch's default)")
    t.add_argument("--device", default="cpu", type=_device, help="torch device to train on, e.g. cuda")
    t.add_argument("--bf16", action="store_true",
                   help="bf16 autocast: faster on GPUs and on CPUs with AVX512-BF16 or AMX; on other CPUs bf16 is "
                   "emulated and a step runs many times slower (a warning says so)")
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from this checkpoint's transformer + VAE with a fresh action embedder")
    t.add_argument("--continue-from", default=None, metavar="DIR",
                   help="continue training this checkpoint: all its weights and state decoder (left out, with a "
                        "warning, where it learned another scene than the data's), a new schedule; its "
                        "training.json is kept in the new one's (started_from)")
    t.add_argument("--vae-from", default=None, metavar="DIR", help="start the VAE from this checkpoint's VAE")
    t.add_argument("--layers", type=COUNT, default=12, help="DiT blocks of a new model (default 12)")
    t.add_argument("--heads", type=COUNT, default=4, help="attention heads of a new model (default 4)")
    t.add_argument("--head-dim", type=COUNT, default=32, help="width of a head of a new model (default 32)")
    t.add_argument("--dit-minutes", type=_positive, default=None,
                   help="train the DiT about this long, its preparation (encoding windows, --self-cond's own frames) "
                   "included: its step count is set from the rate of its first steps and set again from the recent "
                   "rate every 50 steps or 5 %% of the time, so a machine that slows down or speeds up mid-run still "
                   "ends near it")
    t.add_argument("--vae-minutes", type=_positive, default=None, help="the same for the VAE stage")
    t.add_argument("--vae-lr", type=_positive, default=1e-3, help="VAE stage learning rate (default 1e-3)")
    t.add_argument("--vae-batch", type=COUNT, default=8, help="VAE stage batch of clips (default 8)")
    t.add_argument("--vae-decoder-only", action="store_true",
                   help="VAE stage: train only the decoder; the encoder and latent statistics stay, so a trained "
                        "DiT reads and predicts the same latents (e.g. with --continue-from)")
    t.add_argument("--vae-handover", type=float, default=0.0, metavar="W",
                   help="with --vae-decoder-only: add W x the hand-over loss, the squared latent difference between "
                        "the reconstructed and the real last frames of a clip, each encoded as the next chunk's "
                        "conditioning frames are (default 0: off)")
    t.add_argument("--cond-noise", type=float, default=0.0, metavar="S",
                   help="DiT stage: noise of std U(0, S) on the conditioning latents, for robustness to a rollout's "
                        "own frames (default 0: off)")
    t.add_argument("--cond-blur", type=float, default=0.0, metavar="S",
                   help="DiT stage: each window's conditioning frames blurred by a Gaussian of sigma U(0, S) px, for "
                        "robustness to a rollout's own, softer frames (default 0: off)")
    t.add_argument("--eval-windows", type=NONNEG, default=256, metavar="N",
                   help="after the DiT stage: the loss at fixed noise levels of N training and N held-out windows, "
                        "in training.json (0: off)")
    t.add_argument("--dit-ema", type=float, default=0.0, metavar="DECAY",
                   help="export the DiT's exponential moving average of weights, e.g. 0.999 (decay ramps as "
                        "k/(9+k) up to DECAY; default 0: the raw weights)")
    t.add_argument("--self-cond", type=float, default=0.0, metavar="P",
                   help="DiT stage: condition this fraction of each batch on the model's own prediction of the "
                        "conditioning frame, made from the real frame one chunk earlier, as a rollout's later chunks "
                        "are (default 0: off)")
    t.add_argument("--self-cond-windows", type=COUNT, default=2048, metavar="N",
                   help="training windows whose own conditioning is predicted (once, before training; default 2048)")
    t.add_argument("--self-cond-source", choices=("model", "vae"), default="model",
                   help="--self-cond's conditioning frames: the model's prediction (default), or the real frames of "
                        "the chunk before through the VAE (encoded, decoded), as a rollout hands them on had the DiT "
                        "been exact")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT's blocks (~1 min first; fuses the many small kernels of a GPU step)")
    t.set_defaults(func=_train)

    cv = sub.add_parser("convert", help="NVIDIA's action-conditioned Cosmos checkpoint -> a WorldModel folder")
    cv.add_argument("transformer", help="official *_ema_bf16.pt (2.5) or model-480p-4fps.pt (2)")
    cv.add_argument("--vae", required=True, help="diffusers AutoencoderKLWan folder, or Wan2.1_VAE.pth / tokenizer.pth")
    cv.add_argument("--prompt-embeds", help="safetensors/torch file with 'prompt' and 'negative' (2.5: required; "
                    "2: default zeros [1, 512, 1024], as NVIDIA's Predict2 action pipeline)")
    cv.add_argument("--out", required=True, metavar="DIR",
                    help="the WorldModel folder to write (new or empty; a failed run leaves it as it was)")
    cv.add_argument("--variant", default="auto", choices=["auto", "2.5", "2"],
                    help="2.5: actions per latent frame; 2: one embedding per chunk (auto: from fc1's width)")
    cv.add_argument("--unsafe-pickle", action="store_true",
                    help="load with weights_only=False (runs code stored in the file: only for files you trust)")
    cv.add_argument("--action-low", type=float, nargs="+", default=None, help="default -1 (x6), 0 (gripper)")
    cv.add_argument("--action-high", type=float, nargs="+", default=None, help="default 1 (x7)")
    cv.add_argument("--action-dim", type=COUNT, default=7, help="action width (default: 7, Bridge's)")
    cv.add_argument("--chunk", type=COUNT, default=12, help="actions (new frames) per prediction")
    cv.add_argument("--height", type=COUNT, default=None,
                    help="frame height the model predicts (default: 256 for 2.5, 480 for 2; a multiple of 16: the "
                         "VAE's 8x, then the DiT's 2x2 patches)")
    cv.add_argument("--width", type=COUNT, default=None, help="frame width (default: 320 for 2.5, 640 for 2)")
    cv.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="transformer weights")
    cv.set_defaults(func=_convert)

    e = sub.add_parser("evaluate-model", help="held-out open-loop PSNR (full frame and moving region), SSIM and "
                                              "decoded fingertip/object errors vs. the simulator, model and "
                                              "repeat-last")
    _add_model(e)
    e.add_argument("--data", default="data/pusher.zarr", help="a make-data store (default: %(default)s)")
    e.add_argument("--holdout", type=_fraction, default=0.1,
                   help="evaluate on the last fraction of episodes (the trainer's held-out split; a store's one "
                        "episode is never held out); 0: all (default: %(default)s)")
    e.add_argument("--chunks", type=COUNT, nargs="+", default=[1, 4],
                   help="horizons in chunks (one rollout of the longest per window; default 1 4)")
    e.add_argument("--windows", type=COUNT, default=16,
                   help="at most this many held-out windows (rollouts) are scored (default: %(default)s)")
    e.add_argument("--moving", type=float, default=2.0, help="min mean |pixel change| for a window to count")
    e.add_argument("--denoise-steps", type=COUNT, default=None, help="default: the model's")
    e.add_argument("--cache", default="none", help="cache policy name or YAML file (default: none, uncached)")
    _add_compile(e)
    e.add_argument("--decoder", default=None, metavar="DIR",
                   help="state decoder folder for the decoded-position errors (default: the checkpoint's, if any)")
    e.add_argument("--real-cond", action="store_true",
                   help="also score the model with every chunk conditioned on the real frames (teacher-forced): "
                        "the gap to open loop is what compounding costs (twice the time)")
    e.add_argument("--json", type=_out_file, default=None, help="also write the scores here")
    e.set_defaults(func=_evaluate_model)

    b = sub.add_parser("bench-split", help="time of one env step: DiT loop vs. VAE")
    _add_model(b)
    b.add_argument("--cache", default="none", help="cache policy name or YAML file (default: none, uncached)")
    b.add_argument("--denoise-steps", type=COUNT, default=None, help="default: a tuned cache YAML's, else the model's")
    b.add_argument("--batch", type=COUNT, default=1, help="envs stepped as one batch (default: 1)")
    b.add_argument("--repeats", type=COUNT, default=3, help="env steps timed; the times are their mean (default: 3)")
    _add_compile(b)
    b.set_defaults(func=_bench_split)

    bn = sub.add_parser("bench", help="speed/quality of every cache policy on held-out episodes, along the steps axis")
    _add_model(bn)
    bn.add_argument("--cache", nargs="+", default=None,
                    help="cache policy names (each at its small grid), steps-only (uncached at fewer steps), YAML "
                         "files, or NAME:key=value,... (exactly those settings); default: all policies")
    bn.add_argument("--episodes", type=COUNT, default=10, help="held-out episodes (default: %(default)s)")
    bn.add_argument("--chunks", type=COUNT, default=2, help="chunks (predictions) per episode (default: %(default)s)")
    bn.add_argument("--denoise-steps", type=COUNT, nargs="+", default=None,
                    help="the step axis every policy runs on (default: 35 18 12, cut to the reference's; full: "
                         "35 30 24 18 14 12 10 8)")
    bn.add_argument("--reference-steps", type=COUNT, default=None,
                    help="steps of the uncached reference (default: the model's)")
    bn.add_argument("--data", default=None, metavar="STORE",
                    help="take (frames, actions) episodes from this episode store's held-out split instead of "
                         "simulating Pusher")
    bn.add_argument("--holdout", type=_fraction, default=0.1,
                    help="with --data: the held-out fraction (the last ids, as train splits); 0: all episodes")
    bn.add_argument("--no-ablation", action="store_true",
                    help="leave out WorldCache's ablation rows (one part toggled per row, at matched compute)")
    bn.add_argument("--no-grid", action="store_true", help="named policies at their default config only")
    bn.add_argument("--threshold-scales", type=_positive, nargs="+", default=None,
                    help="each threshold policy's grid, as multiples of its default threshold (default: 0.5 1 2)")
    bn.add_argument("--repeats", type=COUNT, default=1, help="time each rollout N times, keep the fastest")
    bn.add_argument("--json", type=_out_file, default=None, help="write JSON here; the figures go next to it")
    bn.add_argument("--seed", type=NONNEG, default=0, help="noise seed of the sampling (default: 0)")
    bn.add_argument("--first-seed", type=NONNEG, default=10_000,
                    help="env seed of the first episode (benchmark: 10000; tuning episodes: e.g. 20000)")
    _add_compile(bn, " (diffusers' hook policies keep eager blocks: compare their wall clock without it)")
    bn.set_defaults(func=_bench)

    tu = sub.add_parser("tune", help="search steps x cache policy x threshold on tuning episodes; write a YAML")
    _add_model(tu)
    tu.add_argument("--cache", nargs="+", default=["worldcache"],
                    help="cache policies to search: a name (at its threshold grid) or, as bench takes them, a YAML "
                         "or NAME:key=value,... (at those settings); steps-only is always a candidate")
    tu.add_argument("--denoise-steps", type=COUNT, nargs="+", default=None,
                    help="step counts to search (default: 35 18 12, cut to the reference's)")
    tu.add_argument("--reference-steps", type=COUNT, default=None,
                    help="steps of the uncached reference (default: the model's)")
    tu.add_argument("--threshold-scales", type=_positive, nargs="+", default=None,
                    help="thresholds to search, as multiples of each policy's default (default: 0.5 1 2)")
    floor = tu.add_mutually_exclusive_group(required=True)
    floor.add_argument("--min-psnr", type=_finite, default=None,
                       help="the fastest configuration at least this close (dB) to the uncached reference")
    floor.add_argument("--min-speedup", type=_positive, default=None,
                       help="the closest configuration to the reference with at least this compute speedup")
    tu.add_argument("--out", type=_yaml_out, default="tuned.yaml", help="the cache YAML written (policy settings + num_steps)")
    tu.add_argument("--episodes", type=COUNT, default=2, help="tuning episodes (default: %(default)s)")
    tu.add_argument("--chunks", type=COUNT, default=2, help="chunks (predictions) per episode (default: %(default)s)")
    tu.add_argument("--data", default=None, metavar="STORE", help="tune on this store's training split")
    tu.add_argument("--holdout", type=_fraction, default=0.1,
                    help="with --data: the held-out fraction left out of the search (default: %(default)s)")
    tu.add_argument("--first-seed", type=NONNEG, default=20_000, help="env seed of the first tuning episode")
    tu.add_argument("--json", type=_out_file, default=None, help="also write the search's bench JSON (and figures) here")
    tu.add_argument("--seed", type=NONNEG, default=0, help="noise seed of the sampling (default: 0)")
    _add_compile(tu)
    tu.set_defaults(func=_tune)

    ep = sub.add_parser("evaluate-policies", help="rank control policies by real vs. decoded world-model return")
    _add_model(ep, dtype=False)
    ep.add_argument("--episodes", type=COUNT, default=5, help="starts, each run by every policy (default: 5)")
    ep.add_argument("--env-steps", type=COUNT, default=48, help="env steps per episode (multiple of the chunk)")
    ep.add_argument("--control", nargs="+", default=["equal-cost"],
                    help="control policies to rank, or sets of them: equal-cost (default; every action has the same "
                         "norm, so only the frames rank them) or noise-levels (the scripted controller at 4 noise "
                         "levels, and random); one's own: module:factory, factory(env, rng) -> obs (23,) -> "
                         "action (3,)")
    ep.add_argument("--cache", nargs="+", default=["none", "worldcache"],
                    help="cache policy names or YAML files; the first is the reference of 'same ranking' (default: "
                         "none worldcache)")
    ep.add_argument("--denoise-steps", type=COUNT, default=None, help="default: the model's")
    ep.add_argument("--seed", type=NONNEG, default=0, help="noise seed of the sampling (default: 0)")
    ep.add_argument("--first-seed", type=NONNEG, default=10_000,
                    help="env seed of the first start (held-out: 10000; tuning starts: e.g. 20000). A start's "
                         "returns depend on its env seed only, so starts split over calls pool exactly")
    ep.add_argument("--decoder", nargs="+", default=None, metavar="DIR",
                    help="folder of the state decoder that reads the frames (default: the checkpoint's); several: "
                         "each reads the same rollouts, one table and one --json file each, in this order")
    ep.add_argument("--real-cond", action="store_true",
                    help="diagnostic: predict every chunk from the simulator's frames before it (teacher-forced), "
                         "not the model's own, to see what compounding costs the ranking")
    ep.add_argument("--json", nargs="+", type=_out_file, default=None, help="write the result here (one path per --decoder)")
    _add_compile(ep)
    ep.set_defaults(func=_evaluate_policies)

    cf = sub.add_parser("compare-fidelity", help="paired bootstrap of two evaluate-policies JSONs on the same "
                                                 "starts (e.g. two checkpoints): is B's ranking better than A's?")
    cf.add_argument("a", help="evaluate-policies --json of A (e.g. the bundled model)")
    cf.add_argument("b", help="evaluate-policies --json of B, on the same starts and policies")
    cf.add_argument("--cache", default="none", help="which rows to compare (a --cache entry of both runs)")
    cf.add_argument("--draws", type=COUNT, default=2000, help="bootstrap resamples of the starts")
    cf.set_defaults(func=_compare_fidelity)

    pf = sub.add_parser("pool-fidelity", help="one evaluate-policies result from JSONs on disjoint starts with the "
                                              "same settings (starts split over calls or machines by --first-seed)")
    pf.add_argument("results", nargs="+", help="evaluate-policies --json files")
    pf.add_argument("--json", type=_out_file, default=None, help="write the pooled result here")
    pf.set_defaults(func=_pool_fidelity)

    v = sub.add_parser("bench-vec", help="per-env step time: N single envs in turn vs. one batched vector env")
    v.add_argument("--num-envs", type=COUNT, default=4, help="envs (default: %(default)s)")
    v.add_argument("--env-steps", type=COUNT, default=3, help="timed env steps (chunks), after one warm-up step")
    _add_model(v, dtype=False)
    v.add_argument("--cache", default="worldcache", help="cache policy name or YAML file (default: %(default)s)")
    v.add_argument("--denoise-steps", type=COUNT, default=None, help="default: the model's")
    _add_compile(v)
    v.set_defaults(func=_bench_vec)

    r = sub.add_parser("rollout", help="Ray rollouts of the world-model env into a Zarr store (resumable)")
    r.add_argument("config", help="YAML path or name under configs/ (e.g. rollout_smoke)")
    r.add_argument("--out", default=None, help="store path or URL, e.g. s3://bucket/x.zarr (default: the config's)")
    r.add_argument("--episodes", type=COUNT, default=None, help="episodes in all, those there counted (default: the "
                   "config's)")
    r.add_argument("--workers", type=COUNT, default=None, help="Ray actors (default: the config's)")
    r.add_argument("--address", default=None, help="Ray cluster to join ('auto': the running one)")
    r.add_argument("--break-lease", action="store_true", help="replace the lease of a driver that died")
    r.set_defaults(func=_rollout)

    i = sub.add_parser("inspect", help="summary, cache-statistics plots and videos of a rollout store (of a make-data "
                       "store: its summary and videos)")
    i.add_argument("store", help="store path or URL (a rollout or make-data store)")
    i.add_argument("--plots", default=None, help="folder for the PNGs")
    i.add_argument("--video", default=None, help="folder for one MP4 per episode (GIF without an encoder)")
    i.add_argument("--side-by-side", action="store_true", help="videos show the per-call skip pattern too")
    i.add_argument("--storage-options", type=_json_object, default=None,
                   help='fsspec options of a remote store, as JSON: \'{"endpoint_url": "http://host:9000"}\'')
    i.set_defaults(func=_inspect)

    sc = sub.add_parser("scale-check", help="write synthetic episodes (no model); time writes, listing, reads")
    sc.add_argument("--out", default="runs/scale.zarr", help="the new store (must not exist; default: %(default)s)")
    sc.add_argument("--episodes", type=COUNT, default=10000, help="synthetic episodes (default: %(default)s)")
    sc.set_defaults(func=_scale_check)

    br = sub.add_parser("bench-rollouts", help="episodes/s with 1 vs 2 workers and the Zarr write share")
    br.add_argument("config", nargs="?", default="rollout_smoke",
                    help="YAML path or name under configs/ (default: %(default)s)")
    br.add_argument("--episodes", type=COUNT, default=None, help="episodes per run (default: the config's)")
    br.add_argument("--workers", type=COUNT, nargs="+", default=[1, 2], help="worker counts to run (default: 1 2)")
    br.add_argument("--num-cpus", type=_positive, default=None, help="per worker (1 lets 2 workers fit on 2 cores)")
    br.add_argument("--out-dir", default="runs/bench", help="folder of the runs' stores (default: %(default)s)")
    br.set_defaults(func=_bench_rollouts)

    ca = sub.add_parser("calibrate", help="fit a cache policy's model-specific constants on tuning episodes")
    ca.add_argument("policy", choices=["teacache"], help="teacache: its rescaling polynomial (degree 4)")
    _add_model(ca)
    ca.add_argument("--episodes", type=COUNT, default=3, help="tuning episodes (default: %(default)s)")
    ca.add_argument("--chunks", type=COUNT, default=2, help="chunks (predictions) per episode")
    ca.add_argument("--denoise-steps", type=COUNT, default=None, help="default: the model's")
    ca.add_argument("--first-seed", type=NONNEG, default=20_000,
                    help="env seed of the first tuning episode (disjoint from the benchmark's 10000+)")
    ca.add_argument("--out", type=_yaml_out, default=None, help="YAML to write the coefficients into (its other settings are kept); "
                    "default: the shipped configs/cache/teacache.yaml")
    ca.set_defaults(func=_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where a command turns it into one (make-data, rollout, train)
        if args.debug:
            raise
        kept = RESUME.get(args.command)
        print(f"worldcache {args.command}: interrupted{f' ({e})' if str(e) else ''}" + (f"; {kept}" if kept else ""),
              file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # as the shell reports a stop by the signal: 130 Ctrl-C, 143 SIGTERM
    except Exception as e:
        if args.debug or not is_input_error(e):
            raise  # a bug: the traceback is what a report needs
        print(f"worldcache {args.command}: error: {e}", file=sys.stderr)
        return 2


# What an interrupted command leaves (said on Ctrl-C instead of a traceback).
RESUME = {"make-data": "the complete episodes are kept: the same command again resumes",
          "rollout": "the complete episodes are kept: the same command again resumes",
          "train": "a stage stopped in its training steps is saved where it stopped: the same command again resumes "
                   "from there"}


def is_input_error(e: BaseException) -> bool:
    """Bad input (say what, no traceback): a missing or existing file, or a ValueError that our own checks raise.
    A ValueError raised inside a library (torch, numpy, ...) is a programming error and keeps its traceback."""
    if isinstance(e, (FileNotFoundError, FileExistsError)):
        return True
    if not isinstance(e, ValueError) or e.__traceback__ is None:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "worldcache"


if __name__ == "__main__":
    sys.exit(main())
