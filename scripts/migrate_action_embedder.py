"""One-off migration of the bundled model to the official action-embedder structure (issue 12).

The old embedder (a shared SiLU trunk with two linear heads, its D-term added after `time_embed.norm`) cannot be
mapped onto NVIDIA's structure (two GELU(tanh) MLPs, D-term before the norm). Retraining the DiT from a fresh
embedder takes hours on the shared CPUs, so the new embedder is first fitted to reproduce the old one's effect on
the timestep embedding over the training actions and timesteps:

    a3D_new(x)                  ~ to_temb(trunk(x))                 (the adaLN-LoRA term, same place)
    norm(sin(t) + aD_new(x))    ~ norm(sin(t)) + to_emb(trunk(x))   (the D-term, moved before the norm)

and the result is written as a checkpoint folder from which `worldcache train --stages dit` fine-tunes the whole
DiT (put the folder at OUT/model). The conditioning frame, which the old embedder gave its biases, now gets zero.

    python scripts/migrate_action_embedder.py --old worldcache/assets/pusher --windows runs/pusher12/dit_windows.pt \
        --out runs/pusher12m/model
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from worldcache.world_model import WorldModel


def old_embedder(state: dict):
    """The pre-issue-12 ActionEmbedder forward: (N, 4A) -> (temb add (N, 3D), embedded_timestep add (N, D))."""
    w = {k: v.float() for k, v in state.items()}

    def run(x):
        h = F.linear(F.silu(F.linear(x, w["mlp.0.weight"], w["mlp.0.bias"])), w["mlp.2.weight"], w["mlp.2.bias"])
        return F.linear(h, w["to_temb.weight"], w["to_temb.bias"]), F.linear(h, w["to_emb.weight"], w["to_emb.bias"])
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="checkpoint folder with the old-structure action embedder")
    ap.add_argument("--windows", required=True, help="the trainer's dit_windows.pt (latents, actions)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    old = old_embedder(load_file(str(Path(args.old) / "action_embedder.safetensors")))
    model = WorldModel.from_pretrained(args.old, fresh_action_embedder=True)
    emb = model.dit.cond_embedder
    te = model.dit.transformer.time_embed
    _, actions = torch.load(args.windows)
    x_all = actions.reshape(-1, emb.action_embedder_B_D.fc1.in_features).float()
    with torch.no_grad():  # start from the old trunk's first layer (SiLU and GELU(tanh) are close)
        ref_state = load_file(str(Path(args.old) / "action_embedder.safetensors"))
        w1, b1 = ref_state["mlp.0.weight"].float(), ref_state["mlp.0.bias"].float()
        for mlp in (emb.action_embedder_B_D, emb.action_embedder_B_3D):
            mlp.fc1.weight.normal_(0, 0.02)
            mlp.fc1.bias.zero_()
            mlp.fc1.weight[: w1.shape[0]] = w1
            mlp.fc1.bias[: w1.shape[0]] = b1
    opt = torch.optim.Adam(emb.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters)
    norm_w = te.norm.weight.float().detach()

    def rms_norm(u):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_w

    def losses(n=512):
        x = x_all[torch.randint(len(x_all), (n,))]
        u = torch.rand(n)
        sigma = 5 * u / (1 + 4 * u)  # the trainer's timestep distribution
        sin = te.time_proj(sigma).float()
        t3, td = old(x)
        a3 = emb.action_embedder_B_3D(x)
        ad = emb.action_embedder_B_D(x)
        target = rms_norm(sin) + td
        l3 = F.mse_loss(a3, t3) / t3.var()
        ld = F.mse_loss(rms_norm(sin + ad), target) / td.var()
        return l3, ld

    for i in range(args.iters):
        l3, ld = losses()
        opt.zero_grad()
        (l3 + ld).backward()
        opt.step()
        sched.step()
        if i % 250 == 0 or i == args.iters - 1:
            print(f"iter {i}: relative mse a3D {l3.item():.4f}, D-term {ld.item():.4f}", flush=True)
    with torch.no_grad():
        l3, ld = losses(8192)
    print(f"final relative mse on 8192 samples: a3D {l3.item():.4f}, D-term {ld.item():.4f}")

    out = Path(args.out)
    model.save_pretrained(out)
    for name in ("state_decoder.json", "state_decoder.safetensors", "start_frames.npy", "training.json"):
        if (Path(args.old) / name).is_file():
            shutil.copyfile(Path(args.old) / name, out / name)
    (out / "migration.json").write_text(json.dumps(
        {"from": str(args.old), "iters": args.iters, "relative_mse_a3D": l3.item(),
         "relative_mse_D": ld.item()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
