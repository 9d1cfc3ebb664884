"""Learned reward head for world-model environments: (frame after the action, action) -> that step's reward.

The world model predicts pixels, not simulator state, so an env built on it needs the reward from pixels. Pusher's
reward is ``-|tip - object| / 2 - |object - goal| - 0.1 |a|^2``: the distance terms are visible in the frame, the
control term depends on the action only. So a small CNN reads the frame (with pixel-coordinate channels, because
distances are about positions) and an MLP combines its features with the action and the action squared (the
control term is then linear in the input and learnt at once).

Files, next to the world model in a checkpoint folder::

    reward_head.json          RewardHeadConfig (sizes and the target normalisation)
    reward_head.safetensors   weights
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

CONFIG_FILE = "reward_head.json"
WEIGHTS_FILE = "reward_head.safetensors"


@dataclass
class RewardHeadConfig:
    height: int = 64
    width: int = 80
    action_dim: int = 7
    channels: int = 16
    hidden: int = 128
    reward_mean: float = 0.0   # the network predicts standardised rewards; outputs are in reward units
    reward_std: float = 1.0


class RewardHead(nn.Module):
    def __init__(self, config: RewardHeadConfig | None = None):
        super().__init__()
        self.config = c = config or RewardHeadConfig()
        if c.height % 8 or c.width % 8:
            raise ValueError(f"frame size {c.height}x{c.width} must be divisible by 8")
        ch = c.channels
        self.cnn = nn.Sequential(  # 3 stride-2 convs: 64x80 -> 8x10
            nn.Conv2d(5, ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * ch, 2 * ch, 4, 2, 1), nn.SiLU(), nn.Flatten(),
            nn.Linear(2 * ch * (c.height // 8) * (c.width // 8), c.hidden), nn.SiLU())
        self.mlp = nn.Sequential(nn.Linear(c.hidden + 2 * c.action_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 1))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, c.height), torch.linspace(-1, 1, c.width), indexing="ij")
        self.register_buffer("coords", torch.stack([ys, xs])[None], persistent=False)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3), actions (B, A) -> standardised rewards (B,)."""
        x = frames.to(self.coords.dtype).permute(0, 3, 1, 2) / 127.5 - 1
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        a = actions.to(x.dtype)
        return self.mlp(torch.cat([self.cnn(x), a, a * a], dim=1))[:, 0]

    @torch.no_grad()
    def predict(self, frames, actions) -> np.ndarray:
        """Rewards in reward units (numpy) for uint8 frames (B, H, W, 3) and actions (B, A)."""
        dev = self.coords.device
        y = self(torch.as_tensor(np.asarray(frames), device=dev), torch.as_tensor(np.asarray(actions), device=dev))
        return (y * self.config.reward_std + self.config.reward_mean).cpu().numpy()

    def chunk_reward(self, frames, actions) -> float:
        """An env step's reward: the sum over the chunk of head(frame_i, action_i), frame_i being after action_i."""
        return float(self.predict(frames, actions).sum())

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
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "RewardHead":
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (a reward head needs {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE})")
        try:
            raw = json.loads((folder / CONFIG_FILE).read_text())
            unknown = set(raw) - {f.name for f in fields(RewardHeadConfig)}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            head = cls(RewardHeadConfig(**raw))
            head.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except Exception as e:  # bad JSON, wrong sizes, corrupt safetensors: name the files
            raise ValueError(f"{folder}: cannot load the reward head ({CONFIG_FILE} + {WEIGHTS_FILE}): {e}") from None
        return head.to(device).eval()


def train_reward_head(store_path: str | Path, out_folder: str | Path | None, steps: int = 3000, *,
                      batch_size: int = 64, lr: float = 1e-3, holdout: float = 0.1, seed: int = 0,
                      device: str = "cpu", config: RewardHeadConfig | None = None, log_every: int = 0) -> dict:
    """Fit a `RewardHead` on an episode store by MSE and save it to `out_folder` (None: don't save).

    The last `holdout` fraction of the sorted episode ids is held out (the world-model trainer's split) and its
    MSE reported next to the MSE of always predicting the mean. Returns {"head", "losses", "val_mse",
    "val_mse_mean_baseline"} (val entries None without held-out episodes)."""
    from .train import load_episodes, split

    episodes, _ = load_episodes(store_path)
    # each reward is paired with the frame after its action
    train, val = split([{"frames": e["obs"][1:], "actions": e["actions"], "rewards": e["rewards"]}
                        for e in episodes], holdout)
    cat = {k: np.concatenate([e[k] for e in train]) for k in ("frames", "actions", "rewards")}
    h, w = cat["frames"].shape[1:3]
    mean, std = float(cat["rewards"].mean()), float(cat["rewards"].std()) or 1.0
    cfg = config or RewardHeadConfig()
    cfg = RewardHeadConfig(**{**asdict(cfg), "height": h, "width": w, "action_dim": cat["actions"].shape[1],
                              "reward_mean": mean, "reward_std": std})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = RewardHead(cfg).to(device).train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    frames = torch.as_tensor(cat["frames"])
    actions = torch.as_tensor(cat["actions"])
    target = (torch.as_tensor(cat["rewards"]) - mean) / std
    losses = []
    for step in range(steps):
        idx = torch.as_tensor(rng.integers(len(target), size=batch_size))
        loss = nn.functional.mse_loss(head(frames[idx].to(device), actions[idx].to(device)), target[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"reward head step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    head.eval()
    val_mse = base_mse = None
    if val:
        r = np.concatenate([e["rewards"] for e in val])
        pred = np.concatenate([np.concatenate([head.predict(e["frames"][i:i + 256], e["actions"][i:i + 256])
                                               for i in range(0, len(e["frames"]), 256)]) for e in val])
        val_mse, base_mse = float(np.mean((pred - r) ** 2)), float(np.mean((mean - r) ** 2))
    if out_folder is not None:
        head.save(out_folder)
    return {"head": head, "losses": losses, "val_mse": val_mse, "val_mse_mean_baseline": base_mse}
