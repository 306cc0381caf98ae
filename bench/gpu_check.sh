#!/usr/bin/env bash
# GPU readiness: train, evaluate, diagnose, bench and a 2-rank NCCL run of noprop on CUDA, then
# results/gpu-check.json with every output, the command lines, the GPU and the commit.
#
#     bash bench/gpu_check.sh            (from the repository root, with noprop installed)
#
# The project has not run it on a GPU yet. A 2-rank NCCL run needs one GPU per
# rank (NCCL refuses two ranks on one GPU); with a single GPU that step is recorded as not run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/runs/gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
log() { echo "[gpu_check] $*" | tee -a "$OUT/log.txt"; }

$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch")'
SMALL="--epochs 1 --train-subset 12800 --eval-runs 3 --quiet"

log "train NoProp-DT and NoProp-FM on CUDA"
/usr/bin/time -f "%e" -o "$OUT/dt.seconds" $PY -m noprop train --device cuda $SMALL --out "$OUT/dt" | tee "$OUT/dt.txt"
/usr/bin/time -f "%e" -o "$OUT/fm.seconds" $PY -m noprop train --device cuda --method fm --steps 100 $SMALL \
    --out "$OUT/fm" | tee "$OUT/fm.txt"
log "evaluate and diagnose on CUDA, and the same checkpoint on the CPU"
$PY -m noprop evaluate "$OUT/dt/last.safetensors" --device cuda --runs 3 --all-rules --json > "$OUT/evaluate-cuda.json"
$PY -m noprop evaluate "$OUT/dt/last.safetensors" --device cpu --runs 3 --json > "$OUT/evaluate-cpu.json"
$PY -m noprop diagnose "$OUT/dt/last.safetensors" --device cuda --json > "$OUT/diagnose.json"
log "bench on CUDA"
$PY -m noprop bench --device cuda --what peak throughput memory --out "$OUT/bench"
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
if [ "$NGPU" -ge 2 ]; then
    log "2 ranks over NCCL ($NGPU GPUs)"
    $PY -m noprop train --device cuda --workers 2 $SMALL --out "$OUT/nccl" | tee "$OUT/nccl.txt"
else
    log "2-rank NCCL run not run: $NGPU GPU (NCCL needs one GPU per rank)"
fi
$PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
from noprop.machine import describe, provenance
import torch
out = pathlib.Path(sys.argv[1])
read = lambda p: json.loads((out / p).read_text()) if (out / p).exists() else None
res = {"study": "gpu-check", "command": "bash bench/gpu_check.sh", **provenance(),
       "machine": describe(torch.device("cuda")), "gpus": torch.cuda.device_count(),
       "dt_result": read("dt/result.json"), "fm_result": read("fm/result.json"),
       "dt_wall_seconds": float((out / "dt.seconds").read_text()), "fm_wall_seconds": float((out / "fm.seconds").read_text()),
       "evaluate_cuda": read("evaluate-cuda.json"), "evaluate_cpu": read("evaluate-cpu.json"),
       "diagnose": read("diagnose.json"), "bench": read("bench/bench.json"), "nccl_result": read("nccl/result.json"),
       "log": (out / "log.txt").read_text()}
pathlib.Path("results").mkdir(exist_ok=True)
(pathlib.Path("results") / "gpu-check.json").write_text(json.dumps(res, indent=1))
print("wrote results/gpu-check.json")
PYEOF
