#!/usr/bin/env bash
# `make test-slurm` (root): start a throwaway single-node SLURM with two fake GPUs, run the shrunk
# end-to-end DAG (tests/data/e2e.yaml + e2e-slurm.yaml: pretraining asks for 1 GPU) through the SLURM
# executor with profiles/slurm + profiles/slurm-ci, check the results and that SLURM ran every job
# (.ci/slurm/check.py), and always stop the daemons again (trap), also on failure or interrupt.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (installs and starts SLURM); plain 'make test' does not" >&2; exit 1; }
BIN="$(cd "${VENV:-.venv}/bin" && pwd)"          # absolute: jobs inherit PATH (sbatch --export=ALL)
export PATH="$BIN:$PATH"
export GENEMASK_MIRROR="${GENEMASK_MIRROR:-$(cd .. && pwd)/shared/data}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-600}"             # seconds; a hung run gets SIGINT (snakemake scancels)
# SLURM_TEST_KEEP=1 keeps the work dir (with snakemake.out and slurm-jobs.txt) also on success.
CONFIGS=(tests/data/e2e.yaml tests/data/e2e-slurm.yaml)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/genemask-slurm.XXXXXX")"
OUT="$WORK/snakemake.out"
start=$(date +%s)
cpu0="$(head -1 /proc/stat)"

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "=== test-slurm FAILED (rc $rc); snakemake output (tail):" >&2
    tail -n 60 "$OUT" >&2 2>/dev/null || true
    echo "=== squeue / slurmctld.log (tail):" >&2
    squeue -t all 2>/dev/null | tail -n 20 >&2 || true
    tail -n 30 /var/log/slurm/slurmctld.log >&2 2>/dev/null || true
  fi
  scontrol show job -d -o >"$WORK/slurm-jobs.txt" 2>/dev/null || true
  bash .ci/slurm/teardown.sh || true
  if [ "$rc" -eq 0 ] && [ -z "${SLURM_TEST_KEEP:-}" ]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
  read -r _ u n s i w _ <<<"$cpu0"; read -r _ u2 n2 s2 i2 w2 _ <<<"$(head -1 /proc/stat)"
  busy=$(( (u2+n2+s2-u-n-s) )); all=$(( busy + i2+w2-i-w ))
  echo "test-slurm: CPU busy $(( 100 * busy / (all > 0 ? all : 1) ))% of $(nproc) CPUs"
  echo "test-slurm: $([ "$rc" -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash .ci/slurm/setup.sh
echo "test-slurm: snakemake --profile profiles/slurm --profile profiles/slurm-ci in $WORK (limit ${TIMEOUT}s)"
# In the background + wait, so that a SIGINT/SIGTERM to this script is handled at once: it is passed
# on as SIGINT (timeout forwards it to snakemake, which scancels its jobs), then the EXIT trap tears
# the cluster down. timeout runs in its own process group, so a Ctrl-C would not reach it otherwise.
timeout -s INT -k 60 "$TIMEOUT" "$BIN/snakemake" -s workflow/Snakefile --configfile "${CONFIGS[@]}" \
  --directory "$WORK" --profile profiles/slurm --profile profiles/slurm-ci >"$OUT" 2>&1 &
smk=$!
stop_smk() { kill -INT "$smk" 2>/dev/null; wait "$smk" 2>/dev/null || true; exit "$1"; }
trap 'stop_smk 130' INT
trap 'stop_smk 143' TERM
rc=0
wait "$smk" || rc=$?
trap 'exit 130' INT
trap 'exit 143' TERM
[ "$rc" -eq 0 ] || { [ "$rc" -eq 124 ] && echo "snakemake timed out after ${TIMEOUT}s (SIGINT)" >&2; exit "$rc"; }
grep -E "steps \(100%\) done" "$OUT" | tail -n 1
"$BIN/python" .ci/slurm/check.py "$WORK" "$OUT" "${CONFIGS[@]}"
