#!/usr/bin/env bash
# The GPU check in one command (no arguments): at most 8 minutes on one GPU, one report file.
#   1. inputs     corpora of the demo genome (genemask corpus) and the Data-A ranking      cap  45 s (~5 s)
#   2. pytest -m gpu (tests/test_gpu.py): bf16 pretraining resumed == uninterrupted bitwise,
#                 torchrun with the GPUs present, FusedAdamW == torch's fused AdamW,
#                 fine-tuning and predict/embed on CUDA                                   cap 180 s (~90 s)
#   3. LOGO       peak memory per sequence; tokens/s, MFU and the time of 10k paper steps
#                 at 50 x 5 and at the recommended micro-batch                             cap  90 s (~40 s)
#   4. BERT-base  the same at the largest micro-batch within 60 % of the GPU's memory
#                 and at the recommended one                                               cap 150 s (~60 s)
# (expected times: one H200, estimated from the older figures in git history, not yet measured.)
# The report: $OUT/gpu_check.txt when OUT is set, else results/gpu_check.txt; its .json twin holds
# the figures (memory per sequence: the input of the configs' GPU micro-batch); the logs beside it in
# gpu_check-logs/. Exit status 0 when every part passed, 1 when one failed, 2 without a GPU.
#
# Usage: scripts/gpu_check.sh                the check (fails in one line without a CUDA GPU)
#        scripts/gpu_check.sh --cpu-smoke     the same steps, tiny, on the CPU (also GPU_CHECK_DRY_RUN=1):
#                                             the gpu tests run on the CPU, no figures
#        scripts/gpu_check.sh --prepare DIR   build the inputs only (needs pysam and the data mirror),
#                                             for a GPU node without them: GENEMASK_GPU_INPUTS=DIR there
# Environment: PYTHON (default .venv/bin/python, else python3), GENEMASK_MIRROR (default ../shared/data),
#   GENEMASK_GPU_INPUTS (prepared inputs), GPU_CHECK_WHEELS (a folder of wheels installed into a
#   temporary folder first: packages a bare GPU node lacks, e.g. jsonschema), GPU_PEAK_TFLOPS (the
#   GPU's dense bf16 peak for the MFU when its name is not in scripts/gpu_check.py).
set -uo pipefail
smoke=${GPU_CHECK_DRY_RUN:-0}
prepare_only=
case "${1:-}" in
  "") ;;
  --cpu-smoke) smoke=1 ;;
  --prepare) prepare_only=$(realpath -m "${2:?"--prepare DIR"}") ;;
  *) echo "gpu_check: unknown argument ${1} (usage: scripts/gpu_check.sh [--cpu-smoke | --prepare DIR])" >&2; exit 2 ;;
esac
[[ -n ${GENEMASK_GPU_INPUTS:-} ]] && GENEMASK_GPU_INPUTS=$(realpath -m "$GENEMASK_GPU_INPUTS")
[[ -n ${GPU_CHECK_WHEELS:-} ]] && GPU_CHECK_WHEELS=$(realpath -m "$GPU_CHECK_WHEELS")
cd "$(dirname "$0")/.." || exit 2
root=$PWD
[[ $smoke == 0 || $smoke == "" ]] && smoke=
py=${PYTHON:-}
[[ -z $py && -x .venv/bin/python ]] && py=$root/.venv/bin/python
py=${py:-python3}
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
if [[ -n ${GPU_CHECK_WHEELS:-} ]]; then
  $py -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$GPU_CHECK_WHEELS"/*.whl \
    || { echo "gpu_check: cannot install the wheels of $GPU_CHECK_WHEELS" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$work/site"
fi
if [[ -n $prepare_only ]]; then
  $py scripts/gpu_check.py prepare "$prepare_only"
  exit $?
fi

# no GPU: one line, before anything else
if [[ -z $smoke ]]; then
  why=$($py -c "import torch; print('' if torch.cuda.is_available() else 'torch.cuda.is_available() is false')" 2>&1 | tail -1)
  if [[ -n $why ]]; then
    echo "gpu_check: no CUDA GPU for $py ($why); nothing measured (scripts/gpu_check.sh --cpu-smoke rehearses the steps on the CPU)" >&2
    exit 2
  fi
fi

report=${OUT:+$OUT/gpu_check.txt}
report=${report:-$root/results/gpu_check.txt}
logs=$(dirname "$report")/gpu_check-logs
mkdir -p "$logs" && : > "$report" && rm -f "${report%.txt}.json" || exit 2
say() { echo "$*" | tee -a "$report"; }
t_start=$(date +%s)
failed=0
part() {  # name cap command...: run one part under its time cap, its output in $logs/name.log
  local name=$1 cap=$2 t0 rc; shift 2
  t0=$(date +%s)
  timeout -k 10 "$cap" "$@" > >(tee -a "$logs/$name.log") 2>> "$logs/$name.log"
  rc=$?
  if (( rc == 124 || rc == 137 )); then say "$name: stopped at its time cap of $cap s"; fi
  (( rc != 0 )) && failed=1
  say "$name: rc $rc, $(( $(date +%s) - t0 )) s"
  return $rc
}

say "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ changes)'), host $(hostname)${smoke:+, CPU SMOKE RUN (no figures)}"
say "env: $($py -c "
import platform, torch, transformers
gpus = [f'{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.1f} GiB)' for i in range(torch.cuda.device_count())]
print(f'python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, '
      + (f'{len(gpus)} GPU(s): ' + ', '.join(gpus) if gpus else 'no GPU'))" 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && say "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"

# 1. inputs
inputs=${GENEMASK_GPU_INPUTS:-}
if [[ -z $inputs ]]; then
  inputs=$work/inputs
  part inputs 45 $py scripts/gpu_check.py prepare "$inputs" \
    || { say "gpu_check: cannot build the inputs here (pysam and the data mirror are needed): run scripts/gpu_check.sh --prepare DIR where they are, then GENEMASK_GPU_INPUTS=DIR scripts/gpu_check.sh"; exit 1; }
else
  say "inputs: $inputs (GENEMASK_GPU_INPUTS)"
fi
export GENEMASK_GPU_INPUTS=$inputs

# 2. the gpu tests (only tests/test_gpu.py is collected: the other test modules import packages a GPU
# node may lack); CUBLAS_WORKSPACE_CONFIG lets the bitwise tests run cuBLAS deterministically
part pytest 180 env GENEMASK_GPU_TESTS_ON_CPU=${smoke:+1} CUBLAS_WORKSPACE_CONFIG=:4096:8 \
  $py -m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider
say "pytest -m gpu: $(grep -E '(passed|failed|skipped|error)' "$logs/pytest.log" | tail -1)"

# 3., 4. throughput and memory
part logo 90 $py scripts/gpu_check.py measure logo --inputs "$inputs" --work "$work/runs" --report "$report" ${smoke:+--smoke}
part bert 150 $py scripts/gpu_check.py measure bert --inputs "$inputs" --work "$work/runs" --report "$report" ${smoke:+--smoke}

say "total: $(( $(date +%s) - t_start )) s; $([[ $failed == 0 ]] && echo 'every part passed' || echo 'a part FAILED (see its log)'); report $report, logs $logs"
exit $failed
