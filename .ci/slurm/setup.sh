#!/usr/bin/env bash
# Install and start a throwaway single-node SLURM (munge + slurmctld + slurmd) with two fake GPUs.
# Root only; Debian/Ubuntu (apt). Idempotent: a cluster left running by an earlier call is stopped first.
# The fake GPUs are /dev/null-like character devices: they exercise GRES routing, not CUDA.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "setup.sh: must run as root (it installs and starts SLURM daemons)" >&2; exit 1; }
HERE="$(cd "$(dirname "$0")" && pwd)"
NGPU="${SLURM_FAKE_GPUS:-2}"
# The node offers OVERSUB x the real CPUs (slurmd config_overrides): a SLURM job of this pipeline's
# small CI DAG spends most of its ~5 s starting two snakemake processes and srun, not computing, so
# two jobs per CPU cut the run from ~300 s to ~200 s on 2 CPUs. 1 = the real count.
OVERSUB="${SLURM_CPU_OVERSUBSCRIBE:-2}"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(slurmctld slurmd slurm-client munge)
  echo "setup.sh: apt-get install ${pkgs[*]}"
  if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >/tmp/genemask-slurm-apt.log 2>&1; then
    apt-get update >>/tmp/genemask-slurm-apt.log 2>&1
    apt-get install -y --no-install-recommends "${pkgs[@]}" >>/tmp/genemask-slurm-apt.log 2>&1 \
      || { tail -20 /tmp/genemask-slurm-apt.log >&2; exit 1; }
  fi
fi

bash "$HERE/teardown.sh" --quiet   # a clean slate: no daemons, no state from an earlier run

# munge (authentication between the SLURM commands and daemons)
if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
runuser -u munge -- /usr/sbin/munged </dev/null >>/var/log/munge/munged.out 2>&1
munge -n | unmunge >/dev/null || { echo "setup.sh: munge does not work" >&2; exit 1; }

# slurm.conf from this machine's hardware
host="$(uname -n)"; host="${host%%.*}"   # slurmd finds its NodeName by the short host name
hw="$(slurmd -C | head -1)"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
cpus=$(( cpus * OVERSUB ))
mem=$(( mem * 9 / 10 ))   # a little below what slurmd sees, or the node is drained as "Low RealMemory"
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by .ci/slurm/setup.sh (GeneMask CI): one node, $cpus CPUs (x$OVERSUB), $NGPU fake GPUs.
# Removed by teardown.sh.
ClusterName=genemask-ci
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
SlurmdUser=root
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# Fake GPUs: gres.conf needs device files, or the node goes INVAL.
for i in $(seq 0 $((NGPU - 1))); do
  [ -e "/dev/fakegpu$i" ] || mknod -m 666 "/dev/fakegpu$i" c 1 3
done
echo "NodeName=$host Name=gpu File=/dev/fakegpu[0-$((NGPU - 1))]" > /etc/slurm/gres.conf
: > /var/log/slurm/slurmctld.log; : > /var/log/slurm/slurmd.log
chown slurm:slurm /var/log/slurm/slurmctld.log

# Daemons get no terminal fds: a caller capturing our output must not wait on them.
/usr/sbin/slurmctld </dev/null >>/var/log/slurm/daemons.out 2>&1
/usr/sbin/slurmd </dev/null >>/var/log/slurm/daemons.out 2>&1
for _ in $(seq 1 60); do
  state="$(sinfo -h -o %T 2>/dev/null | head -1 || true)"
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "setup.sh: node state is '${state:-none}', not idle" >&2
  sinfo -R >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
echo "setup.sh: SLURM up on $host: $cpus CPUs, ${mem} MB, gpu:$NGPU (fake)"
