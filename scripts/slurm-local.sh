#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), for the SLURM tests.
# Idempotent: does nothing when the cluster already answers. Needs root. Installs nothing; .ci/run does:
#   apt-get install -y slurm-wlm munge
set -euo pipefail

conf=/etc/slurm/slurm.conf
host=$(hostname -s)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
up() {
    alive /run/munge/munged.pid && alive /run/slurmctld.pid && alive /run/slurmd.pid &&
        scontrol ping 2>/dev/null | grep -q 'is UP' && sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

if up; then
    echo "slurm-local: the cluster is already up on $host"
    exit 0
fi
for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null || { echo "slurm-local: $cmd not found; apt-get install -y slurm-wlm munge" >&2; exit 1; }
done

# munge authenticates every SLURM message; its key comes with the package
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || /usr/sbin/create-munge-key -f; }
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

if [ -e "$conf" ] && ! grep -q 'written by scripts/slurm-local.sh' "$conf"; then
    echo "slurm-local: $conf exists and is not ours; this machine has its own SLURM setup, leaving it alone" >&2
    exit 1
fi
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$conf" <<EOF
# one-node cluster written by scripts/slurm-local.sh
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MaxArraySize=10001
MaxJobCount=100000
MinJobAge=300
KillWait=30
InactiveLimit=0
SlurmdTimeout=300
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

alive /run/slurmctld.pid || slurmctld
alive /run/slurmd.pid || slurmd
for _ in $(seq 300); do
    if up; then
        echo "slurm-local: cluster up on $host ($(nproc) CPUs)"
        exit 0
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 0.2
done
echo "slurm-local: the cluster did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
