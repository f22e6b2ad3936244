#!/usr/bin/env bash
# Pretraining throughput on a GPU at the paper's batch (10 x 25 accumulation = 250 sequences/step),
# on the demo genome's corpus. Usage: scripts/gpu_check.sh CORPUS_DIR RANKING OUTDIR [STEPS_LOGO STEPS_DNABERT]
# Prints tokens/s and peak GPU memory per model; projections of 10k steps are derived from them.
set -uo pipefail
corpus=$1; ranking=$2; out=$3; s_logo=${4:-120}; s_bert=${5:-30}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
run() {  # name model steps extra-sets...
  local name=$1 model=$2 steps=$3; shift 3
  local sets=(--set steps=$steps --set log_every=5 --set eval_every=100000 --set checkpoint_every=100000
              --set warmup_steps=10)
  for x in "$@"; do sets+=(--set "$x"); done
  local t0=$(date +%s.%N)
  $py -m genemask.cli pretrain --corpus "$corpus"/* --model-config resources/models/$model.json \
      --scheme genemask --ranking "$ranking" "${sets[@]}" -o "$out/$name" 2> "$out/$name.log"
  local rc=$?
  echo "== $name rc=$rc wall=$(echo "$(date +%s.%N) - $t0" | bc)s"
  grep -E "tokens/s|Error|error" "$out/$name.log" | tail -3
  tail -2 "$out/$name/train_log.tsv" 2>/dev/null
}
run logo logo "$s_logo"
run logo_compile logo "$((s_logo / 2))" compile=true
run dnabert dnabert "$s_bert"
