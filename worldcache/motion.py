"""Motion on the DiT token grid: dense Lucas-Kanade flow and warping of cached features.

Tokens are (B, N, C) with N = T*H*W on the grid from patchify. The flow is estimated on all channels at once
(multi-channel Lucas-Kanade, vectorised over batch and frames). OpenCV's dense flow was tried first and is not
the right tool here: on a grid of a few tokens per side (8x10 for the bundled model, 4x5 at half resolution)
Farneback returns zero flow, and it would need a host copy and a Python loop per frame on every skipped call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, N, C) -> (B*T, C, H, W), channels standardised per frame so no channel dominates."""
    b, _, c = tokens.shape
    t, h, w = grid
    x = tokens.float().reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-6)


def _lk(src: torch.Tensor, dst: torch.Tensor, iters: int = 3, reg: float = 1e-2) -> torch.Tensor:
    """Iterative Lucas-Kanade: g with dst(q) ~ src(q + g(q)); 3x3 windows, summed over channels."""
    n, _, h, w = src.shape
    flow = src.new_zeros(n, h, w, 2)
    for _ in range(iters):
        moved = _sample(src, flow)
        gy, gx = torch.gradient(moved, dim=(2, 3))
        diff = dst - moved
        box = lambda v: F.avg_pool2d(v.sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=False)[:, 0]
        a, b_, c = box(gx * gx) + reg, box(gx * gy), box(gy * gy) + reg
        u, v = box(gx * diff), box(gy * diff)
        det = a * c - b_ * b_
        flow = flow + torch.stack([(c * u - b_ * v) / det, (a * v - b_ * u) / det], dim=-1)
    return flow


def _sample(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img sampled at q + flow(q): bilinear, reflection padding. img (N, C, H, W), flow (N, H, W, 2) as (x, y)."""
    _, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device), torch.arange(w, device=img.device), indexing="ij")
    px, py = xs[None] + flow[..., 0], ys[None] + flow[..., 1]
    coords = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1).to(img.dtype)
    return F.grid_sample(img, coords, mode="bilinear", padding_mode="reflection", align_corners=True)


def token_flow(src: torch.Tensor, dst: torch.Tensor, grid: tuple[int, int, int], scale: float = 0.5,
               max_channels: int = 16) -> torch.Tensor:
    """Flow g with dst(q) ~ src(q + g(q)), in token units, shape (B*T, H, W, 2) as (x, y).

    Estimated at `scale` of the token grid (reaches larger displacements, less noise), then upsampled and rescaled.
    Only every (C // max_channels)-th channel is used: LK sums over channels, 16 of 256 find the same shift, and
    the flow is most of WorldCache's decision overhead (2.4 -> 0.75 ms per skipped call on one CPU thread).
    """
    step = max(1, src.shape[-1] // max_channels)
    a, b = _frames(src[..., ::step].float(), grid), _frames(dst[..., ::step].float(), grid)  # fp32 whatever the weights
    h, w = a.shape[-2:]
    sh, sw = max(2, round(h * scale)), max(2, round(w * scale))
    if (sh, sw) != (h, w):
        a, b = (F.interpolate(v, size=(sh, sw), mode="area") for v in (a, b))
    flow = _lk(a, b).permute(0, 3, 1, 2)
    if (sh, sw) != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=True)
        flow = flow * torch.tensor([w / sw, h / sh], device=flow.device).view(1, 2, 1, 1)
    return flow.permute(0, 2, 3, 1)


def warp_tokens(feat: torch.Tensor, flow: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample (B, N, C) features at q + flow(q) (bilinear, reflection padding). Coordinates and interpolation run
    in fp32 whatever the features' dtype: in bf16 even a zero flow moves features (coordinates round)."""
    b, n, c = feat.shape
    t, h, w = grid
    img = feat.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    out = _sample(img.float(), flow.float()).to(feat.dtype)
    return out.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, n, c)


def laplacian(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Spatial Laplacian of each channel on the token grid (high-frequency content)."""
    b, _, c = tokens.shape
    t, h, w = grid
    img = tokens.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=img.dtype, device=img.device)[None, None]
    return F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k).reshape(b, -1)
