"""Train one state decoder (frame -> positions) and print its held-out errors as JSON: run by scripts/gpu_train.sh
beside the DiT on the same GPU, since the decoder reads real frames only and does not wait for the world model.

    python scripts/gpu_decoder.py DATA OUT --steps 20000 --batch 256 --size 32 16 128 --device cuda
"""
from __future__ import annotations

import argparse
import json

from worldcache.state_decoder import StateDecoderConfig, train_state_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, nargs=3, default=[32, 16, 128], metavar=("CHANNELS", "KEYPOINTS", "HIDDEN"))
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    cfg = StateDecoderConfig(channels=a.size[0], keypoints=a.size[1], hidden=a.size[2])
    r = train_state_decoder(a.data, a.out, steps=a.steps, batch_size=a.batch, lr=a.lr, device=a.device, config=cfg)
    print(json.dumps({"call": vars(a), "heldout_cm": r["heldout_errors"],
                      "final_loss": sum(r["losses"][-50:]) / len(r["losses"][-50:])}))


if __name__ == "__main__":
    main()
