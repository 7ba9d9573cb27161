#!/usr/bin/env bash
# What CI cannot prove: run the GPU paths on a machine with an NVIDIA GPU and keep the evidence.
#   bash benchmarks/gpu_check.sh tests|sanitizer|kernels|notebooks|bench|profile|eval|checks|all|mlir|pack ...   (logs go to $OUT/logs)
# Parts may run side by side (`part1 & part2; wait`); `pack` tars the logs into one file last. `checks` runs
# tests, sanitizer and eval side by side (they only need right answers); `all` is checks, then the parts whose
# numbers are timings (notebooks, bench, profile), one at a time.
# Each part is bounded by `timeout`, so one slow part cannot eat the others' time.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
log() { echo "== $* ($(date +%T))"; }

part_tests() {
  log "info"; python -m minisd info | tee "$OUT/logs/info.txt"
  log "graded exercises on the GPU (solutions)"
  timeout "${EXERCISES_TIMEOUT:-240}" python -m pytest tests/exercises --solutions -q -p no:cacheprovider 2>&1 | tail -40 > "$OUT/logs/exercises_gpu.txt"
  tail -3 "$OUT/logs/exercises_gpu.txt"
  log "unit tests on the GPU (ops, numba kernels, cupy kernels, warp, pipeline)"
  timeout "${TESTS_TIMEOUT:-420}" python -m pytest ${TESTS:-tests} -q -p no:cacheprovider -n "${TESTS_WORKERS:-4}" --ignore=tests/test_notebooks.py \
    --ignore=tests/test_grading.py --ignore=tests/test_half_pipeline.py -k "not ruff" --tb=short 2>&1 \
    | grep -v "Warning\|warnings.warn" > "$OUT/logs/tests_gpu.txt"
  tail -5 "$OUT/logs/tests_gpu.txt"
  log "half-precision images against fp32 (the measured differences printed: half.txt)"
  timeout "${HALF_TIMEOUT:-240}" python -m pytest tests/test_half_pipeline.py -q -s -p no:cacheprovider --tb=short 2>&1 \
    | grep -oE "(fp16|bf16): .*|[0-9]+ (passed|failed).*|Error.*" > "$OUT/logs/half.txt"
  cat "$OUT/logs/half.txt"
}

part_sanitizer() {
  # Kernel memory errors and shared-memory races: every Numba kernel version at ragged sizes (minisd.ops.dev
  # --small), then every CuPy kernel (float32 and half precision) through its tests and the edge cases (NaN,
  # Inf, empty shapes). CUDA API calls that fail on purpose (libraries probing pointers) are not kernel bugs:
  # --report-api-errors no.
  # The four runs only check, so they share the GPU side by side.
  log "compute-sanitizer memcheck and racecheck, Numba and CuPy kernels"
  for tool in memcheck racecheck; do
    sanitize "$tool" numba python -m minisd.ops.dev --small &
    sanitize "$tool" cupy python -m pytest tests/test_ops_cupy.py tests/test_ops_half.py tests/test_ops_edges.py -q -p no:cacheprovider &
  done
  wait
}

sanitize() {  # tool, name, command...: keep the verdict lines and each checked op's line
  local tool=$1 name=$2 log="$OUT/logs/sanitizer_$2_$1"
  shift 2
  timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 \
    --print-limit 50 "$@" > "$log.full" 2>&1
  echo "exit: $?" >> "$log.full"
  grep -E "=========|^[a-z_0-9]+ +v[0-9]|passed|failed|^(FAILED|ERROR) |^test data: --seed|exit:" "$log.full" | head -150 > "$log.txt"
  rm "$log.full"; echo "sanitizer $name $tool: $(grep -E 'SUMMARY' "$log.txt") $(tail -1 "$log.txt")"
}

part_notebooks() {
  # The GPU machines have no Jupyter: benchmarks/run_notebook.py executes each notebook and keeps its outputs;
  # COURSE_RECORD is where notebook 00 writes lesson00_gpu.json. File the folder as benchmarks/<gpu>/notebooks.
  mkdir -p "$OUT/notebooks"
  for nb in ${NOTEBOOKS:-notebooks/*.ipynb}; do
    log "notebook $nb"
    COURSE_RECORD="$OUT/notebooks" timeout "${NOTEBOOK_TIMEOUT:-300}" python benchmarks/run_notebook.py "$nb" "$OUT/notebooks/$(basename "$nb")" 2>&1 | tail -20
  done
}

part_kernels() {
  log "ops: every Numba kernel version checked and timed"; timeout "${KERNELS_TIMEOUT:-240}" python -m minisd.ops.dev > "$OUT/logs/ops_numba.txt" 2>&1; tail -30 "$OUT/logs/ops_numba.txt"
  log "ops: CuPy kernels checked and timed"; timeout "${KERNELS_TIMEOUT:-240}" python -m minisd.ops.cupy_dev --json "$OUT/logs/ops_cupy.json" > "$OUT/logs/ops_cupy.txt" 2>&1; tail -30 "$OUT/logs/ops_cupy.txt"
}

part_bench() {
  log "minisd bench"; timeout "${BENCH_TIMEOUT:-400}" python -m minisd bench ${BENCH_ARGS:-} --out "$OUT/logs/bench.json" 2>&1 | tail -60 | tee "$OUT/logs/bench.txt"
}

part_profile() {
  # One sampling step op by op on CuPy (minisd/profile.py: CUDA events around every op, the stream held so the
  # kernels run back to back): the table by op against the measured copy and matmul roofs, and per batch a JSON
  # and a roofline PNG in $OUT/profile (file them as benchmarks/<gpu>/profile/).
  mkdir -p "$OUT/profile"
  for batch in 64 1; do
    log "minisd profile, cupy, batch $batch"
    timeout "${PROFILE_TIMEOUT:-300}" python -m minisd profile --backend cupy --batch "$batch" \
      --json "$OUT/profile/cupy_batch$batch.json" --png "$OUT/profile/cupy_batch$batch.png" 2>&1 \
      | tee "$OUT/logs/profile_cupy_batch$batch.txt"
  done
  log "minisd profile, numba, batch 1 (the learner's backend, lesson 12)"
  timeout "${PROFILE_TIMEOUT:-300}" python -m minisd profile --backend numba --batch 1 \
    --json "$OUT/profile/numba_batch1.json" --png "$OUT/profile/numba_batch1.png" 2>&1 | tee "$OUT/logs/profile_numba_batch1.txt"
}

part_eval() {
  # The guidance choice and the README's prompt-following row, measured with the sampling loop that ships
  # (they were measured with the training run's own loop): every scale on the same 1,024 prompts and seeds.
  log "minisd eval, guidance sweep"; timeout "${EVAL_SWEEP_TIMEOUT:-900}" python -m minisd eval --num-images "${EVAL_IMAGES:-1024}" \
    --guidance ${EVAL_GUIDANCE:-1 1.5 2 3} 2>&1 | tail -30 | tee "$OUT/logs/eval_guidance.txt"
}

part_checks() {  # the parts that only need right answers share the GPU side by side
  part_tests > "$OUT/logs/tests.out" 2>&1 &
  part_sanitizer > "$OUT/logs/sanitizer.out" 2>&1 &
  part_eval > "$OUT/logs/eval.out" 2>&1 &
  wait
  tail -3 "$OUT/logs/tests.out"; cat "$OUT/logs/sanitizer.out"; tail -12 "$OUT/logs/eval.out"
}

part_all() { part_checks; part_notebooks; part_bench; part_profile; }

part_mlir() {
  # The same kernels compiled by numba-cuda-mlir, numba-cuda's successor (MINISD_NUMBA_CUDA=mlir, see
  # minisd/kernel_backend.py): the graded exercises and minisd's Numba kernel tests, side by side. Its wheel
  # travels in .whl-mlir (LZMA-repacked by benchmarks/repack_wheel.py to fit the 64 MiB a call may carry, so
  # .whl cannot come along: the image's numpy 2.5, which numba-cuda-mlir supports, is used unless .whl is there).
  local site=/tmp/mlir-site
  log "numba-cuda-mlir: install $(ls .whl-mlir/*.whl 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl-mlir/*.whl \
    $(ls .whl/*.whl 2>/dev/null) > "$OUT/logs/mlir_install.txt" 2>&1 || { tail -5 "$OUT/logs/mlir_install.txt"; return 1; }
  (
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" MINISD_NUMBA_CUDA=mlir
    python -m pip show numpy numba-cuda-mlir cuda-bindings cuda-core cuda-pathfinder 2>&1 | grep -E "^(Name|Version)" \
      | paste - - > "$OUT/logs/mlir_info.txt"
    python -m minisd info >> "$OUT/logs/mlir_info.txt" 2>&1
    log "numba-cuda-mlir: graded exercises (solutions) and minisd's Numba kernels"
    timeout "${MLIR_EXERCISES_TIMEOUT:-200}" python -m pytest tests/exercises --solutions -q -p no:cacheprovider \
      > "$OUT/logs/mlir_exercises.txt" 2>&1 &
    timeout "${MLIR_TESTS_TIMEOUT:-200}" python -m pytest tests/test_ops.py tests/test_warp.py -q -p no:cacheprovider -n 4 \
      --tb=short 2>&1 | grep -v "Warning\|warnings.warn" > "$OUT/logs/mlir_tests.txt" &
    wait
  )
  { grep -E "^Name|^kernels by|^gpu:|Error" "$OUT/logs/mlir_info.txt"
    echo "exercises: $(grep -E "score:" "$OUT/logs/mlir_exercises.txt" || tail -1 "$OUT/logs/mlir_exercises.txt")"
    echo "tests:     $(tail -1 "$OUT/logs/mlir_tests.txt")"
    grep -E "^(FAILED|ERROR)" "$OUT/logs/mlir_tests.txt" | head -60; grep -E "✘" "$OUT/logs/mlir_exercises.txt" | head -60
  } > "$OUT/logs/mlir_summary.txt"
  cat "$OUT/logs/mlir_summary.txt"
}

part_pack() {
  tar czf "$OUT/gpu_check.tgz" -C "$OUT" logs $(test -d "$OUT/notebooks" && echo notebooks) \
    $(test -d "$OUT/profile" && echo profile) && rm -rf "$OUT/logs" "$OUT/notebooks" "$OUT/profile"
}

for part in "$@"; do "part_$part"; done
