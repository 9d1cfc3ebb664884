"""State decoder: frame -> fingertip, object and goal positions, so a world-model env's reward reads the frames.

The world model predicts pixels, not simulator state. The decoder reads the positions off a frame, and the reward
is then the task's own formula (`task.task_reward`) on the decoded positions plus the exact control cost of
the actions: nothing about the reward is learnt but where things are. A small CNN with pixel-coordinate channels
ends in keypoint maps whose soft-argmax coordinates (where each map peaks) and pooled features an MLP turns into
the 9 positions (standardised by the training mean/std; outputs in metres).

Files, next to the world model in a checkpoint folder::

    state_decoder.json          StateDecoderConfig (sizes and the target normalisation)
    state_decoder.safetensors   weights
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import interrupt
from .scene import scene_diff, scene_record
from .task import GOAL, TIP

CONFIG_FILE = "state_decoder.json"
WEIGHTS_FILE = "state_decoder.safetensors"
BODIES = ("fingertip", "object", "goal")  # the 9 outputs: 3 xyz positions in this order


@dataclass
class StateDecoderConfig:
    height: int = 80
    width: int = 96
    channels: int = 32
    keypoints: int = 16
    hidden: int = 128
    mean: list = field(default_factory=lambda: [0.0] * 9)  # target normalisation (metres)
    std: list = field(default_factory=lambda: [1.0] * 9)
    scene: dict | None = None  # the view it learned: a make-data store's scene record (`SCENE_KEYS`); None: v1


class StateDecoder(nn.Module):
    def __init__(self, config: StateDecoderConfig | None = None):
        super().__init__()
        self.config = c = config or StateDecoderConfig()
        if c.height % 4 or c.width % 4:
            raise ValueError(f"frame size {c.height}x{c.width} must be divisible by 4")
        ch = c.channels
        self.cnn = nn.Sequential(  # 2 stride-2 convs: 80x96 -> 20x24 maps
            nn.Conv2d(5, ch // 2, 3, 2, 1), nn.SiLU(), nn.Conv2d(ch // 2, ch, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(ch, ch, 3, 1, 1), nn.SiLU())
        self.keypoints = nn.Conv2d(ch, c.keypoints, 1)
        self.mlp = nn.Sequential(nn.Linear(3 * c.keypoints + ch, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 9))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, c.height), torch.linspace(-1, 1, c.width), indexing="ij")
        self.register_buffer("coords", torch.stack([ys, xs])[None], persistent=False)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, c.height // 4), torch.linspace(-1, 1, c.width // 4),
                                indexing="ij")
        self.register_buffer("grid", torch.stack([ys.flatten(), xs.flatten()]), persistent=False)  # (2, h*w)
        self.register_buffer("mean", torch.tensor(c.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(c.std, dtype=torch.float32), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, H, W, 3), uint8 or float in [0, 255] -> standardised positions (B, 9)."""
        x = frames.to(self.coords.dtype).permute(0, 3, 1, 2) / 127.5 - 1
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        f = self.cnn(x)
        logits = self.keypoints(f).flatten(2)                 # (B, K, h*w)
        p = logits.softmax(-1)
        xy = torch.einsum("bkn,cn->bkc", p, self.grid).flatten(1)  # soft-argmax: where each map peaks
        peak = logits.max(-1).values                           # how sure (is the body visible at all)
        return self.mlp(torch.cat([xy, peak, f.mean(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def predict(self, frames, batch: int = 256) -> np.ndarray:
        """Positions in metres, float64 (..., 9) = fingertip, object, goal xyz, for uint8 frames (..., H, W, 3)."""
        frames = np.asarray(frames)
        c = self.config
        if frames.dtype != np.uint8 or frames.shape[-3:] != (c.height, c.width, 3):
            raise ValueError(f"the state decoder reads uint8 (..., {c.height}, {c.width}, 3) frames, got "
                             f"{frames.dtype} {frames.shape}")
        flat = frames.reshape(-1, *frames.shape[-3:])
        dev = self.coords.device
        out = [self(torch.as_tensor(flat[i:i + batch], device=dev)) * self.std + self.mean
               for i in range(0, len(flat), batch)]
        out = torch.cat(out).double().cpu().numpy() if out else np.zeros((0, 9))
        return out.reshape(*frames.shape[:-3], 9)

    def terms(self, frames) -> np.ndarray:
        """Per-step position terms of the task reward (`task.reward_terms`) on the decoded positions:
        frames (..., H, W, 3) -> (..., 2)."""
        from .task import reward_terms

        pos = self.predict(frames)
        return reward_terms(pos[..., 0:3], pos[..., 3:6], pos[..., 6:9])

    def rewards(self, frames, actions) -> np.ndarray:
        """Per-step task rewards: `task_reward` on the positions decoded from each frame after its action, with
        the exact control cost of that action. frames (..., T, H, W, 3), actions (..., T, A) -> (..., T)."""
        from .task import reward_from_terms

        frames, actions = np.asarray(frames), np.asarray(actions)
        if actions.ndim < 1 or actions.shape[:-1] != frames.shape[:-3]:  # else broadcasting hides the mistake
            raise ValueError(f"actions {actions.shape} must be one per frame (..., T, A) for frames {frames.shape}")
        return reward_from_terms(self.terms(frames), actions)

    def chunk_reward(self, frames, actions) -> float:
        """An env step's reward: the sum over the chunk of its steps' rewards (the env's default reward_fn)."""
        return float(self.rewards(frames, actions).sum())

    def check_frames(self, spec, where) -> None:
        """Refuse a model whose frames are of another size than the decoder reads (`spec`: its `WorldModelSpec`)."""
        c = self.config
        if (c.height, c.width) != (spec.height, spec.width):
            raise ValueError(f"{where}: the state decoder reads {c.height}x{c.width} frames, the model predicts "
                             f"{spec.height}x{spec.width}")

    def check_scene(self, model_scene: dict | None, where) -> None:
        """Refuse to read a model's frames through another camera: positions would be read in the wrong view."""
        if diff := scene_diff(self.config.scene, model_scene):
            raise ValueError(f"{where}: the state decoder learned another scene than the model's (the decoder's, the "
                             f"model's): {diff}; train a decoder on data of the model's scene")

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / WEIGHTS_FILE).is_file()

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "StateDecoder":
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (a state decoder needs {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE})")
        try:
            raw = json.loads((folder / CONFIG_FILE).read_text())
            unknown = set(raw) - {f.name for f in fields(StateDecoderConfig)}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            dec = cls(StateDecoderConfig(**raw))
            dec.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except Exception as e:  # bad JSON, wrong sizes, corrupt safetensors: name the files
            raise ValueError(f"{folder}: cannot load the state decoder ({CONFIG_FILE} + {WEIGHTS_FILE}): {e}") from None
        return dec.to(device).eval()


POSITIONS = slice(TIP.start, GOAL.stop)  # in Pusher's observation: fingertip, object, goal


def targets(states: np.ndarray) -> np.ndarray:
    """Pusher observations (..., 23) -> the decoder's targets (..., 9): fingertip, object, goal xyz. Needs no
    MuJoCo, so decoders train where it is not installed (the GPU machines)."""
    return np.asarray(states)[..., POSITIONS]


def position_errors(decoder: StateDecoder, frames, states) -> dict:
    """Euclidean position error per body in cm on (N, H, W, 3) frames with their (N, 23) states:
    {body: {"mean_cm", "p90_cm"}}."""
    frames, states = np.asarray(frames), np.asarray(states)
    if frames.ndim != 4 or states.ndim != 2 or len(frames) != len(states):  # (N, T, ...) would slice T as bodies
        raise ValueError(f"position_errors takes (N, H, W, 3) frames and (N, 23) states (flatten windows first), "
                         f"got {frames.shape} and {states.shape}")
    err = decoder.predict(frames) - targets(states)
    out = {}
    for i, body in enumerate(BODIES):
        d = 100 * np.linalg.norm(err[:, 3 * i:3 * i + 3], axis=1)
        out[body] = {"mean_cm": float(d.mean()), "p90_cm": float(np.percentile(d, 90))}
    return out


def train_state_decoder(store_path: str | Path, out_folder: str | Path | None, steps: int = 3000, *,
                        batch_size: int = 64, lr: float = 2e-3, holdout: float = 0.1, seed: int = 0,
                        device: str = "cpu", config: StateDecoderConfig | None = None, blur: float = 0.5,
                        init_from: str | Path | None = None, state_file: str | Path | None = None,
                        save_every: int = 500) -> dict:
    """Fit a `StateDecoder` on an episode store's frames and ``state`` extras (Pusher observations) by MSE on the
    standardised positions, and save it to `out_folder` (None: don't save).

    `blur`: the share of training frames blurred (3x3 box filter), so predicted frames, which are softer than
    real ones, read alike. `init_from`: continue from the decoder in that folder (its sizes and normalisation;
    `config` is then ignored; ``steps=0`` measures it on the store, unchanged). The last `holdout` fraction of
    the sorted episode ids is held out (the world-model trainer's split); its position errors are reported.
    `state_file`: the training state is saved there every `save_every` steps, at the end, and where Ctrl-C or
    SIGTERM stops it (between two steps), and a run that finds
    one of the same settings and data resumes from it, so it ends where an unbroken run does (None: not saved). Returns {"decoder", "losses", "heldout_errors" (None
    without held-out episodes), "train_frames", "heldout_frames"}."""
    from tqdm import tqdm

    from .rollouts.store import EpisodeStore
    from .train import split

    init = None if init_from is None else StateDecoder.load(init_from)  # before the store: a mismatch fails at once
    store = EpisodeStore(store_path, mode="r")
    gen = store.attrs.get("generator")  # a make-data store's: the scene its frames show
    scene = scene_record(gen) if gen is not None else None
    ids = sorted(store.episode_ids())
    if not ids:
        raise ValueError(f"{store_path}: no complete episodes")
    episodes = []
    for i in ids:
        ep = store.load_episode(i)
        if "state" not in ep:
            raise ValueError(f"{store_path}: episode {i!r} has no 'state' extra (Pusher observations per frame); "
                             f"make the data with `worldcache make-data`")
        if init is not None and ep["obs"].shape[1:3] != (init.config.height, init.config.width):
            raise ValueError(f"{init_from}: the decoder reads {init.config.height}x{init.config.width} frames, "
                             f"{store_path} holds {ep['obs'].shape[1]}x{ep['obs'].shape[2]}")
        episodes.append((ep["obs"], ep["state"]))
    train, val = split(episodes, holdout)
    frames = torch.as_tensor(np.concatenate([f for f, _ in train]))
    y = targets(np.concatenate([s for _, s in train])).astype(np.float32)
    mean, std = y.mean(0), np.maximum(y.std(0), 1e-3)  # the goal may never move: keep its scale finite
    cfg = StateDecoderConfig(**{**asdict(config or StateDecoderConfig()), "height": frames.shape[1],
                                "width": frames.shape[2], "mean": mean.tolist(), "std": std.tolist(), "scene": scene})
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):  # the weights' draws from `seed`, the caller's generator left as it was
        torch.manual_seed(seed)
        dec = StateDecoder(cfg) if init is None else init
    # continued on a make-data store: it now reads that store's view (not with steps=0, which only measures it)
    if init is not None and gen is not None and steps > 0:
        dec.config.scene = scene
    dec = dec.to(device).train()
    mean, std = np.asarray(dec.config.mean, np.float32), np.asarray(dec.config.std, np.float32)
    target = torch.as_tensor((y - mean) / std, device=device)
    opt = torch.optim.AdamW(dec.parameters(), lr=lr, weight_decay=1e-4)
    warm = min(0.75, max(0.05, 2 / max(steps, 1)))  # OneCycleLR divides by zero where warm * steps == 1 (2 steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1), pct_start=warm)
    losses, step = [], 0
    if state_file is not None:
        from .train import fingerprint

        state_file = Path(state_file)
        # what decides the weights: resuming another run's state would export its decoder under this one's record
        run = {"steps": steps, "batch_size": batch_size, "lr": lr, "holdout": holdout, "seed": seed, "blur": blur,
               "config": asdict(config or StateDecoderConfig()),
               "init": fingerprint(*dec.state_dict().values()) if init_from is not None else None,
               "data": fingerprint(frames, y)}
        if state_file.exists():
            st = torch.load(state_file, weights_only=False, map_location=device)
            diff = sorted(k for k in run if st["run"].get(k) != run[k])
            if diff:
                raise ValueError(f"{state_file}: saved by a decoder run with other settings or data ({', '.join(diff)}"
                                 f"); resume with the same ones, or delete it to train afresh")
            dec.load_state_dict(st["decoder"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            rng.bit_generator.state = st["rng"]
            step, losses = st["step"], st["losses"]
            print(f"train decoder: resuming at step {step} ({state_file})", file=sys.stderr)
    frames = frames.to(device)  # on a GPU the whole set fits (~0.4 GB): batches are gathered there
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train state decoder", unit="step",
               dynamic_ncols=True)
    done = step  # steps taken

    def save():
        tmp = state_file.with_suffix(".tmp")  # write then rename: a kill never leaves a broken state
        torch.save({"decoder": dec.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "rng": rng.bit_generator.state, "step": done, "losses": losses, "run": run}, tmp)
        tmp.replace(state_file)

    saver = interrupt.StepSaver(save if state_file is not None else lambda: None)  # a stop is saved between steps
    with saver.loop():
        for _ in bar:
            with saver.step():
                idx = torch.as_tensor(rng.integers(len(target), size=batch_size), device=device)
                x = frames[idx].float()
                soft = torch.as_tensor(rng.random(batch_size) < blur, device=device)
                blurred = nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False)
                x = torch.where(soft[:, None, None, None], blurred.permute(0, 2, 3, 1), x)
                loss = nn.functional.mse_loss(dec(x), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                done += 1
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            if state_file is not None and (done % save_every == 0 or done == steps):
                saver.save()
    dec.eval()
    errors = None
    if val:
        errors = position_errors(dec, np.concatenate([f for f, _ in val]), np.concatenate([s for _, s in val]))
    if out_folder is not None:
        dec.save(out_folder)
    return {"decoder": dec, "losses": losses, "heldout_errors": errors, "train_frames": len(target),
            "heldout_frames": int(sum(len(f) for f, _ in val))}
