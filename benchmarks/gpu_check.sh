#!/usr/bin/env bash
# What CI cannot prove: run the GPU paths on a machine with an NVIDIA GPU and keep the evidence.
#   bash benchmarks/gpu_check.sh tests|sanitizer|kernels|notebooks|bench|pack ...   (logs go to $OUT/logs)
# Parts may run side by side (`part1 & part2; wait`); `pack` tars the logs into one file last.
# Each part is bounded by `timeout`, so one slow part cannot eat the others' time.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
log() { echo "== $* ($(date +%T))"; }

part_tests() {
  log "info"; python -m minisd info | tee "$OUT/logs/info.txt"
  log "graded exercises on the GPU (solutions)"
  timeout 240 python -m pytest tests/exercises --solutions -q -p no:cacheprovider 2>&1 | tail -40 > "$OUT/logs/exercises_gpu.txt"
  tail -3 "$OUT/logs/exercises_gpu.txt"
  log "unit tests on the GPU (ops, numba kernels, cupy kernels, warp, pipeline)"
  timeout "${TESTS_TIMEOUT:-420}" python -m pytest ${TESTS:-tests} -q -p no:cacheprovider --ignore=tests/test_notebooks.py \
    --ignore=tests/test_grading.py -k "not ruff" 2>&1 | tail -80 > "$OUT/logs/tests_gpu.txt"
  tail -5 "$OUT/logs/tests_gpu.txt"
}

part_sanitizer() {
  # Kernel memory errors and shared-memory races in every Numba kernel version, at ragged sizes. CUDA API calls
  # that fail on purpose (libraries probing pointers) are not kernel bugs: --report-api-errors no.
  for tool in memcheck racecheck; do
    log "compute-sanitizer $tool"
    timeout 240 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 --print-limit 50 \
      python -m minisd.ops.dev --small > "$OUT/logs/sanitizer_$tool.full" 2>&1
    echo "exit: $?" >> "$OUT/logs/sanitizer_$tool.full"
    grep -E "=========|^[a-z_0-9]+ +v[0-9]|exit:" "$OUT/logs/sanitizer_$tool.full" | head -150 > "$OUT/logs/sanitizer_$tool.txt"
    rm "$OUT/logs/sanitizer_$tool.full"; tail -3 "$OUT/logs/sanitizer_$tool.txt"
  done
}

part_notebooks() {
  # The GPU machines have no Jupyter: benchmarks/run_notebook.py executes each notebook and keeps its outputs.
  mkdir -p "$OUT/notebooks"
  for nb in ${NOTEBOOKS:-notebooks/*.ipynb}; do
    log "notebook $nb"
    COURSE_RECORD=1 timeout "${NOTEBOOK_TIMEOUT:-300}" python benchmarks/run_notebook.py "$nb" "$OUT/notebooks/$(basename "$nb")" 2>&1 | tail -20
  done
}

part_kernels() {
  log "ops: every Numba kernel version checked and timed"; timeout 240 python -m minisd.ops.dev > "$OUT/logs/ops_numba.txt" 2>&1; tail -30 "$OUT/logs/ops_numba.txt"
  log "ops: CuPy kernels checked and timed"; timeout 240 python -m minisd.ops.cupy_dev --json "$OUT/logs/ops_cupy.json" > "$OUT/logs/ops_cupy.txt" 2>&1; tail -30 "$OUT/logs/ops_cupy.txt"
}

part_bench() {
  log "minisd bench"; timeout 400 python -m minisd bench 2>&1 | tail -40 | tee "$OUT/logs/bench.txt"
  log "minisd eval"; timeout 300 python -m minisd eval 2>&1 | tail -20 | tee "$OUT/logs/eval.txt"
  cp benchmarks/*.json "$OUT/logs/" 2>/dev/null || true
}

part_pack() {
  tar czf "$OUT/gpu_check.tgz" -C "$OUT" logs $(test -d "$OUT/notebooks" && echo notebooks) && rm -rf "$OUT/logs" "$OUT/notebooks"
}

for part in "$@"; do "part_$part"; done
