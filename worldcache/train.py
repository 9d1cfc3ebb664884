"""Training of the bundled world model: stage "vae" (Wan VAE reconstruction), stage "dit" (flow matching), and
stage "decoder" (the state decoder the env's reward reads). The export also holds `start_frames.npy`, reset frames
of the data's episodes, from which the env samples its starts.

`init_from` starts from an existing checkpoint's transformer + VAE (and prompts, spec, state decoder) with a fresh
zero-initialised action embedder, e.g. to move a model trained with another action-embedder structure over.
`vae_from` takes only the VAE weights of an existing checkpoint (same VAE architecture), e.g. to fine-tune it on
frames of another camera rather than train it from scratch.

New models follow the real action-conditioned Cosmos 2.5 conventions (``../shared/REAL_MODEL.md`` section 5):
the conditioning frame gets the noisy frames' timestep, NVIDIA's sigmas, the quantised timestep, the fp32
timestep embedding, no learnable extra positional embedding. The architecture (layers, heads, head width) and the
action box come from the config and the data.

``dit_minutes`` / ``vae_minutes``: train for about that long instead of a fixed step count. The stage times its
first steps and sets its step count (and so its cosine schedule) from the rate and the time left, so that a slow
first step (``compile``) counts within the budget; it sets the count again from the recent rate as it goes
(`StepBudget`), so a machine that slows down or speeds up mid-run still ends near the budget. The count is
recorded, and a resumed run keeps the last one. The DiT stage's budget starts before its preparation (encoding
its windows, predicting its own conditioning frames with ``self_cond``), so a time-boxed machine is not overrun
by a long preparation pass.

Resumable: every `save_every` steps, at its end, and where Ctrl-C (or SIGTERM, which the CLI turns into a stop)
stops it between two steps (a second Ctrl-C stops at once, keeping the last save), the
stage's state (weights, optimiser, step, RNG) goes to ``OUT/state_<stage>.pt``; re-running the same command
continues from it, as an unbroken run would have. The exported checkpoint lands in
``OUT/model`` and a record of the run (command, data, steps, losses) in ``OUT/model/training.json``.

``dit_ema``: the DiT is exported as an exponential moving average of its weights (diffusers' `EMAModel`, whose
decay ramps as k / (9 + k) over the first steps up to ``dit_ema``), as NVIDIA exports Cosmos (``*_ema_bf16.pt``):
the average smooths out the noise of small batches. The raw weights stay in ``OUT/state_dit.pt``.

After the DiT stage, ``eval_windows`` training windows and as many held-out ones are scored at fixed noise levels
with fixed noise (`Trainer.fixed_sigma_loss`), so the record says how far the training loss carries over to unseen
episodes, comparably across runs (the training losses are of random draws).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import interrupt
from .cache.base import ModelCall, NoCache
from .envs.cosmos_env import write_start_frames
from .scene import scene_diff, scene_record
from .world_model import WorldModel, WorldModelSpec

# Sampling steps of the model's own conditioning predictions (--self-cond): on v2's step-count curve 8 steps land
# 54 dB from 35, and this pass runs over thousands of windows.
SELF_COND_STEPS = 8
SELF_COND_SOURCES = ("model", "vae")
# Where the fixed-sigma loss scores every window: evenly spaced draws of the training's uniform u (before the shift)
EVAL_U = np.linspace(0.05, 0.95, 10)


@dataclass
class TrainConfig:
    data: str
    out: str
    stages: tuple = ("vae", "dit", "decoder")
    vae_steps: int = 1500
    dit_steps: int = 3000
    vae_batch: int = 8
    dit_batch: int = 16
    vae_lr: float = 1e-3
    dit_lr: float = 3e-4
    decoder_steps: int = 3000
    kl_weight: float = 1e-6
    flow_shift: float = 5.0      # training sigmas follow the sampler's shifted schedule
    holdout: float = 0.1         # fraction of episodes kept out of training (for the held-out PSNR)
    save_every: int = 200
    seed: int = 0
    threads: int = 0             # torch threads (0: torch's default)
    device: str = "cpu"          # "cuda" when a GPU is at hand; the export is always written from CPU
    bf16: bool = False           # bf16 autocast: ~2x faster on GPUs and CPUs with AVX512-BF16/AMX, far slower on others
    init_from: str | None = None  # start from this checkpoint's transformer + VAE, with a fresh action embedder
    vae_from: str | None = None   # start the VAE from this checkpoint's VAE weights
    continue_from: str | None = None  # continue training this checkpoint (all its weights, its spec)
    num_layers: int = 12          # DiT architecture of a new model: blocks, heads, head width
    heads: int = 4
    head_dim: int = 32
    dit_minutes: float | None = None  # train about this long (sets dit_steps from the measured step rate)
    vae_minutes: float | None = None
    # VAE stage: train only the decoder; the encoder and the latent statistics stay, so the latents a trained DiT
    # reads (and predicts) are unchanged and the DiT needs no retraining
    vae_decoder_only: bool = False
    # VAE stage, decoder only: weight of `handover_loss`, which teaches the decoder frames that encode back to the
    # real frames' latents, so the hand-over between chunks (decode, then encode the last frames) loses less (0: off)
    vae_handover: float = 0.0
    compile: bool = False         # torch.compile the DiT's blocks (regional: one block's graph serves all)
    # DiT stage: Gaussian noise of a std drawn per sample from U(0, cond_noise) on the conditioning latent frames,
    # so the model learns to read imperfect conditioning frames (0: off; sampling always conditions on clean ones)
    cond_noise: float = 0.0
    # DiT stage: each training window's conditioning frames Gaussian-blurred by a sigma (px) drawn once per window from
    # U(0, cond_blur), then encoded, so the model learns to read soft conditioning frames as a rollout's own are (0:
    # off; sampling always conditions on the frames as given). The blurred latents are made once, before training.
    cond_blur: float = 0.0
    # DiT stage: this fraction of each batch is conditioned on the model's own prediction of its conditioning
    # frames (from the frames one chunk earlier and the real actions), as a rollout's second chunk is; targets stay
    # the real frames. The predictions are made once, before training, for `self_cond_windows` training windows.
    self_cond: float = 0.0
    self_cond_windows: int = 2048
    # where those conditioning frames come from: "model" (its prediction) or "vae" (the real frames of that chunk
    # encoded and decoded: what a DiT that predicted the real latents exactly would hand the next chunk)
    self_cond_source: str = "model"
    # after the DiT stage: training and held-out windows scored by `Trainer.fixed_sigma_loss` (0: off)
    eval_windows: int = 256
    # DiT stage: export the exponential moving average of the weights with this (final) decay (0: off; the raw ones)
    dit_ema: float = 0.0


# settings a resumed stage may change: where and how it runs, and how long (a longer schedule continues a run);
# the rest (data, seed, starting weights, architecture, batches, learning rates, losses) must match the saved state.
# dit_ema has a check of its own.
RESUME_FREE = ("out", "stages", "threads", "device", "save_every", "eval_windows", "compile", "bf16", "vae_steps",
               "dit_steps", "decoder_steps", "vae_minutes", "dit_minutes", "dit_ema")
# settings of one stage that the other's state need not match (a DiT state has the VAE's own fingerprint instead)
ARCHITECTURE = ("num_layers", "heads", "head_dim")  # a new model's DiT
VAE_ONLY = ("vae_batch", "vae_lr", "kl_weight", "vae_decoder_only", "vae_handover", "vae_from")
DIT_ONLY = ("dit_batch", "dit_lr", "flow_shift", "cond_noise", "cond_blur", "self_cond", "self_cond_windows",
            "self_cond_source") + ARCHITECTURE


def resume_settings(cfg: TrainConfig) -> dict:
    # a run from a checkpoint takes its architecture from it (the starting weights' hash is compared instead)
    unused = ARCHITECTURE if cfg.continue_from or cfg.init_from else ()
    return {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE + unused}


def load_episodes(path: str) -> tuple[list[dict], dict]:
    from .rollouts.store import EpisodeStore

    store = EpisodeStore(path, mode="r")
    ids = sorted(store.episode_ids())
    if not ids:
        raise ValueError(f"{path}: no complete episodes")
    episodes = [store.load_episode(i) for i in ids]
    for i, ep in zip(ids, episodes):  # a rollout (or scale-check) store's chunks read as 8-d actions, or worse
        if np.ndim(ep["actions"]) != 2 or len(ep["obs"]) != len(ep["actions"]) + 1:
            raise ValueError(f"{path}: episode {i} has frames {np.shape(ep['obs'])} and actions "
                             f"{np.shape(ep['actions'])}; training and evaluate-model take one action per frame, "
                             f"(T + 1, H, W, 3) and (T, A), as make-data writes (a rollout store holds chunks)")
    return episodes, dict(store.attrs)


def split(episodes: list, holdout: float) -> tuple[list, list]:
    """Deterministic split: the last `holdout` fraction of the sorted episode ids is held out (none when there is
    only one episode: it is needed for training)."""
    n_hold = max(1, int(round(len(episodes) * holdout))) if holdout > 0 and len(episodes) > 1 else 0
    return episodes[: len(episodes) - n_hold], episodes[len(episodes) - n_hold:]


class StepBudget:
    """The step count of a run timed to `minutes` from `began` (`time.perf_counter`), its steps counted from
    `start`. First set from the rate of the 19 steps after one warm-up step (which may compile), then set again
    from the rate since the last count every `every` steps or every 5 % of the budget, whichever comes first: so a
    run whose machine slows down or speeds up (another job on the cores) still ends near its budget. A count may
    fall to the steps already done, which ends the run."""

    def __init__(self, minutes: float, began: float, start: int, every: int = 50):
        self.deadline, self.every, self.period = began + minutes * 60, every, minutes * 60 / 20
        self.warm, self.first_count = start + 1, start + 20
        self.mark: tuple[int, float] | None = None  # (step, time) the next rate is measured from

    def update(self, step: int, now: float) -> int | None:
        """After each step: the new step count when one is due, else None."""
        if step == self.warm:
            self.mark = (step, now)
        if self.mark is None or step < self.first_count:
            return None
        due = step == self.first_count or step >= self.mark[0] + self.every or now >= self.mark[1] + self.period
        if not due:
            return None
        rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
        self.mark = (step, now)
        return max(step, step + int((self.deadline - now) * rate))


def slow_bf16(device: torch.device) -> str | None:
    """Why `--bf16` would slow training on `device`, or None. A CPU without AVX512-BF16 or AMX has no bf16 matmul:
    torch emulates it (an AVX2 EPYC: a 11520x128 @ 128x512 matmul ~30x, a DiT step of 32 ~12x slower than float32)."""
    if device.type != "cpu":
        return None
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return None if native else (
        f"--bf16 on a CPU without AVX512-BF16 or AMX ({torch.backends.cpu.get_cpu_capability()}): bf16 is "
        "emulated there, and a training step runs many times slower than in float32; drop --bf16")


def windows(episodes: list, length: int, stride: int) -> list[tuple[int, int]]:
    return [(e, t) for e, ep in enumerate(episodes) for t in range(0, len(ep["actions"]) - length + 1, stride)]


def train_sigma(u, shift: float):
    """The training noise level of a uniform draw u: the sampler's shifted schedule."""
    return shift * u / (1 + (shift - 1) * u)


def fingerprint(*parts) -> str:
    """A hash of arrays, tensors and plain values (by their bytes and repr): equal parts, equal fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, torch.Tensor):  # by its bytes: numpy has no bfloat16
            h.update(repr((p.dtype, tuple(p.shape))).encode())
            h.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().data)
        elif isinstance(p, np.ndarray):
            h.update(repr((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


def handover_loss(model: WorldModel, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What the hand-over between chunks loses: the mean squared difference, in the normalised latent units the DiT
    reads (`quality.conditioning_error`'s, squared), between the last `cond_frames` frames of the reconstructed
    clips `rec` and of the real clips `x` (both (B, 3, T, H, W) in [-1, 1]), each encoded alone as the next chunk's
    conditioning frames are. Differentiable in `rec`; the real side is a constant."""
    n = model.spec.cond_frames
    with torch.no_grad():
        real = model.encode_pixels(x[:, :, -n:])
    own = model.encode_pixels(rec[:, :, -n:].clamp(-1, 1))  # decode() clamps what it hands on
    return (own - real).pow(2).mean()


class Trainer:
    def __init__(self, cfg: TrainConfig, model: WorldModel | None = None, command: str | None = None):
        """`command`: the command line to record (the CLI passes its own; default: this process's arguments)."""
        for key in ("vae_steps", "dit_steps", "decoder_steps", "vae_batch", "dit_batch", "save_every"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        for key in ("vae_minutes", "dit_minutes"):
            if getattr(cfg, key) is not None and not getattr(cfg, key) > 0:
                raise ValueError(f"{key} must be > 0 (or None: count steps), got {getattr(cfg, key)}")
        if cfg.cond_noise < 0:
            raise ValueError(f"cond_noise must be >= 0, got {cfg.cond_noise}")
        if cfg.cond_blur < 0:
            raise ValueError(f"cond_blur must be >= 0, got {cfg.cond_blur}")
        if not 0 <= cfg.self_cond <= 1:
            raise ValueError(f"self_cond must be a fraction in [0, 1], got {cfg.self_cond}")
        if not 0 <= cfg.dit_ema < 1:
            raise ValueError(f"dit_ema (--dit-ema) must be a decay in [0, 1), got {cfg.dit_ema}")
        if cfg.eval_windows < 0:
            raise ValueError(f"eval_windows must be >= 0, got {cfg.eval_windows}")
        if cfg.vae_decoder_only and model is None and not (cfg.continue_from or cfg.init_from or cfg.vae_from):
            raise ValueError("vae_decoder_only (--vae-decoder-only) keeps the encoder: start from a trained VAE "
                             "(--continue-from, --init-from or --vae-from)")
        if cfg.vae_handover < 0:
            raise ValueError(f"vae_handover must be >= 0, got {cfg.vae_handover}")
        if cfg.vae_handover and not cfg.vae_decoder_only:  # an encoder free to move could shrink the latents instead
            raise ValueError("vae_handover (--vae-handover) trains the decoder against the fixed encoder: give "
                             "vae_decoder_only (--vae-decoder-only) too")
        if cfg.self_cond_source not in SELF_COND_SOURCES:
            raise ValueError(f"self_cond_source must be one of {SELF_COND_SOURCES}, got {cfg.self_cond_source!r}")
        if cfg.self_cond > 0 and cfg.self_cond_windows < 1:
            raise ValueError(f"self_cond_windows must be >= 1, got {cfg.self_cond_windows}")
        if cfg.init_from and cfg.continue_from:
            raise ValueError("init_from and continue_from (--init-from, --continue-from) both name a starting "
                             "checkpoint: give one")
        self.cfg = cfg
        self.stepped: set[str] = set()  # the stages that took a training step in this run
        self.given_model = model is not None
        source = cfg.continue_from or cfg.init_from
        self.source = Path(source) if source else None  # the checkpoint the weights, decoder and lineage come from
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out}: is a file; give a folder (new, or one that train wrote)")
        if (self.out / "zarr.json").is_file():  # a store given as --out (its own --data, say) by a slip
            raise ValueError(f"--out {self.out}: is a Zarr store, not a training folder; give another --out")
        # the record of a model earlier commands trained into this folder (stages may run in separate commands)
        path = self.out / "model" / "training.json"
        earlier = json.loads(path.read_text()) if path.is_file() else None
        if "vae" not in cfg.stages and model is None:
            if not (earlier is not None or self.source or cfg.vae_from):  # else: a random VAE, exported as trained
                raise ValueError(f"stages {list(cfg.stages)} without 'vae' start from a trained model: "
                                 f"{self.out / 'model'} holds none; train the VAE into this --out first, or give "
                                 f"--continue-from / --init-from (or --vae-from)")
        if earlier is not None and self.source:  # OUT/model is what this run continues (below)
            was = earlier.get("config", {})
            was = was.get("continue_from") or was.get("init_from")
            if was is None or Path(was).resolve() != self.source.resolve():
                raise ValueError(f"{self.out / 'model'} was trained from {was or 'no checkpoint'}, and this "
                                 f"command starts from {self.source}: train into another --out")
        if earlier is not None and not self.source:  # OUT/model's DiT was built from the first command's flags
            was = earlier.get("config", {})
            arch = {k: (was[k], getattr(cfg, k)) for k in ARCHITECTURE if k in was and was[k] != getattr(cfg, k)}
            if arch:  # it would be continued as it is, under a record of other flags
                raise ValueError(f"{self.out / 'model'} was built with other --layers/--heads/--head-dim (there, now: "
                                 f"{arch}); they set a new model's architecture: give the same, or another --out")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        episodes, self.data_attrs = load_episodes(cfg.data)
        if "decoder" in cfg.stages and (bad := sum("state" not in ep for ep in episodes)):
            raise ValueError(f"{cfg.data}: {bad} of {len(episodes)} episodes have no 'state' extra (Pusher "
                             f"observations), which the decoder stage reads: make the data with `worldcache "
                             f"make-data`, or leave 'decoder' out of --stages")
        self.train_eps, self.held_eps = split(episodes, cfg.holdout)
        self.device = torch.device(cfg.device)
        if cfg.bf16 and (why := slow_bf16(self.device)):
            print(f"warning: {why}", file=sys.stderr)
        if earlier is not None and (model is None or "vae" not in cfg.stages):
            # what earlier commands trained into this folder is what this one continues: a stage it does not train
            # keeps those weights (a resumed stage restores only its own)
            model = WorldModel.from_pretrained(self.out / "model")
        if model is None and cfg.continue_from:
            model = WorldModel.from_pretrained(cfg.continue_from)
        if model is None and cfg.init_from:
            torch.manual_seed(cfg.seed)
            model = WorldModel.from_pretrained(cfg.init_from, fresh_action_embedder=True)
        if model is None:
            model = WorldModel.build(self._spec(), num_layers=cfg.num_layers, hidden_heads=cfg.heads,
                                     head_dim=cfg.head_dim, seed=cfg.seed)
        # --vae-from is where the VAE stage starts: once a VAE stage trained into this folder, its VAE is what
        # continues (reloading --vae-from's would export that one under the trained one's record)
        if cfg.vae_from and not (earlier is not None and "vae" in earlier):
            # only the VAE's weights are read: the rest of that checkpoint may differ or be absent
            from diffusers import AutoencoderKLWan

            if not (Path(cfg.vae_from) / "vae").is_dir():  # else diffusers would take the path for a Hub repo id
                raise FileNotFoundError(f"--vae-from {cfg.vae_from}: no vae/ folder there")
            model.vae.load_state_dict(AutoencoderKLWan.from_pretrained(Path(cfg.vae_from) / "vae").state_dict())
        self.model = model.to(self.device)
        if "generator" in self.data_attrs:  # the export shows this data's scene, whatever the starting weights'
            self.model.spec.scene = scene_record(self.data_attrs["generator"])
        sp, obs, act = self.model.spec, self.train_eps[0]["obs"], self.train_eps[0]["actions"]
        if (sp.height, sp.width, sp.action_dim) != (*obs.shape[1:3], act.shape[-1]):
            raise ValueError(f"{cfg.data}: {obs.shape[1]}x{obs.shape[2]} frames and {act.shape[-1]}-d actions, but "
                             f"the model starting this run takes {sp.height}x{sp.width} and {sp.action_dim}-d")
        from .rollouts.identity import files_under, model_sha256

        vae_files = files_under(Path(cfg.vae_from) / "vae") if cfg.vae_from else None
        # what the settings do not show: the starting weights' and the episodes' contents (a path may hold others)
        # the frames too: two scenes' stores of one seed hold the same actions (states saved without this key
        # resume as before)
        frames = fingerprint(*(ep["obs"] for ep in episodes))
        self.resume = {**resume_settings(cfg), "data_fingerprint": fingerprint(*(ep["actions"] for ep in episodes)),
                       "frames_fingerprint": frames,
                       "source_sha256": [model_sha256(source) if source else None,
                                         model_sha256(vae_files) if vae_files else None]}
        data_id = [self.resume["data_fingerprint"], frames]
        if earlier is not None and earlier.get("data_fingerprint", data_id) != data_id:
            raise ValueError(f"{self.out / 'model'} was trained on other data than {cfg.data} (by contents): a "
                             f"stage trained on it would be exported under the earlier stages' record; train into "
                             f"another --out")
        if not windows(self.train_eps, self.model.spec.chunk, 1):  # else the first step fails inside numpy
            raise ValueError(f"{cfg.data}: no training episode has {self.model.spec.chunk} steps (one chunk); "
                             f"make longer episodes (make-data --env-steps)")
        self.record = {} if earlier is None else earlier  # stages may run in separate commands: keep both records
        command = command or shlex.join(sys.argv)
        # every command that trained into this folder, in order (stages may run in separate commands); the latest's
        # config in full
        history = self.record.get("commands") or ([{"command": self.record["command"],
                                                     "stages": list(self.record["config"]["stages"])}]
                                                   if "command" in self.record else [])
        self.record.update({"command": command, "commands": [*history, {"command": command,
                                                                        "stages": list(cfg.stages)}],
                            "config": asdict(self.cfg), "data_attrs": self.data_attrs, "data_fingerprint": data_id,
                            "train_episodes": len(self.train_eps), "heldout_episodes": len(self.held_eps)})
        if self.source and (self.source / "training.json").is_file():  # the lineage of the starting weights
            self.record["started_from"] = {"checkpoint": str(self.source),
                                           "record": json.loads((self.source / "training.json").read_text())}
        self.out.mkdir(parents=True, exist_ok=True)  # after every check: a refused run leaves no folder

    def _spec(self) -> WorldModelSpec:
        """A new model's spec: frame size and action box from the data, sampling conventions of the real model."""
        h, w = self.train_eps[0]["obs"].shape[1:3]
        a = self.train_eps[0]["actions"].shape[1]
        gen = self.data_attrs.get("generator", {})
        if h % 8 or w % 8:  # the VAE's 4x, then the DiT's 2x2 patches (`WorldModel.build`)
            raise ValueError(f"{self.cfg.data}: {h}x{w} frames; a new model takes sizes divisible by 8 (the VAE's 4x, "
                             f"then the DiT's 2x2 patches): make the data at such a size (make-data --height/--width, "
                             f"e.g. 80 and 96)")
        return WorldModelSpec(height=h, width=w, action_dim=a, action_low=list(gen.get("action_low", [-1.0] * a)),
                              action_high=list(gen.get("action_high", [1.0] * a)),
                              fps=float(gen.get("fps", self.data_attrs.get("fps", 20.0))), cond_frame_timestep=None,
                              cosmos_sigmas=True, quantise_timestep=True, fp32_time_embedding=True)

    # --- generic resumable loop --------------------------------------------------------------------------------
    def _run(self, stage: str, module: torch.nn.Module, steps: int, lr: float, loss_fn,
             minutes: float | None = None, began: float | None = None, ema_decay: float = 0.0,
             gen: torch.Generator | None = None, settings: dict | None = None):
        """Train `module` for `steps` steps (or about `minutes`: see the module doc); returns the losses and the
        moving average of its weights (`ema_decay` > 0; else None), which the caller copies in or not.
        `began`: when the budget of `minutes` started (`time.perf_counter`; default now). `gen`: a generator
        `loss_fn` draws from, saved and restored with the state, so a resumed run draws what an unbroken one would.
        `settings`: what a saved state must have been trained under to be resumed (default: the run's `resume`)."""
        state_file = self.out / f"state_{stage}.pt"
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        ema = None
        if ema_decay > 0:
            from diffusers.training_utils import EMAModel

            ema = EMAModel(params, decay=ema_decay, foreach=True)
        total = [steps]  # the schedule reads it: a timed run sets it after its first steps
        pending = minutes is not None  # a timed run whose step count is still to be set from its measured rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (
            1 + math.cos(math.pi * min(s, total[0]) / total[0])))
        rng = np.random.default_rng([self.cfg.seed, ("vae", "dit").index(stage)])
        step, losses, extra = 0, [], None  # extra: the minutes a longer budget adds to a finished timed run
        if state_file.exists():
            st = torch.load(state_file, weights_only=False, map_location=self.device)
            self._check_state(state_file, st, settings, minutes, ema_decay)
            module.load_state_dict(st["module"] if "module" in st else self._stage_part(module, st["model"]))
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            rng.bit_generator.state = st["rng"]
            torch.set_rng_state(st["torch_rng"].cpu())
            if gen is not None and "gen" in st:  # states saved before it was kept restart its draws
                gen.set_state(st["gen"].cpu())
            step, losses = st["step"], st["losses"]
            print(f"train {stage}: resuming at step {step} ({state_file})", file=sys.stderr)
            if ema is not None:
                ema.load_state_dict(st["ema"])
            if pending:  # a resumed timed run keeps the step count it set (or measures it if it had not yet)
                total[0], pending = st.get("total", steps), st.get("pending", True)
                done = st.get("minutes")
                if not pending and done is not None and minutes > done:
                    if step >= total[0]:  # a finished run given a longer budget: time the extra minutes
                        pending, began, extra = True, None, minutes - done
                        # until they are timed, the count at the old run's rate: the schedule past its old end
                        # would give the measuring steps a rate of 0
                        total[0] = step + max(1, round(total[0] / done * extra))
                    else:  # an interrupted one first ends at its count (re-timing now would cut it short)
                        print(f"{state_file}: step {step} of the {total[0]} its {done}-minute budget set: this run "
                              f"ends there; run again to add the other {minutes - done:g} minutes", file=sys.stderr)
            if step > total[0]:
                print(f"train {stage}: the state has {step} steps, more than the {total[0]} asked for: nothing to "
                      f"train (it is exported as it is)", file=sys.stderr)
            if total[0] != st.get("total", total[0]):  # a longer --*-steps: the saved rate is the old schedule's
                for group, base, rate in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):  # (0 at its end)
                    group["lr"] = base * rate(sched.last_epoch)
        module.train()
        bar = tqdm(total=total[0], initial=step, desc=f"train {stage}", unit="step", dynamic_ncols=True)
        budget = (StepBudget(extra if extra is not None else minutes, time.perf_counter() if began is None else began,
                             step) if pending else None)
        began_at = step

        def save():
            tmp = state_file.with_suffix(".tmp")  # write then rename: a kill never leaves a broken state
            # the stage's module only: the other stage's weights stay what this run started from (a later run of
            # that stage must not be undone by resuming this one)
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step,
                        "losses": losses, "total": total[0], "pending": pending, "minutes": minutes,
                        "config": self.resume if settings is None else settings,
                        **({"ema": ema.state_dict()} if ema is not None else {}),
                        **({"gen": gen.get_state()} if gen is not None else {})}, tmp)
            tmp.replace(state_file)

        saver = interrupt.StepSaver(save)  # a stop lands between steps, where the state is whole, and is saved
        with saver.loop():
            while step < total[0] or (pending and step < budget.first_count):
                with saver.step():
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                        loss = loss_fn(rng)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    if ema is not None:
                        ema.step(params)
                    step += 1
                    losses.append(loss.item())
                    if budget is not None and (count := budget.update(step, time.perf_counter())) is not None:
                        total[0], pending = count, False
                        bar.total = total[0]
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                if step % self.cfg.save_every == 0 or step == total[0]:
                    saver.save()
        bar.close()
        module.eval()
        if step > began_at:
            self.stepped.add(stage)
        return losses, ema

    def _check_state(self, state_file: Path, st: dict | None = None, settings: dict | None = None,
                     minutes: float | None = None, ema_decay: float = 0.0) -> None:
        """Refuse to resume a stage's saved state (`st`, else read from `state_file` if it exists) trained under
        other `settings` (default: the run's `resume`), timed where it was not (`minutes`), or averaged otherwise
        (`ema_decay`)."""
        if st is None:
            if not state_file.exists():
                return
            # memory-mapped: the settings are read, the weights and optimiser state not (`_run` loads them)
            st = torch.load(state_file, weights_only=False, map_location="cpu", mmap=True)
        now = self.resume if settings is None else settings
        saved = st.get("config", now)  # states saved before settings were kept are taken as this run's
        diff = sorted(k for k in saved.keys() & now.keys() if saved.get(k) != now.get(k))  # as far as kept
        if diff == ["vae_fingerprint"]:  # this --out's VAE trained on since: the DiT's state is of the old latents
            raise ValueError(f"{state_file}: its DiT learned the latents of the VAE before this --out's last VAE "
                             f"steps; to train it on this VAE's, remove {state_file} (the stage then starts from the "
                             f"exported DiT), or give another --out")
        if diff:  # another run's state: resuming it would train (and export) that run's weights under this record
            raise ValueError(f"{state_file}: saved by a run with other settings ("
                             + ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in diff)
                             + "); resume with the same settings, or train into another --out")
        decay = st["ema"]["decay"] if "ema" in st else 0.0  # an average is continued as it was begun, or not
        if decay != ema_decay:
            raise ValueError(f"{state_file}: saved with EMA decay {decay}, resumed with {ema_decay}: resume with the "
                             "same decay, or train in a new folder")
        if minutes is not None and "minutes" in st and st["minutes"] is None:  # it would not extend: say so
            stage = state_file.stem.removeprefix("state_")
            raise ValueError(f"{state_file}: a run of {st['total']} steps (--{stage}-steps), not a timed one: "
                             f"--{stage}-minutes cannot continue it; give --{stage}-steps (more than {st['step']} "
                             f"trains on)")

    def _stage_part(self, module: torch.nn.Module, model_state: dict) -> dict:
        """A state saved with the whole model (before 2026-12-06): the stage's module's part of it."""
        prefix = next(name for name, m in self.model.named_modules() if m is module) + "."
        return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}

    # --- stage 1: VAE ------------------------------------------------------------------------------------------
    def train_vae(self) -> None:
        # Whole chunks (1 + k frames): Wan's causal encoder/decoder carry a feature cache from one 4-frame group
        # to the next, and a VAE trained on single groups (5 frames) decodes every later group badly (~15 dB).
        vae, clip = self.model.vae, 1 + self.model.spec.chunk
        wins = windows(self.train_eps, clip - 1, 1)
        if self.cfg.vae_decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        # the posterior's noise from a generator on the device, saved with the state: CUDA's default generator is not
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)

        def loss_fn(rng):
            idx = rng.choice(len(wins), self.cfg.vae_batch)
            x = torch.stack([torch.from_numpy(self.train_eps[e]["obs"][t:t + clip]) for e, t in (wins[i] for i in idx)])
            x = x.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
            post = vae.encode(x).latent_dist
            eps = torch.randn(post.std.shape, generator=gen, device=self.device, dtype=post.std.dtype)
            rec = vae.decode(post.mode() + post.std * eps).sample.float()
            loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + self.cfg.kl_weight * post.kl().mean()
            if self.cfg.vae_handover:
                loss = loss + self.cfg.vae_handover * handover_loss(self.model, rec, x)
            return loss

        losses, _ = self._run("vae", vae, self.cfg.vae_steps, self.cfg.vae_lr, loss_fn, self.cfg.vae_minutes, gen=gen,
                              settings={k: v for k, v in self.resume.items() if k not in DIT_ONLY})
        self.record["vae"] = {"steps": len(losses), "final_loss": float(np.mean(losses[-50:])),
                              "decoder_only": self.cfg.vae_decoder_only, "handover": self.cfg.vae_handover}
        if not self.cfg.vae_decoder_only:
            self._set_latent_stats()

    @torch.no_grad()
    def _set_latent_stats(self) -> None:
        """Per-channel latent mean/std over training clips, stored in the VAE config as Wan does."""
        m = self.model
        m.latents_mean.zero_()
        m.latents_std.fill_(1.0)
        wins = windows(self.train_eps, m.spec.chunk, m.spec.chunk)[:256]
        zs = torch.cat([m.encode(torch.from_numpy(self.train_eps[e]["obs"][t:t + m.spec.chunk + 1])[None])
                        for e, t in wins])
        mean, std = zs.mean(dim=(0, 2, 3, 4)), zs.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        m.vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
        m.latents_mean.copy_(mean.view(1, -1, 1, 1, 1))
        m.latents_std.copy_(std.view(1, -1, 1, 1, 1))

    # --- stage 2: DiT ------------------------------------------------------------------------------------------
    def _windows(self, episodes) -> list[tuple[int, int]]:
        """The DiT's training windows (episode, start) of `episodes`: `cond_frames` conditioning frames, then the
        frames of `chunk` actions; every index into them (`pick`, own conditioning) refers to this order."""
        s = self.model.spec
        return windows(episodes, s.chunk + s.cond_frames - 1, 1)

    @torch.no_grad()
    def _encode_each(self, n: int, frames, desc: str) -> torch.Tensor:
        """The model's latents of `frames(j)` (uint8 (T, H, W, 3)) for j < n, on the CPU, encoded in batches of the
        training batch (a GPU is launch-bound at 32)."""
        lat, b = [], self.cfg.dit_batch
        for i in tqdm(range(0, n, b), desc=desc, unit="batch", dynamic_ncols=True):
            batch = np.stack([frames(j) for j in range(i, min(i + b, n))])
            lat.append(self.model.encode(torch.from_numpy(batch)).cpu())
        return torch.cat(lat)

    def _encode_windows(self, episodes, pick=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and actions of every window of `episodes` (or of the windows `pick`, indices into them)."""
        k, c = self.model.spec.chunk, self.model.spec.cond_frames
        wins = self._windows(episodes)
        wins = wins if pick is None else [wins[i] for i in pick]

        def window(j):
            e, t = wins[j]
            return episodes[e]["obs"][t:t + c + k]

        act = np.stack([episodes[e]["actions"][t + c - 1:t + c - 1 + k] for e, t in wins])
        return self._encode_each(len(wins), window, "encode windows"), torch.from_numpy(act).float()

    def _blurred_conditioning(self) -> torch.Tensor:
        """The conditioning latent frames of every training window (in `_encode_windows`' order), encoded from its
        conditioning frames blurred by a Gaussian of sigma ~ U(0, `cond_blur`) px, one sigma per window."""
        import cv2

        c = self.model.spec.cond_frames
        wins = self._windows(self.train_eps)
        sigmas = np.random.default_rng([self.cfg.seed, 4]).random(len(wins)) * self.cfg.cond_blur

        def blurred(j):
            (e, t), s = wins[j], sigmas[j]
            return np.stack([cv2.GaussianBlur(f, (0, 0), s) if s > 1e-3 else f  # OpenCV needs sigma > 0
                             for f in self.train_eps[e]["obs"][t:t + c]])

        return self._encode_each(len(wins), blurred, "encode blurred conditioning")

    @torch.no_grad()
    def _own_conditioning(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For `self_cond_windows` random training windows that have a chunk before them: the indices of those
        windows (in `_encode_windows`' order) and their conditioning latents as the model itself predicts them from
        the real frames one chunk earlier and the real actions in between (`self_cond_source` "model"), or as the
        VAE hands them on from that chunk's real frames ("vae": encoded with the frames before them, decoded)."""
        m, n = self.model, self.cfg.self_cond_windows
        k, c = m.spec.chunk, m.spec.cond_frames
        wins = self._windows(self.train_eps)
        rng = np.random.default_rng([self.cfg.seed, 2])
        after = [i for i, (_, t) in enumerate(wins) if t >= k]
        if not after:
            raise ValueError(f"self_cond needs training episodes longer than two chunks ({2 * k + c - 1} actions)")
        pick = np.sort(rng.choice(after, min(n, len(after)), replace=False))
        seeds = rng.integers(0, 2**31, len(pick))
        lat, b = [], self.cfg.dit_batch  # per-window seeds: the batch size changes only the speed
        desc = "predict own conditioning" if self.cfg.self_cond_source == "model" else "conditioning through the VAE"
        for j in tqdm(range(0, len(pick), b), desc=desc, unit="batch", dynamic_ncols=True):
            part = [wins[i] for i in pick[j:j + b]]
            # frames t-k .. t-k+c-1 and their k actions predict frames t-k+c .. t+c-1, whose last c condition (e, t)
            clip = torch.stack([torch.from_numpy(self.train_eps[e]["obs"][t - k:t + c]) for e, t in part])
            if self.cfg.self_cond_source == "vae":  # the frames a rollout decodes, had the DiT been exact
                new = m.decode(m.encode(clip))
            else:
                act = np.stack([self.train_eps[e]["actions"][t - k + c - 1:t + c - 1] for e, t in part])
                new, _ = m.predict(clip[:, :c], act, num_steps=SELF_COND_STEPS, seed=seeds[j:j + b].tolist())
            lat.append(m.encode(new[:, -c:]).cpu())
        return torch.from_numpy(pick), torch.cat(lat)

    def _cached(self, name: str, make, inputs: str):
        """`make()`, saved in the run folder so that a resumed run reads it back; `inputs` fingerprints what it was
        made from (`fingerprint`), so a folder reused with other data, weights or settings makes it again."""
        file, key = self.out / name, self.out / f"{name}.inputs"
        if file.exists() and key.exists() and key.read_text() == inputs:
            return torch.load(file)
        if file.exists():
            print(f"{file}: made from other data, weights or settings; making it again", file=sys.stderr)
        key.unlink(missing_ok=True)  # the key last: a kill in between leaves a file that is made again
        value = make()
        torch.save(value, file)
        key.write_text(inputs)
        return value

    def train_dit(self) -> None:
        began = time.perf_counter()  # `dit_minutes` counts the preparation below
        m, c = self.model, self.cfg
        # before any DiT step or resume, the weights are the stage's starting ones, as when the files were made
        # the training split is the episodes' (already hashed in `resume`) cut by the holdout: not hashed again
        data = fingerprint(self.resume["data_fingerprint"], self.resume["frames_fingerprint"], self.cfg.holdout)
        # what the latents depend on: the encoder and the statistics (a decoder-only VAE stage leaves them)
        encoder = (v for k, v in m.vae.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv.")))
        vae_id = fingerprint(*encoder, m.latents_mean, m.latents_std)
        # a DiT state is of the latents of the VAE it trained on: one resumed over a VAE trained on since would
        # continue on another latent space (states saved before this key resume as before); checked before the
        # windows are encoded (minutes on a CPU)
        settings = {**{k: v for k, v in self.resume.items() if k not in VAE_ONLY + ("source_sha256",)},
                    "vae_fingerprint": vae_id, "start_sha256": self.resume["source_sha256"][0]}  # not --vae-from's
        self._check_state(self.out / "state_dit.pt", settings=settings, minutes=c.dit_minutes, ema_decay=c.dit_ema)
        windows_in = fingerprint(data, m.spec.chunk, m.spec.cond_frames, vae_id)
        latents, actions = self._cached("dit_windows.pt", lambda: self._encode_windows(self.train_eps), windows_in)
        if c.self_cond > 0:
            own_in = fingerprint(windows_in, c.seed, c.self_cond_windows, SELF_COND_STEPS, *m.state_dict().values())
            name = f"{'own' if c.self_cond_source == 'model' else 'vae'}_conditioning_{c.self_cond_windows}.pt"
            own_idx, own = self._cached(name, self._own_conditioning, own_in)
            own_idx, own = own_idx.to(self.device), own.to(self.device)
            n_own = int(round(self.cfg.self_cond * self.cfg.dit_batch))
        if c.cond_blur > 0:
            blur_in = fingerprint(windows_in, c.seed, c.cond_blur)
            blurred = self._cached(f"blurred_conditioning_{c.cond_blur}.pt", self._blurred_conditioning,
                                   blur_in).to(self.device)
        for p in m.vae.parameters():
            p.requires_grad_(False)
        if self.cfg.compile:  # the blocks' weights stay the modules': the export is unchanged
            m.dit.compile_blocks()
        latents, actions = latents.to(self.device), actions.to(self.device)  # small: indexed where they live
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
        shift = self.cfg.flow_shift

        def loss_fn(rng):
            idx = torch.from_numpy(rng.choice(len(latents), self.cfg.dit_batch)).to(self.device)
            if self.cfg.self_cond > 0:  # the first n_own samples: windows with the model's own conditioning
                j = torch.from_numpy(rng.choice(len(own_idx), n_own)).to(self.device)
                idx[:n_own] = own_idx[j]
            x0, a = latents[idx], actions[idx]
            b = x0.shape[0]
            u = torch.from_numpy(rng.random(b)).float()
            sigma = train_sigma(u, shift).view(b, 1, 1, 1, 1).to(self.device)
            noise = torch.randn(x0.shape, generator=gen, device=self.device)
            x_cond = x0
            if self.cfg.cond_blur > 0 or self.cfg.self_cond > 0:
                x_cond = x0.clone()
            if self.cfg.cond_blur > 0:
                x_cond[:, :, :m.spec.cond_latent_frames] = blurred[idx]
            if self.cfg.self_cond > 0:
                x_cond[:n_own, :, :m.spec.cond_latent_frames] = own[j]
            if self.cfg.cond_noise > 0:  # an imperfect conditioning frame, as a rollout's own predictions are
                sc = torch.from_numpy(rng.random(b) * self.cfg.cond_noise).float().view(b, 1, 1, 1, 1).to(self.device)
                x_cond = x_cond + sc * noise  # read only in the conditioning frames, whose noise is otherwise unused
            return self._flow_loss(x0, x_cond, a, sigma, noise)

        losses, ema = self._run("dit", m.dit, c.dit_steps, c.dit_lr, loss_fn, c.dit_minutes, began, c.dit_ema, gen,
                                settings=settings)
        rec = self.record["dit"] = {"steps": len(losses), "final_loss": float(np.mean(losses[-50:]))}
        scoring = self.scoring_windows() if c.eval_windows > 0 else None
        if ema is not None:  # the raw weights scored too: what the average changed
            rec["ema"] = {"decay": c.dit_ema, "final_decay": ema.get_decay(ema.optimization_step)}
            if scoring is not None:
                rec["ema"]["raw_fixed_sigma_loss"] = self.fixed_sigma_losses(scoring)
            ema.copy_to(p for p in m.dit.parameters() if p.requires_grad)
        if scoring is not None:
            rec["fixed_sigma_loss"] = self.fixed_sigma_losses(scoring)

    def _flow_loss(self, x0, x_cond, a, sigma, noise) -> torch.Tensor:
        """The DiT's flow-matching loss on windows `x0` at noise levels `sigma`: the conditioning latent frames are
        read from `x_cond` (clean, or perturbed), the velocity target is on the other frames."""
        m, b = self.model, x0.shape[0]
        cond = torch.zeros(b, 1, x0.shape[2], 1, 1, device=x0.device)
        cond[:, :, :m.spec.cond_latent_frames] = 1
        xt = cond * x_cond + (1 - cond) * ((1 - sigma) * x0 + sigma * noise)
        ct = m.spec.cond_frame_timestep
        seen = torch.floor(sigma * 1000) / 1000 if m.spec.quantise_timestep else sigma  # as the sampler feeds it
        ts = seen.expand_as(cond) if ct is None else cond * ct + (1 - cond) * seen
        mask = cond.expand(-1, -1, -1, *x0.shape[-2:])
        call = ModelCall.new(len(xt), step=0, num_steps=1, branch="train")
        v = m.dit(NoCache(), call, hidden_states=xt, timestep=ts,
                  encoder_hidden_states=m.prompt_embeds.expand(b, -1, -1), condition_mask=mask, frame_cond=a).float()
        n = x0.shape[2]
        return (((v - (noise - x0)) ** 2) * (1 - cond)).mean() * n / (n - m.spec.cond_latent_frames)

    @torch.no_grad()
    def fixed_sigma_loss(self, latents: torch.Tensor, actions: torch.Tensor, seed: int = 0) -> float:
        """Mean flow-matching loss of the windows (`latents`, `actions`) at each noise level of `EVAL_U`, with noise
        drawn from `seed` (level by level, for all windows at once, so the batch size changes nothing), in fp32:
        the same windows score the same for any weights, so runs compare, and training windows with held-out ones."""
        g, total, b = torch.Generator().manual_seed(seed), 0.0, self.cfg.dit_batch
        for u in EVAL_U:
            noise = torch.randn(latents.shape, generator=g)
            for i in range(0, len(latents), b):
                x0, a = latents[i:i + b].to(self.device), actions[i:i + b].to(self.device)
                sigma = torch.full((len(x0), 1, 1, 1, 1), train_sigma(float(u), self.cfg.flow_shift),
                                   device=self.device)
                total += float(self._flow_loss(x0, x0, a, sigma, noise[i:i + b].to(self.device))) * len(x0)
        return total / (len(latents) * len(EVAL_U))

    def scoring_windows(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Up to `eval_windows` training windows and as many held-out ones (latents, actions), picked by the seed and
        encoded by the model's VAE: what `fixed_sigma_losses` scores."""
        n, rng = self.cfg.eval_windows, np.random.default_rng([self.cfg.seed, 3])
        out = {}
        for name, eps in (("train", self.train_eps), ("heldout", self.held_eps)):
            wins = self._windows(eps)
            if wins:
                out[name] = self._encode_windows(eps, np.sort(rng.choice(len(wins), min(n, len(wins)), replace=False)))
        return out

    def fixed_sigma_losses(self, windows: dict | None = None) -> dict:
        """`fixed_sigma_loss` of the `scoring_windows` (or of `windows`, as it returned them, so that two sets of
        weights are scored on one encoding): what the record keeps after the DiT stage; any checkpoint can be
        scored alike (`Trainer(TrainConfig(data, out, continue_from=CKPT)).fixed_sigma_losses()`)."""
        out = {"u": EVAL_U.tolist()}
        for name, (z, a) in (self.scoring_windows() if windows is None else windows).items():
            out[f"{name}_windows"] = len(z)
            out[name] = self.fixed_sigma_loss(z, a)
        print("DiT loss at fixed noise levels: " + ", ".join(
            f"{out[k]:.4f} on {out[f'{k}_windows']} {k} windows" for k in ("train", "heldout") if k in out))
        return out

    def run(self) -> Path:
        """Train the stages and export `OUT/model`, holding `OUT/train.lock` throughout: two runs writing one
        folder would interleave their states and exports."""
        import fcntl

        with open(self.out / "train.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS if this process dies
            except BlockingIOError:
                lock.seek(0)
                raise ValueError(f"{self.out}: another training run is writing into it ({lock.read().strip()}); "
                                 f"wait for it, or train into another --out") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
            lock.flush()
            return self._run_stages()

    def _run_stages(self) -> Path:
        start = time.time()
        if "vae" in self.cfg.stages:
            self.train_vae()
            # the DiT stage reloads from here when run alone, after this command is killed in its DiT stage too
            self._export()
            self._write_record(start)
            start = time.time()
            self.model.to(self.device)
        if "dit" in self.cfg.stages:
            self.train_dit()
        self._export()

        from .state_decoder import CONFIG_FILE, WEIGHTS_FILE, StateDecoder, train_state_decoder

        # the starting checkpoint's state decoder, unless an earlier command trained one into this folder, or it
        # learned another scene than this data's (the env and evaluate-policies would refuse the export)
        if self.source and "decoder" not in self.cfg.stages and "decoder" not in self.record \
                and StateDecoder.exists(self.source):
            try:  # the weights are exported already: a decoder that does not load must not lose the record below
                diff = scene_diff(StateDecoder.load(self.source).config.scene, self.model.spec.scene)
                why = diff and f"learned another scene than the model's (the decoder's, the model's): {diff}"
            except (ValueError, OSError) as e:
                why = f"does not load ({e})"
            if why:
                print(f"warning: {self.source}'s state decoder {why}; not copied: train one with --stages decoder",
                      file=sys.stderr)
                for name in (CONFIG_FILE, WEIGHTS_FILE):  # nor kept from an earlier command's copy into this OUT
                    (self.out / "model" / name).unlink(missing_ok=True)
            else:
                for name in (CONFIG_FILE, WEIGHTS_FILE):
                    shutil.copyfile(self.source / name, self.out / "model" / name)
        if "decoder" in self.cfg.stages:
            # a starting checkpoint's decoder is continued, as its other weights are
            first = self.source if self.source is not None and StateDecoder.exists(self.source) else None
            res = train_state_decoder(self.cfg.data, self.out / "model", steps=self.cfg.decoder_steps,
                                      holdout=self.cfg.holdout, seed=self.cfg.seed, device=self.cfg.device,
                                      init_from=first, state_file=self.out / "state_decoder.pt",
                                      save_every=self.cfg.save_every)
            self.record["decoder"] = {"steps": self.cfg.decoder_steps, "started_from": str(first) if first else None,
                                      "heldout_errors_cm": res["heldout_errors"],
                                      "final_loss": float(np.mean(res["losses"][-50:]))}
        self._write_record(start)
        if "dit" not in self.record and self.source is None and not self.given_model:
            print(f"warning: {self.out / 'model'}'s DiT is untrained (no DiT stage has run into this --out): its "
                  f"frames are noise; train it with --stages dit", file=sys.stderr)
        elif "vae" in self.stepped and "dit" not in self.cfg.stages and not self.cfg.vae_decoder_only:
            print(f"warning: {self.out / 'model'}'s DiT learned the latents of the VAE before this run's VAE steps: "
                  f"train it again on this VAE's (remove {self.out / 'state_dit.pt'}, then --stages dit)",
                  file=sys.stderr)
        return self.out / "model"

    def _export(self) -> None:
        """`OUT/model`: the weights, and the reset frames an env of it starts from."""
        self.model.cpu().save_pretrained(self.out / "model")
        write_start_frames(self.cfg.data, self.out / "model")

    def _write_record(self, start: float) -> None:
        """`OUT/model/training.json`, with the seconds since `start` added."""
        self.record["train_seconds"] = self.record.get("train_seconds", 0.0) + time.time() - start
        (self.out / "model" / "training.json").write_text(json.dumps(self.record, indent=2) + "\n")
