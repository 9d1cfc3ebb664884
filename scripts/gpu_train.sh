#!/usr/bin/env bash
# Train the bundled world model on a lent GPU machine (the `device` tool), in one prepared run of ~9 minutes:
# the image there has torch but not our other dependencies, which travel as wheels in .whl/, and the training
# store travels packed in .dev/ (scripts/pack_store.py). Outputs go to $OUT: the exported model as a tar split
# into <16 MB parts, and logs.tar: the training log, and the 2B-size DiT timings (scripts/gpu_timing.py).
# DECODER_STEPS=N also trains state decoders on the same GPU while the DiT trains (DECODERS: NAME=CHANNELS,KEYPOINTS,
# HIDDEN each; scripts/gpu_decoder.py); the one with the lowest held-out fingertip error goes into the model.
# BENCH_ARGS=... then benches the trained model there (`worldcache bench --checkpoint <it> $BENCH_ARGS`), into
# bench/ in logs.tar. EVAL_ARGS=... judges it there on the held-out windows of the store (`worldcache evaluate-model
# --checkpoint <it> --data <the store> $EVAL_ARGS`), into eval/ in logs.tar.
#
#   DATA=.dev/pusher2.npz.xz VAE_MIN=1.25 DIT_MIN=4.5 bash scripts/gpu_train.sh
#   DIT_MIN=4.5 DIT_BATCH=512 TRAIN_ARGS="--stages dit --continue-from worldcache/assets/pusher --dit-lr 2e-4" \
#     DECODER_STEPS=15000 DECODERS="base=32,16,128 wide=64,32,256" BENCH_ARGS="--data /tmp/wc_run/data.zarr" \
#     bash scripts/gpu_train.sh  # continue the bundled model, with new state decoders and a bench on the GPU
#   DIT_MIN=6.5 DIT_BATCH=512 TIMING_BEFORE=0 EVAL_ARGS="--chunks 1 4 --windows 40" TRAIN_ARGS="--stages dit \
#     --continue-from worldcache/assets/pusher --dit-lr 2e-4 --compile --self-cond 0.5 --self-cond-windows 12000" \
#     bash scripts/gpu_train.sh  # on its own frames too (all 11,880 windows with a chunk before them;
#                                # not better: docs/experiments.md)
#   DATA=.dev/pusher800.npz.xz DIT_MIN=6.0 DIT_BATCH=512 TIMING_BEFORE=0 TRAIN_ARGS="--stages dit \
#     --continue-from worldcache/assets/pusher --dit-lr 2e-4 --compile" bash scripts/gpu_train.sh  # 720 episodes
#     (seventeenth session: not better; add --cond-blur 1.5 for the blur-robust probe, this run its control)
#   TIMING_BEFORE=0 TRAIN_ARGS="--stages vae --continue-from worldcache/assets/pusher --vae-decoder-only --vae-lr 3e-4 \
#     --vae-minutes 6" bash scripts/gpu_train.sh  # the VAE's decoder alone, the DiT kept (eighteenth session: 2581
#     steps of 8 on CPU made a candidate; docs/experiments.md, "A decoder-only VAE fine-tune on CPU")
#   DEVICE=cpu VAE_MIN=0.05 DIT_MIN=0.05 ARCH="--layers 2 --heads 2 --head-dim 16" bash scripts/gpu_train.sh  # smoke
#
# RESUME=1 continues the run a warm machine still holds in $RUN; otherwise each call starts afresh (the unpacked
# store stays). A step that fails still packs logs.tar; train.log also goes to $OUT line by line, so a call killed
# at its limit brings back the log up to the kill.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-runs/gpu_train}"; DEVICE="${DEVICE:-cuda}"; DATA="${DATA:-.dev/pusher2.npz.xz}"
VAE_MIN="${VAE_MIN:-1.25}"; DIT_MIN="${DIT_MIN:-4.5}"; ARCH="${ARCH:-}"; RUN="${RUN:-/tmp/wc_run}"
LOGS="${LOGS:-/tmp/wc_logs}"  # $OUT brings back 8 files at most: the logs travel as one tar, packed after each stage
if [[ ! -f "$DATA" ]]; then
  echo "DATA=$DATA: no such file. Pack the training store into it (scripts/pack_store.py pack STORE $DATA) and name" \
    "its folder in the device call's carry." >&2
  exit 2
fi
if [[ "${RESUME:-0}" != 1 ]]; then  # /tmp outlives a call on a warm machine: an old run would be resumed silently
  rm -rf "$LOGS"
  if [[ -d "$RUN" ]]; then find "$RUN" -mindepth 1 -maxdepth 1 ! -name data.zarr -exec rm -rf {} +; fi
fi
mkdir -p "$OUT" "$LOGS"
pack() { tar -C "$LOGS" -cf "$OUT/logs.tar" .; }
trap pack EXIT
bf16=""; if [[ "$DEVICE" == cuda ]]; then bf16=--bf16; fi  # CPUs without bf16 units emulate it, ~10x slower
lines() { if command -v stdbuf > /dev/null; then stdbuf -oL tr '\r' '\n'; else tr '\r' '\n'; fi; }  # unbuffered
start=$(date +%s)
source scripts/device_env.sh
python3 scripts/pack_store.py unpack "$DATA" "$RUN/data.zarr" 2>&1 | tail -1  # resumes a half-done unpack
dec_pids=()
for spec in ${DECODER_STEPS:+${DECODERS:-base=32,16,128}}; do  # reads real frames only: trains beside the DiT
  name=${spec%%=*}; size=${spec#*=}
  python3 scripts/gpu_decoder.py "$RUN/data.zarr" "$RUN/dec_$name" --steps "$DECODER_STEPS" --size ${size//,/ } \
    --batch "${DECODER_BATCH:-256}" --device "$DEVICE" > "$LOGS/decoder_$name.log" 2>&1 &
  dec_pids+=($!)
done
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$LOGS/gpu.txt" || true
# default: VAE fine-tuned from the bundled one, then the DiT; TRAIN_ARGS replaces that, e.g. to continue a model
TRAIN_ARGS="${TRAIN_ARGS:---stages vae dit --vae-from worldcache/assets/pusher --vae-minutes $VAE_MIN --dit-lr 4e-4 $ARCH}"
python3 -m worldcache.cli train --data "$RUN/data.zarr" --out "$RUN" --dit-minutes "$DIT_MIN" \
  --dit-batch "${DIT_BATCH:-128}" --device "$DEVICE" $bf16 $TRAIN_ARGS \
  2>&1 | lines | awk 'NR % 50 == 0 || /written|Error|error|Traceback/ { print; fflush() }' \
  | tee "$LOGS/train.log" "$OUT/train.log"
echo "train done after $(( $(date +%s) - start )) s" | tee -a "$LOGS/train.log"; pack
for pid in "${dec_pids[@]}"; do wait "$pid" || echo "decoder rc=$?"; done
if [[ ${#dec_pids[@]} -gt 0 ]]; then
  for f in "$LOGS"/decoder_*.log; do tr '\r' '\n' < "$f" | tail -3 > "$f.tmp"; mv "$f.tmp" "$f"; done
  best=$(for f in "$LOGS"/decoder_*.log; do n=${f##*/decoder_}; tail -1 "$f" | python3 -c \
    "import json,sys; print(json.load(sys.stdin)['heldout_cm']['fingertip']['mean_cm'], '${n%.log}')" 2>/dev/null
    done | sort -g | head -1 | cut -d' ' -f2 || true)
  if [[ -n "$best" ]]; then
    cp "$RUN/dec_$best"/state_decoder.* "$RUN/model/"; echo "decoder: $best" >> "$LOGS/train.log"
    for spec in ${DECODERS:-base=32,16,128}; do [[ ${spec%%=*} == "$best" ]] && size=${spec#*=}; done
    python3 - "$RUN/model/training.json" "python3 scripts/gpu_decoder.py DATA OUT --steps $DECODER_STEPS --size \
${size//,/ } --batch ${DECODER_BATCH:-256} --device $DEVICE" "$best" <<'PY'  # the record names the decoder's command
import json, sys
path, command, name = sys.argv[1:]
record = json.load(open(path))
record["state_decoder"] = {"command": command, "chosen": name, "data": record["config"]["data"]}
json.dump(record, open(path, "w"), indent=2)
PY
  fi
fi
tar -C "$RUN" -cf - model | split -b 15M - "$OUT/model.tar.part-"
cp "$RUN/model/training.json" "$LOGS/training.json"; pack
if [[ "$DEVICE" == cuda && $(( $(date +%s) - start )) -lt "${TIMING_BEFORE:-450}" ]]; then
  timeout 90 python3 scripts/gpu_timing.py --device cuda --dtype bf16 --json "$LOGS/timing.json" \
    > "$LOGS/timing.log" 2>&1 || echo "timing rc=$?"
  pack
fi
on_model() {  # on_model NAME SECONDS COMMAND ARGS...: a CLI command on the trained model, its log and JSON in NAME/
  local name=$1 secs=$2; shift 2
  mkdir -p "$LOGS/$name"
  timeout "$secs" python3 -m worldcache.cli "$@" --device "$DEVICE" --checkpoint "$RUN/model" \
    --json "$LOGS/$name/$name.json" > "$LOGS/$name/$name.log" 2>&1 || echo "$name rc=$?"
  pack
}
if [[ -n "${BENCH_ARGS:-}" ]]; then on_model bench "${BENCH_S:-150}" bench $BENCH_ARGS; fi
if [[ -n "${EVAL_ARGS:-}" ]]; then on_model eval "${EVAL_S:-150}" evaluate-model --data "$RUN/data.zarr" $EVAL_ARGS; fi
echo "all done after $(( $(date +%s) - start )) s"
