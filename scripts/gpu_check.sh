#!/usr/bin/env bash
# WorldCache GPU check: one prepared run for a machine with one CUDA GPU (e.g. a lent device), < 8 minutes.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else runs/gpu_check
#   bash scripts/gpu_check.sh --tiny [OUT_DIR]   # CPU smoke run of the timing part only (tiny DiT, no GPU needed)
#
# 1. the test suite with WORLDCACHE_TEST_DEVICE=cuda (the device-aware tests run on the GPU, the rest on CPU);
# 2. one model call and one probe call (1 block) of a 2B-size DiT with random weights in bf16
#    (256x320, 4 latent frames = 1280 tokens; scripts/gpu_timing.py);
# 3. a short `worldcache bench --device cuda` on the bundled model (bf16 and fp32 weights);
# and writes OUT_DIR/gpu_check.json (figures + exit codes), with each step's log next to it.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$DIR"
PY="${PYTHON:-python}"
start=$(date +%s)

if [[ $TINY == 1 ]]; then
  "$PY" scripts/gpu_timing.py --device cpu --tiny --warmup 1 --repeats 2 --json "$DIR/timing.json" \
    > "$DIR/timing.log" 2>&1
  echo "timing rc=$? ($DIR/timing.json)"
  exit 0
fi

nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1 || true

# 1. tests (~3 min on 16 cores); -x off so every failure is listed
WORLDCACHE_TEST_DEVICE=cuda timeout 270 "$PY" -m pytest -q -p no:cacheprovider --durations=15 \
  > "$DIR/tests.log" 2>&1
tests_rc=$?

# 2. 2B-size DiT timings (bf16)
timeout 120 "$PY" scripts/gpu_timing.py --device cuda --dtype bf16 --json "$DIR/timing.json" \
  > "$DIR/timing.log" 2>&1
timing_rc=$?

# 3. short bench of the bundled model on the GPU, bf16 and fp32 weights
bench_rc=""
for dt in bf16 fp32; do
  timeout 60 "$PY" -m worldcache.cli bench --device cuda --dtype "$dt" --episodes 2 --chunks 1 \
    --cache none worldcache --no-ablation --no-grid --json "$DIR/bench_$dt.json" > "$DIR/bench_$dt.log" 2>&1
  bench_rc="$bench_rc $dt=$?"
done

"$PY" - "$DIR" "$tests_rc" "$timing_rc" "$bench_rc" "$(( $(date +%s) - start ))" <<'EOF'
import json, re, sys
from pathlib import Path
d, tests_rc, timing_rc, bench_rc, secs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
tail = (d / "tests.log").read_text().strip().splitlines()[-1:] if (d / "tests.log").exists() else []
out = {"seconds": int(secs), "tests": {"rc": tests_rc, "summary": tail[0] if tail else None},
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
(d / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
EOF
