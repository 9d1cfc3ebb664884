"""Quality of predicted frames: PSNR/SSIM against reference frames, and the held-out open-loop evaluation."""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _as_images(frames) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0


def psnr(pred, target) -> float:
    """Mean over frames of per-frame PSNR (dB)."""
    p, t = _as_images(pred), _as_images(target)
    return float(peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())


def ssim(pred, target) -> float:
    return float(structural_similarity_index_measure(_as_images(pred), _as_images(target), data_range=1.0))


def heldout_windows(episodes: list[dict], length: int, max_windows: int = 64, moving: float = 0.0):
    """(start frame, actions, real frames) for non-overlapping windows of `length` steps from each episode.

    `moving` > 0 keeps only windows whose real frames differ from their first frame by at least that mean
    absolute pixel value (so "repeat the last frame" cannot score well by a static scene).
    """
    starts, acts, reals = [], [], []
    for ep in episodes:
        for t in range(0, len(ep["actions"]) - length + 1, length):
            real = ep["obs"][t + 1:t + 1 + length]
            if np.abs(real.astype(np.int16) - ep["obs"][t].astype(np.int16)).mean() < moving:
                continue
            starts.append(ep["obs"][t])
            acts.append(ep["actions"][t:t + length])
            reals.append(real)
    return np.stack(starts[:max_windows]), np.stack(acts[:max_windows]), np.stack(reals[:max_windows])


@torch.no_grad()
def evaluate_open_loop(model, episodes: list[dict], chunks: int = 4, policy=None, num_steps: int | None = None,
                       moving: float = 2.0, max_windows: int = 16, batch: int = 8, seed: int = 0) -> dict:
    """PSNR/SSIM of a `chunks`-chunk open-loop rollout vs. the simulator's frames, and of repeating the start
    frame (the trivial predictor), on held-out moving windows."""
    starts, acts, reals = heldout_windows(episodes, chunks * model.spec.chunk, max_windows, moving)
    preds = []
    for i in range(0, len(starts), batch):
        frames, _ = model.rollout(starts[i:i + batch], acts[i:i + batch], policy=policy, num_steps=num_steps,
                                  seed=seed)
        preds.append(frames.cpu().numpy())
    pred = np.concatenate(preds)
    repeat = np.broadcast_to(starts[:, None], reals.shape)
    return {"windows": int(len(starts)), "frames": int(reals.shape[0] * reals.shape[1]),
            "psnr": psnr(pred, reals), "ssim": ssim(pred, reals),
            "psnr_repeat_last": psnr(repeat, reals), "ssim_repeat_last": ssim(repeat, reals)}
