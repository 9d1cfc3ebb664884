#!/usr/bin/env bash
# WorldCache GPU check: one prepared run for a machine with one CUDA GPU (e.g. a lent device), < 8 minutes.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else runs/gpu_check
#   bash scripts/gpu_check.sh --tiny [OUT_DIR]   # CPU smoke run of the timing part only (tiny DiT, no GPU needed)
#   DEVICE=cpu BENCH_DATA=... bash scripts/gpu_check.sh [OUT_DIR]  # CPU smoke run of the whole flow (tiny timing)
#
# 1. the test suite with WORLDCACHE_TEST_DEVICE=cuda (the device-aware tests run on the GPU, the rest on CPU); where
#    MuJoCo or Ray is missing (the lent machines' image), only the device-aware tests (tests/test_loop.py);
# 2. one model call and one probe call (1 block) of a 2B-size DiT with random weights in bf16
#    (256x320, 4 latent frames = 1280 tokens; scripts/gpu_timing.py);
# 3. a short `worldcache bench --device cuda` on the bundled model (bf16 and fp32 weights), on simulated Pusher
#    episodes, or without MuJoCo on the held-out episodes of BENCH_DATA (a store, or one packed by pack_store.py);
# and writes OUT_DIR/gpu_check.json (figures + exit codes) and OUT_DIR/gpu_check_logs.tar (every step's log and
# output, from OUT_DIR/gpu_check_files/; under $OUT, the device's, that folder is removed: it brings back 8 files at
# most). Nothing else in OUT_DIR is touched, so it can follow gpu_train.sh in one call. Dependencies the machine
# lacks come from wheels in .whl/ (scripts/device_env.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
DIR="${1:-${OUT:-runs/gpu_check}}"
W="$DIR/gpu_check_files"  # this script's own files: what it packs, and under $OUT removes
mkdir -p "$W"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TIMING_ARGS=(--device cuda --dtype bf16)
[[ "$DEVICE" == cpu ]] && TIMING_ARGS=(--device cpu --tiny --warmup 1 --repeats 2)
start=$(date +%s)

if [[ $TINY == 1 ]]; then
  "$PY" scripts/gpu_timing.py --device cpu --tiny --warmup 1 --repeats 2 --json "$W/timing.json" \
    > "$W/timing.log" 2>&1
  echo "timing rc=$? ($W/timing.json)"
  exit 0
fi

nvidia-smi > "$W/nvidia-smi.txt" 2>&1 || true

# 1. tests (~3 min on 16 cores); -x off so every failure is listed
tests=(); scope="all"
if ! "$PY" -c "import mujoco, ray" 2>/dev/null; then
  tests=(tests/test_loop.py); scope="tests/test_loop.py: the device-aware tests (no MuJoCo or Ray here)"
fi
WORLDCACHE_TEST_DEVICE=$DEVICE timeout 270 "$PY" -m pytest -q -p no:cacheprovider --durations=15 "${tests[@]}" \
  > "$W/tests.log" 2>&1
tests_rc=$?

# 2. 2B-size DiT timings (bf16)
timeout 120 "$PY" scripts/gpu_timing.py "${TIMING_ARGS[@]}" --json "$W/timing.json" \
  > "$W/timing.log" 2>&1
timing_rc=$?

# 3. short bench of the bundled model on the GPU, bf16 and fp32 weights
bench_rc=""
episodes=()  # no options: simulated Pusher episodes
if ! "$PY" -c "import mujoco" 2>/dev/null; then
  store="${BENCH_DATA:-}"
  if [[ "$store" == *.npz.xz ]]; then  # one folder per packed file: another BENCH_DATA is not the old store
    unpacked="/tmp/wc_check/$(basename "$store" .npz.xz).zarr"
    if "$PY" scripts/pack_store.py unpack "$store" "$unpacked" > "$W/unpack.log" 2>&1; then
      store=$unpacked
    else
      store=""; bench_rc="skipped: unpacking $BENCH_DATA failed (unpack.log)"
    fi
  fi
  episodes=(--data "$store")
fi
for dt in bf16 fp32; do
  if [[ ${#episodes[@]} -gt 0 && -z "${episodes[1]}" ]]; then
    bench_rc="${bench_rc:-skipped: no MuJoCo and no BENCH_DATA}"; break
  fi
  timeout 60 "$PY" -m worldcache.cli bench --device "$DEVICE" --dtype "$dt" --episodes 2 --chunks 1 "${episodes[@]}" \
    --cache none worldcache --no-ablation --no-grid --json "$W/bench_$dt.json" > "$W/bench_$dt.log" 2>&1
  bench_rc="$bench_rc $dt=$?"
done

"$PY" - "$W" "$tests_rc" "$timing_rc" "$bench_rc" "$(( $(date +%s) - start ))" "$scope" <<'EOF'
import json, re, sys
from pathlib import Path
d, tests_rc, timing_rc, bench_rc, secs, scope = (Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                                 sys.argv[5], sys.argv[6])
tail = (d / "tests.log").read_text().strip().splitlines()[-1:] if (d / "tests.log").exists() else []
out = {"seconds": int(secs), "tests": {"rc": tests_rc, "scope": scope, "summary": tail[0] if tail else None},
       "timing_rc": timing_rc, "bench_rc": bench_rc.strip()}
if (d / "timing.json").exists():
    out["timing"] = {k: v for k, v in json.loads((d / "timing.json").read_text()).items() if not k.endswith("_all")}
for dt in ("bf16", "fp32"):
    p = d / f"bench_{dt}.json"
    if p.exists():
        b = json.loads(p.read_text())
        keys = ("label", "denoising_speedup", "env_step_speedup", "psnr", "computed_fraction")
        out[f"bench_{dt}"] = {"uncached": b.get("uncached"), "machine": b.get("machine"),
                              "rows": [{k: r.get(k) for k in keys} for r in b.get("rows", [])]}
(d.parent / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
EOF
tar -C "$W" -cf "$DIR/gpu_check_logs.tar" .
if [[ -n "${OUT:-}" && "$(cd "$DIR" && pwd)" == "$(cd "$OUT" && pwd)" ]]; then
  rm -rf "$W"
fi
