#!/usr/bin/env bash
# Pretraining throughput on a GPU at the paper's batch (10 x 25 accumulation = 250 sequences/step),
# on the demo genome's corpus: the LOGO-like model (eager and torch.compile) and BERT-base (dnabert).
# Usage: scripts/gpu_check.sh CORPUS_DIR RANKING LOGDIR [SECONDS_PER_RUN]
# Each run is capped in time; tokens/s comes from the progress lines, peak memory from the summary.
set -uo pipefail
corpus=$1; ranking=$2; logs=$3; secs=${4:-120}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
models=$(mktemp -d)
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
run() {  # name model steps extra-sets...
  local name=$1 model=$2 steps=$3; shift 3
  local sets=(--set steps=$steps --set log_every=5 --set eval_every=100000 --set checkpoint_every=100000
              --set warmup_steps=10)
  for x in "$@"; do sets+=(--set "$x"); done
  local t0=$(date +%s)
  timeout -s INT "$secs" $py -m genemask.cli pretrain --corpus "$corpus"/* --model-config resources/models/$model.json \
      --scheme genemask --ranking "$ranking" "${sets[@]}" -o "$models/$name" 2> "$logs/$name.log"
  echo "== $name rc=$? wall=$(( $(date +%s) - t0 ))s"
  grep -E "tokens/s|Error" "$logs/$name.log" | tail -2
  grep -E "^\[pretrain" "$logs/$name.log" | tail -1
  cp "$models/$name/train_log.tsv" "$logs/$name.train_log.tsv" 2>/dev/null && tail -1 "$logs/$name.train_log.tsv"
}
want() { [[ " ${RUNS:-logo logo_compile dnabert} " == *" $1 "* ]]; }
want logo && run logo logo "${STEPS_LOGO:-300}"
want logo_b50 && run logo_b50 logo "${STEPS_LOGO:-300}" batch_size=50 grad_accum=5
want logo_compile && run logo_compile logo "${STEPS_LOGO_COMPILE:-150}" compile=true
want dnabert && run dnabert dnabert "${STEPS_BERT:-40}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
