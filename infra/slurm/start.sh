#!/usr/bin/env bash
# Start a single-node SLURM on this machine (no systemd, no docker): the node is this
# host, reached on 127.0.0.1, with all its cores and 80% of its memory.  Installs the
# Debian packages if they are missing, writes /etc/slurm/slurm.conf, creates a munge
# key, starts munged, slurmctld and slurmd as plain daemons (each only if it is not
# running already) and waits until sinfo shows the node ready.  Idempotent: a second
# run only checks.  Stop with infra/slurm/stop.sh.
#
# Environment: SLURM_START_TIMEOUT (seconds to wait for the node, default 60),
#              SLURM_PARTITION (partition name, default "debug").
set -euo pipefail

TIMEOUT=${SLURM_START_TIMEOUT:-60}
PARTITION=${SLURM_PARTITION:-debug}
NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
RUN_DIR=/run/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm

die() { echo "slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "start.sh must run as root (it installs packages and starts daemons)"

# --- packages ------------------------------------------------------------------------
packages=(slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
for user in slurm munge; do
    id "$user" >/dev/null 2>&1 || die "user $user does not exist (the Debian packages create it)"
done

# --- directories and configuration ---------------------------------------------------
install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$STATE_DIR" "$STATE_DIR/slurmctld" "$LOG_DIR"
install -d -o root -g root -m 0755 "$STATE_DIR/slurmd" /etc/slurm
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge

cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 * 0.8 / 1024 }' /proc/meminfo)
conf=$(cat <<EOF
# Written by infra/slurm/start.sh (overwritten on every start): one node, this host.
ClusterName=scalereg
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=7-00:00:00 State=UP
EOF
)
config_changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > "$CONF"
    chmod 0644 "$CONF"
    config_changed=1
fi

if [ ! -s /etc/munge/munge.key ]; then
    echo "slurm: creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# --- daemons -------------------------------------------------------------------------
# Whether process `pid` is alive: it exists and is not a zombie (PID 1 here may not
# reap orphans, so an exited daemon can linger as a zombie that kill -0 still finds).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# The pid of a running daemon `name` from its pid file, if that process is alive and is
# that daemon; empty otherwise.
running_pid() {
    local name=$1 pidfile=$2 pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && echo "$pid"
    return 0
}

# A daemon removes its pid file before it has exited: wait until no process of that
# executable is left (e.g. one that stop.sh is still shutting down) before starting it.
wait_for_exit_of_stale() {
    local name=$1 exe=$2 pid deadline=$((SECONDS + 30))
    for pid in $(pgrep -x "$name" || true); do
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] || continue
        echo "slurm: waiting for $name (pid $pid, no pid file) to exit"
        while alive "$pid"; do
            [ $SECONDS -lt $deadline ] || die "$name pid $pid is running without a pid file; stop it (infra/slurm/stop.sh) and retry"
            sleep 0.2
        done
    done
}

# start_daemon NAME PIDFILE LOG COMMAND...: start unless running, wait for its pid file.
start_daemon() {
    local name=$1 pidfile=$2 log=$3 deadline
    shift 3
    if [ -n "$(running_pid "$name" "$pidfile")" ]; then
        return 0
    fi
    wait_for_exit_of_stale "$name" "$(command -v "$name" || echo "/usr/sbin/$name")"
    rm -f "$pidfile"
    "$@" || die "$name failed to start; see $log"
    deadline=$((SECONDS + 20))
    until [ -n "$(running_pid "$name" "$pidfile")" ]; do
        [ $SECONDS -lt $deadline ] || die "$name did not start within 20 s; see $log"
        sleep 0.2
    done
    started+=("$name")
}

started=()
start_daemon munged /run/munge/munged.pid /var/log/munge/munged.log \
    runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work (munge -n | unmunge failed); see /var/log/munge/munged.log"

if [ "$config_changed" = 1 ]; then
    # A running daemon keeps its old configuration: tell it to re-read the file.
    [ -z "$(running_pid slurmctld $RUN_DIR/slurmctld.pid)" ] || scontrol reconfigure >/dev/null 2>&1 || true
fi
start_daemon slurmctld "$RUN_DIR/slurmctld.pid" "$LOG_DIR/slurmctld.log" /usr/sbin/slurmctld
start_daemon slurmd "$RUN_DIR/slurmd.pid" "$LOG_DIR/slurmd.log" /usr/sbin/slurmd -N "$NODE"

# --- wait for the node ---------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
state=""
while :; do
    state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
    esac
    if [ $SECONDS -ge $deadline ]; then
        reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n 1 || true)
        die "node $NODE is not up after ${TIMEOUT} s (state: ${state:-no answer from slurmctld}${reason:+, reason: $reason}); see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
    fi
    sleep 0.5
done

echo "slurm: up (node $NODE $state, ${cpus} CPUs, ${mem_mb} MB, partition $PARTITION; started: ${started[*]:-none, already running})"
