#!/usr/bin/env bash
# Stop what setup.sh started (by pid file), cancel leftover jobs, and wipe the SLURM state.
# Safe to run when nothing is running. --quiet: no message.
set -uo pipefail
[ "$(id -u)" -eq 0 ] || { echo "teardown.sh: must run as root" >&2; exit 1; }

if [ -s /run/slurmctld.pid ] && command -v squeue >/dev/null; then
  jobs="$(timeout 10 squeue -h -o %i 2>/dev/null || true)"
  [ -n "$jobs" ] && timeout 10 scancel $jobs 2>/dev/null
fi

stop() {  # stop <pidfile> <program>: SIGTERM, wait up to 10 s, then SIGKILL
  local pidfile="$1" prog="$2" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$prog" ]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/munge/munged.pid munged

rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* 2>/dev/null
# No slurm.conf once the controller is gone: snakemake-executor-plugin-slurm runs `scontrol show
# config` whenever snakemake is imported and sinfo is on PATH, and with a config naming a dead
# controller that call hangs for its 10 s timeout in every later snakemake run on this machine.
rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
rm -f /dev/fakegpu[0-9]* 2>/dev/null
[ "${1:-}" = --quiet ] || echo "teardown.sh: SLURM and munge stopped, state wiped"
exit 0
