"""Faster CPU kernels for diffusers' Wan VAE at inference: the same arithmetic, other kernels.

On a 2-core CPU the bundled VAE's decode of one chunk took 122 ms, ~8 % of an env step, and two kernels made up
most of it:

- PyTorch's convolution dispatch sends batch-1 3D convolutions with 3x3x3 kernels and few channels to its
  reference kernel (`slow_conv3d`): its oneDNN heuristic is written for 2D shapes. oneDNN
  (`torch.mkldnn_convolution`) runs them ~2-4x faster.
- `WanRMS_norm` normalises over the channel dimension of (B, C, T, H, W) with `F.normalize`, whose vector norm
  reduces across the strided dimension ~30x slower than a sum of squares does.

`use_fast_kernels(vae)` routes both through the fast kernels on CPU fp32 tensors without autograd (encoding and
decoding; VAE training keeps diffusers' own path). Latents and frames agree within 1e-5; as uint8, a few pixels
round across a grey level (the bundled model: 4 of 414720 values, 1 level; tests allow 1 level on < 0.1 %).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm


def _fast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


def _conv(conv: WanCausalConv3d, x, weight, bias):
    if _fast(x) and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return type(conv)._conv_forward(conv, x, weight, bias)


def _rms_norm(norm: WanRMS_norm, x):
    if not (_fast(x) and norm.channel_first):
        return type(norm).forward(norm, x)
    # F.normalize: x / max(||x||, eps) with eps 1e-12
    normalized = x / (x * x).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return normalized * norm.scale * norm.gamma + norm.bias


def use_fast_kernels(vae: torch.nn.Module) -> None:
    """Route `vae`'s causal 3D convolutions and channel-first RMS norms through the fast CPU kernels (instance
    attributes: the weights, the state dict and the GPU path are untouched)."""
    for module in vae.modules():
        if isinstance(module, WanCausalConv3d):
            module._conv_forward = functools.partial(_conv, module)
        elif isinstance(module, WanRMS_norm):
            module.forward = functools.partial(_rms_norm, module)
