"""Time one model call and one probe call (1 block) of a 2B-size Cosmos DiT with random weights.

The network is the Cosmos-Predict2.5-2B config (`worldcache.convert.REAL_2B_CONFIG`, as `worldcache convert`
writes it: cross-attention projection folded into the prompts) with NVIDIA's action embedder (28 -> 8192 -> D /
3D), built directly on the device in `--dtype`, the timestep embedding in fp32. Input: 256x320 video, 4 latent
frames (1 conditioning + 3 generated), i.e. 4 x 16 x 20 = 1280 tokens, 512 text tokens. Random weights: timings
only, no quality. `--tiny` runs a 2-layer, narrow version on any device (a smoke test of this script on CPU).

    python scripts/gpu_timing.py --device cuda --json runs/gpu_check/timing.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from worldcache.cache.base import ModelCall, NoCache
from worldcache.convert import REAL_2B_CONFIG
from worldcache.dit import BlockStack, DiT
from worldcache.world_model import ActionEmbedder, parse_dtype


def timed(fn, device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--tiny", action="store_true", help="2 layers, D = 64: a quick check of this script")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from diffusers import CosmosTransformer3DModel

    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    cfg = dict(REAL_2B_CONFIG, use_crossattn_projection=False)
    height, width, frames, text_len, hidden_a = 256, 320, 4, 512, 8192
    if args.tiny:
        cfg.update(num_attention_heads=2, attention_head_dim=32, num_layers=2, adaln_lora_dim=16)
        height, width, text_len, hidden_a = 64, 80, 16, 256
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        transformer = CosmosTransformer3DModel(**cfg).to(dtype).eval()
        embedder = ActionEmbedder(4 * 7, hidden_a, d).to(dtype)
    transformer.time_embed.float()  # as the real model.json asks (fp32_time_embedding)
    build_s = time.perf_counter() - t0
    dit = DiT(transformer, embedder)
    z, lh, lw = cfg["out_channels"], height // 8, width // 8
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, z, frames, lh, lw, generator=g, device=device)
    mask = torch.zeros(1, 1, frames, lh, lw, device=device)
    mask[:, :, :1] = 1
    ts = torch.full((1, 1, frames, 1, 1), 0.5, device=device)
    text = torch.randn(1, text_len, cfg["text_embed_dim"], generator=g, device=device).to(dtype)
    actions = torch.randn(1, 4 * (frames - 1), 7, generator=g, device=device).to(dtype)
    inputs = dict(hidden_states=x, timestep=ts, encoder_hidden_states=text, condition_mask=mask, frame_cond=actions)
    tokens = frames * (lh // 2) * (lw // 2)

    def model_call():
        with torch.no_grad():
            return dit(NoCache(), ModelCall.new(1, step=0, num_steps=1, branch="cond"), **inputs)


    def probe_call():  # what a probing cache policy pays on a skipped step: embed + the first block
        with torch.no_grad():
            hh, c = dit.embed(**inputs)
            return BlockStack(dit, hh, c)(hh, 0, 1)

    call_ms = timed(model_call, device, args.warmup, args.repeats)
    probe_ms = timed(probe_call, device, args.warmup, args.repeats)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": args.dtype, "tiny": args.tiny, "tokens": tokens, "text_tokens": text_len,
        "params": sum(p.numel() for p in transformer.parameters()) + sum(p.numel() for p in embedder.parameters()),
        "layers": cfg["num_layers"], "build_s": build_s,
        "model_call_ms": statistics.median(call_ms), "probe_call_ms": statistics.median(probe_ms),
        "model_call_ms_all": call_ms, "probe_call_ms_all": probe_ms,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_all")}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
