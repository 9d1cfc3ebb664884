"""Small, seeded, randomly initialised Cosmos DiTs for tests and the quick-start demo (no weights needed)."""
from __future__ import annotations

import torch
from diffusers import CosmosTransformer3DModel


def tiny_transformer(seed: int = 0, num_layers: int = 4, heads: int = 2, head_dim: int = 16,
                     in_channels: int = 4, text_dim: int = 32, patch=(1, 2, 2)) -> CosmosTransformer3DModel:
    # +1 input channel: Cosmos-Predict2.5 concatenates the condition mask to the latents.
    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(
        in_channels=in_channels + 1, out_channels=in_channels, num_attention_heads=heads, attention_head_dim=head_dim,
        num_layers=num_layers, mlp_ratio=2.0, text_embed_dim=text_dim, adaln_lora_dim=16, max_size=(16, 32, 32),
        patch_size=patch, rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable")
    # diffusers zero-initialises some projections; random weights everywhere make caching decisions non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()


def tiny_inputs(batch: int = 1, channels: int = 4, frames: int = 3, height: int = 8, width: int = 8,
                text_dim: int = 32, text_len: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, channels, frames, height, width, generator=g)
    cond = torch.randn(batch, channels, frames, height, width, generator=g)
    emb = torch.randn(batch, text_len, text_dim, generator=g)
    neg = torch.randn(batch, text_len, text_dim, generator=g)
    return noise, cond, emb, neg
