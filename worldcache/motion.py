"""Motion on the DiT token grid: dense optical flow (OpenCV Farnebäck) and warping of cached features.

Tokens are (B, N, C) with N = T*H*W on the grid from patchify. A frame's features are reduced to one
8-bit image (per-token feature norm after per-channel standardisation) so that OpenCV's flow can run on it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def _grid_images(tokens: torch.Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """(B, N, C) -> (B*T, H, W) float32 images in [0, 1], normalised jointly per frame pair by the caller."""
    b, _, c = tokens.shape
    t, h, w = grid
    x = tokens.float().reshape(b, t, h * w, c)
    x = (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True) + 1e-6)
    return x.norm(dim=-1).reshape(b * t, h, w).cpu().numpy()


def token_flow(src: torch.Tensor, dst: torch.Tensor, grid: tuple[int, int, int], scale: float = 0.5) -> torch.Tensor:
    """Flow g with dst(q) ~ src(q + g(q)), in token units, shape (B*T, H, W, 2) (x, y).

    Estimated at `scale` of the token grid (less noise, cheaper), then upsampled and rescaled.
    """
    a, b = _grid_images(dst, grid), _grid_images(src, grid)
    _, h, w = grid
    sh, sw = max(2, round(h * scale)), max(2, round(w * scale))
    flows = []
    for img0, img1 in zip(a, b):
        lo, hi = min(img0.min(), img1.min()), max(img0.max(), img1.max())
        to8 = lambda im: cv2.resize(((im - lo) / (hi - lo + 1e-6) * 255).astype(np.uint8), (sw, sh),
                                    interpolation=cv2.INTER_AREA)
        f = cv2.calcOpticalFlowFarneback(to8(img0), to8(img1), None, pyr_scale=0.5, levels=1, winsize=3,
                                         iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
        f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
        f[..., 0] *= w / sw
        f[..., 1] *= h / sh
        flows.append(f)
    return torch.from_numpy(np.stack(flows)).to(src.device)


def warp_tokens(feat: torch.Tensor, flow: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample (B, N, C) features at q + flow(q) (bilinear, reflection padding)."""
    b, n, c = feat.shape
    t, h, w = grid
    img = feat.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, device=feat.device), torch.arange(w, device=feat.device),
                            indexing="ij")
    px = xs[None] + flow[..., 0]
    py = ys[None] + flow[..., 1]
    coords = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1).to(img.dtype)
    out = F.grid_sample(img, coords, mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, n, c)


def laplacian(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Spatial Laplacian of each channel on the token grid (high-frequency content)."""
    b, _, c = tokens.shape
    t, h, w = grid
    img = tokens.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=img.dtype, device=img.device)[None, None]
    return F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k).reshape(b, -1)
