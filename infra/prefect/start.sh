#!/usr/bin/env bash
# Start a local Prefect server on loopback (SQLite under a state directory), create the
# process work pool the deployments use, and optionally start a worker on it.  Each
# process runs in its own session with its pid in the state directory, so stop.sh
# stops exactly these (and their children).  Idempotent: what is running is reused.
#
#   bash infra/prefect/start.sh            # server + work pool
#   bash infra/prefect/start.sh --worker   # ... and a process worker
#   export PREFECT_API_URL=http://127.0.0.1:4200/api   # then: cd deployments && prefect --no-prompt deploy --all
#
# Environment:
#   SCALEREG_PREFECT_STATE   state directory (default: <repo>/.prefect-server): database, logs, pids
#   SCALEREG_PREFECT_PORT    server port on 127.0.0.1 (default 4200)
#   SCALEREG_WORK_POOL       work pool name (default scalereg-process)
#   SCALEREG_OUTPUT_ROOTS    where runs from deployments may write (worker; default: <state>/outputs)
#   PREFECT_API_DATABASE_CONNECTION_URL   a PostgreSQL database instead of SQLite, e.g.
#                            postgresql+asyncpg://prefect:secret@127.0.0.1:5432/prefect
#   PREFECT_BIN              the prefect executable (default: <repo>/.venv/bin/prefect, else PATH)
#   SCALEREG_PREFECT_START_TIMEOUT  seconds to wait for /api/health (default 90)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${SCALEREG_PREFECT_STATE:-$REPO/.prefect-server}
PORT=${SCALEREG_PREFECT_PORT:-4200}
POOL=${SCALEREG_WORK_POOL:-scalereg-process}
TIMEOUT=${SCALEREG_PREFECT_START_TIMEOUT:-90}
if [ -z "${PREFECT_BIN:-}" ]; then
    if [ -x "$REPO/.venv/bin/prefect" ]; then PREFECT_BIN=$REPO/.venv/bin/prefect; else PREFECT_BIN=$(command -v prefect); fi
fi
API=http://127.0.0.1:$PORT/api
WITH_WORKER=0
[ "${1:-}" = "--worker" ] && WITH_WORKER=1

die() { echo "prefect: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p "$STATE"
# Offline machines: telemetry would only fill the logs with errors.
export PREFECT_SERVER_ANALYTICS_ENABLED=false

# --- server --------------------------------------------------------------------------
if alive "$STATE/server.pid"; then
    echo "prefect: server already running (pid $(cat "$STATE/server.pid"))"
else
    # The server's own home: its SQLite database (prefect.db) lives here unless
    # PREFECT_API_DATABASE_CONNECTION_URL points elsewhere.
    PREFECT_HOME=$STATE PREFECT_API_URL=$API PREFECT_UI_API_URL=$API \
        setsid "$PREFECT_BIN" server start --host 127.0.0.1 --port "$PORT" >"$STATE/server.log" 2>&1 </dev/null &
    echo $! >"$STATE/server.pid"
fi
for _ in $(seq "$TIMEOUT"); do
    curl -fsS "$API/health" >/dev/null 2>&1 && break
    alive "$STATE/server.pid" || die "server exited; see $STATE/server.log"
    sleep 1
done
curl -fsS "$API/health" >/dev/null 2>&1 || die "server not healthy after ${TIMEOUT}s; see $STATE/server.log"
echo "prefect: server at http://127.0.0.1:$PORT (API $API), state in $STATE"

# --- work pool -------------------------------------------------------------------------
export PREFECT_API_URL=$API
if ! "$PREFECT_BIN" work-pool inspect "$POOL" >/dev/null 2>&1; then
    "$PREFECT_BIN" work-pool create "$POOL" --type process >/dev/null || die "could not create work pool $POOL"
fi
echo "prefect: work pool $POOL (process)"

# --- worker (optional) -----------------------------------------------------------------
if [ "$WITH_WORKER" = 1 ]; then
    if alive "$STATE/worker.pid"; then
        echo "prefect: worker already running (pid $(cat "$STATE/worker.pid"))"
    else
        export SCALEREG_OUTPUT_ROOTS=${SCALEREG_OUTPUT_ROOTS:-$STATE/outputs}
        # the worker starts flow runs from the repository (the deployments' pull step
        # sets it too); they inherit this environment, including the output roots
        cd "$REPO"
        setsid "$PREFECT_BIN" worker start --pool "$POOL" >"$STATE/worker.log" 2>&1 </dev/null &
        echo $! >"$STATE/worker.pid"
        echo "prefect: worker on $POOL (pid $(cat "$STATE/worker.pid")), outputs confined to $SCALEREG_OUTPUT_ROOTS"
    fi
fi
echo "export PREFECT_API_URL=$API"
