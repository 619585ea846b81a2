#!/usr/bin/env bash
# A one-node SLURM on this host, for exercising the SLURM launcher (docs/cluster.md, make test-cluster).
#
#   scripts/slurm_local.sh start    install slurm-wlm + munge if missing, configure, start, wait for the node
#   scripts/slurm_local.sh stop     cancel its jobs, stop exactly the daemons it started (PIDs in the state dir)
#   scripts/slurm_local.sh status   which of its daemons run, and sinfo
#   scripts/slurm_local.sh env      the line that points SLURM's commands at it: eval "$(scripts/slurm_local.sh env)"
#
# Everything lives under $ATP_SLURM_DIR (default /tmp/atp-slurm): slurm.conf, a munged of its own (own
# socket, so a system munged is left alone), state, spool, logs and PID files. No cgroups, no accounting
# database (sacct does not work; use scontrol). Needs root (apt-get, daemons as root).
set -euo pipefail

STATE=${ATP_SLURM_DIR:-/tmp/atp-slurm}
CONF=$STATE/slurm.conf
MUNGE_SOCKET=$STATE/munge/munge.socket.2
NODE=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "error: $*" >&2; exit 1; }

alive() {  # alive <name>: the PID recorded for <name> runs and is that program
    local pidfile=$STATE/$1.pid pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$1"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed and this is not root: run 'apt-get install -y slurm-wlm munge' as root"
    echo "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >"$STATE/apt.log" 2>&1 \
        || { apt-get update -q >>"$STATE/apt.log" 2>&1 && apt-get install -y -q slurm-wlm munge >>"$STATE/apt.log" 2>&1; } \
        || die "apt-get install slurm-wlm munge failed; see $STATE/apt.log"
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
    # Short intervals so a requeued job restarts in seconds: a requeued batch job waits until the launch
    # credential expires (cred_expire, default 120 s) before it may start again.
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: one node ($NODE), no cgroups, no accounting.
ClusterName=atplocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${ATP_SLURMCTLD_PORT:-6817}
SlurmdPort=${ATP_SLURMD_PORT:-6818}
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() {  # start_daemon <name> <log> <command...>: in the background, PID recorded, still alive 1 s later
    local name=$1 log=$2
    shift 2
    if alive "$name"; then return; fi
    nohup "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
    sleep 1
    alive "$name" || die "$name did not come up; see $log"
}

start() {
    mkdir -p "$STATE"
    install_packages
    write_config
    chown munge:munge "$STATE/munge" && chmod 0755 "$STATE/munge"
    start_daemon munged "$STATE/munge/munged.log" \
        setpriv --reuid=munge --regid=munge --init-groups munged --foreground --socket="$MUNGE_SOCKET" --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
    [[ -S $MUNGE_SOCKET ]] || die "munged did not come up; see $STATE/munge/munged.log"
    start_daemon slurmctld "$STATE/slurmctld.log" slurmctld -D -f "$CONF"
    start_daemon slurmd "$STATE/slurmd.log" slurmd -D -f "$CONF"
    local deadline=$((SECONDS + 60)) state=""
    while (( SECONDS < deadline )); do
        state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
        if [[ $state == idle || $state == mixed || $state == allocated ]]; then
            echo "slurm is up: node $NODE $state ($(sinfo -V)); export SLURM_CONF=$CONF"
            return
        fi
        alive slurmctld || die "slurmctld stopped; see $STATE/slurmctld.log"
        alive slurmd || die "slurmd stopped; see $STATE/slurmd.log"
        sleep 0.5
    done
    die "node $NODE is '${state:-unknown}', not idle, after 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
}

stop_pid() {  # stop_pid <pid>: SIGTERM, then SIGKILL after 10 s
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    [[ -d $STATE ]] || { echo "slurm_local: nothing to stop ($STATE does not exist)"; return; }
    if alive slurmctld; then  # cancel its jobs, so no job step outlives slurmd
        scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
        local deadline=$((SECONDS + 45))
        while (( SECONDS < deadline )) && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; do sleep 1; done
    fi
    local name
    for name in slurmd slurmctld; do
        if alive "$name"; then stop_pid "$(<"$STATE/$name.pid")"; fi
        rm -f "$STATE/$name.pid"
    done
    if alive munged; then stop_pid "$(<"$STATE/munged.pid")"; fi
    rm -f "$STATE/munged.pid"
    echo "slurm_local: stopped"
}

status() {
    local name up=0
    for name in munged slurmctld slurmd; do
        if alive "$name"; then echo "$name: running (pid $(<"$STATE/$name.pid"))"; up=$((up + 1))
        else echo "$name: not running"; fi
    done
    (( up == 3 )) && sinfo -N -o "%N %T %c %m"
    (( up == 3 ))
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
