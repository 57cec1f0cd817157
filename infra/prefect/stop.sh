#!/usr/bin/env bash
# Stop the worker and the server that infra/prefect/start.sh started (by the pids it
# recorded; each runs in its own session, so its children stop with it).  The state
# directory (database, logs) is kept.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${SCALEREG_PREFECT_STATE:-$REPO/.prefect-server}

stop() {
    local file=$STATE/$1.pid
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
        echo "prefect: stopped $1 (pid $pid)"
    fi
    rm -f "$file"
}
stop worker
stop server
