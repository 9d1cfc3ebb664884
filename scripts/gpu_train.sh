#!/usr/bin/env bash
# Train the bundled world model on a lent GPU machine (the `device` tool), in one prepared run of ~9 minutes:
# the image there has torch but not our other dependencies, which travel as wheels in .whl/, and the training
# store travels packed in .dev/ (scripts/pack_store.py). Outputs go to $OUT: the exported model as a tar split
# into <16 MB parts, the training log, and the 2B-size DiT timings (scripts/gpu_timing.py).
#
#   DATA=.dev/pusher2.npz.xz VAE_MIN=1.25 DIT_MIN=4.5 bash scripts/gpu_train.sh
#   DEVICE=cpu VAE_MIN=0.05 DIT_MIN=0.05 ARCH="--layers 2 --heads 2 --head-dim 16" bash scripts/gpu_train.sh  # smoke
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-runs/gpu_train}"; DEVICE="${DEVICE:-cuda}"; DATA="${DATA:-.dev/pusher2.npz.xz}"
VAE_MIN="${VAE_MIN:-1.25}"; DIT_MIN="${DIT_MIN:-4.5}"; ARCH="${ARCH:-}"; RUN="${RUN:-/tmp/wc_run}"
mkdir -p "$OUT"
start=$(date +%s)
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# the package layout as installed (envs/, rollouts/, configs/ are worldcache.envs/.rollouts/.configs)
for d in envs rollouts configs; do [[ -e worldcache/$d ]] || ln -s "../$d" "worldcache/$d"; done
mkdir -p /tmp/site/worldcache-0.0.0.dist-info  # the package reads its version from its metadata
printf 'Metadata-Version: 2.1\nName: worldcache\nVersion: 0.0.0\n' > /tmp/site/worldcache-0.0.0.dist-info/METADATA
export PYTHONPATH="$PWD:/tmp/site:${PYTHONPATH:-}"
[[ -d "$RUN/data.zarr" ]] || python3 scripts/pack_store.py unpack "$DATA" "$RUN/data.zarr" 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt" || true
# default: VAE fine-tuned from the bundled one, then the DiT; TRAIN_ARGS replaces that, e.g. to continue a model
TRAIN_ARGS="${TRAIN_ARGS:---stages vae dit --vae-from worldcache/assets/pusher --vae-minutes $VAE_MIN --dit-lr 4e-4 $ARCH}"
python3 -m worldcache.cli train --data "$RUN/data.zarr" --out "$RUN" --dit-minutes "$DIT_MIN" \
  --dit-batch "${DIT_BATCH:-128}" --device "$DEVICE" --bf16 $TRAIN_ARGS \
  2>&1 | tr '\r' '\n' | awk 'NR % 50 == 0 || /written|Error|error|Traceback/' | tee "$OUT/train.log"
echo "train done after $(( $(date +%s) - start )) s" | tee -a "$OUT/train.log"
tar -C "$RUN" -cf - model | split -b 15M - "$OUT/model.tar.part-"
cp "$RUN/model/training.json" "$OUT/training.json"
if [[ "$DEVICE" == cuda && $(( $(date +%s) - start )) -lt "${TIMING_BEFORE:-450}" ]]; then
  timeout 90 python3 scripts/gpu_timing.py --device cuda --dtype bf16 --json "$OUT/timing.json" > "$OUT/timing.log" 2>&1 \
    || echo "timing rc=$?"
fi
echo "all done after $(( $(date +%s) - start )) s"
