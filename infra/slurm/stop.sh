#!/usr/bin/env bash
# Stop the single-node SLURM that infra/slurm/start.sh started: slurmd, slurmctld,
# then munged, each by the pid in its pid file, and wait until each process has
# exited (a daemon removes its pid file before it exits, so wait on the pid itself).
# Idempotent: stopping what is not running is not an error.  Running jobs are not
# cancelled (slurmstepd keeps them alive; slurmd picks them up again on restart).
set -euo pipefail

TIMEOUT=${SLURM_STOP_TIMEOUT:-30}
RUN_DIR=/run/slurm

die() { echo "slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "stop.sh must run as root"

# Whether process `pid` is alive: it exists and is not a zombie (PID 1 here may not
# reap orphans, so an exited daemon can linger as a zombie that kill -0 still finds).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# The pids of daemon `name`: the one in its pid file, plus any process of the same
# executable still running without one (e.g. one that was shutting down already).
daemon_pids() {
    local name=$1 pidfile=$2 exe=$3 pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        echo "$pid"
    fi
    for pid in $(pgrep -x "$name" || true); do
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]; then
            echo "$pid"
        fi
    done
}

stop_daemon() {
    local name=$1 pidfile=$2 exe=$3 pids pid deadline
    pids=$(daemon_pids "$name" "$pidfile" "$exe" | sort -u)
    if [ -z "$pids" ]; then
        return 0
    fi
    for pid in $pids; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + TIMEOUT))
    for pid in $pids; do
        while alive "$pid"; do
            if [ $SECONDS -ge $deadline ]; then
                echo "slurm: $name (pid $pid) did not exit within ${TIMEOUT} s after SIGTERM; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
                deadline=$((SECONDS + 5))
            fi
            sleep 0.2
        done
    done
    stopped+=("$name")
}

stopped=()
stop_daemon slurmd "$RUN_DIR/slurmd.pid" /usr/sbin/slurmd
stop_daemon slurmctld "$RUN_DIR/slurmctld.pid" /usr/sbin/slurmctld
stop_daemon munged /run/munge/munged.pid /usr/sbin/munged
echo "slurm: stopped (${stopped[*]:-nothing was running})"
