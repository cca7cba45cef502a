#!/usr/bin/env bash
# ms.sh - lifecycle of the ms service (MoySklad telephony bridge).
#
#   ./ms.sh start | stop | restart | status | logs [-f] | test [pytest args]
#   ./ms.sh migrate | check | enterprise ... | sandbox [--port N] [--seed FILE] | demo | bench [...]
#
# start and test create .venv on first use (only Python 3 is needed). status follows LSB:
# 0 running, 1 dead but pid file exists, 3 not running. The script only ever signals a process
# whose command line is this checkout's `msapp serve`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
INSTANCE="${MS_INSTANCE_DIR:-$ROOT/instance}"
LOGDIR="${MS_LOG_DIR:-$ROOT/logs}"
PIDFILE="$INSTANCE/ms.pid"
export MS_INSTANCE_DIR="$INSTANCE" MS_LOG_DIR="$LOGDIR"

say() { printf 'ms: %s\n' "$*"; }
die() { printf 'ms: %s\n' "$*" >&2; exit "${2:-1}"; }

python3_bin() {
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    die "Python 3.9 or newer is required" 2
}

# fresh STAMP: the stamp exists and is newer than the packaging files.
fresh() { [ -f "$1" ] && [ ! setup.cfg -nt "$1" ] && [ ! pyproject.toml -nt "$1" ]; }

# ensure_venv [extras]: create .venv and install the package (with extras) when missing or stale.
# An install with the test extras also satisfies a plain one.
ensure_venv() {
    # Two statements: `local a=x b=$a` expands $a before `a` is set, which once left the stamp without
    # its extras, so `./ms.sh start` then `./ms.sh test` never installed pytest.
    local extras="${1:-}"
    local stamp="$VENV/.ms-installed${extras:+-$extras}"
    if [ ! -x "$PY" ]; then
        say "creating .venv"
        "$(python3_bin)" -m venv "$VENV" || die "could not create .venv (is the python3-venv package installed?)" 2
    fi
    if fresh "$stamp" || { [ -z "$extras" ] && fresh "$VENV/.ms-installed-test"; }; then
        return 0
    fi
    say "installing dependencies into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$spec" \
        || die "pip install failed (see the messages above)" 2
    touch "$stamp"
}

# pid_of_ours: print the pid from the pid file if that process is this checkout's server.
pid_of_ours() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    [ -r "/proc/$pid/cmdline" ] || return 1
    local cmd cwd
    cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
    cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
    case "$cmd" in *"-m msapp serve"*) ;; *) return 1 ;; esac
    [ "$cwd" = "$ROOT" ] || return 1
    echo "$pid"
}

status_code() {
    if pid_of_ours >/dev/null; then return 0; fi
    if [ -f "$PIDFILE" ]; then return 1; fi
    return 3
}

health_url() {
    local host="${MS_HOST:-127.0.0.1}"
    case "$host" in 0.0.0.0|'') host=127.0.0.1 ;; ::|'[::]') host='[::1]' ;; esac
    echo "http://$host:${MS_PORT:-8023}/healthz"
}

wait_healthy() {
    local pid="$1" url
    url="$(health_url)"
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        if "$PY" - "$url" <<'PYEOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
PYEOF
        sleep 0.2
    done
    return 1
}

cmd_start() {
    if pid="$(pid_of_ours)"; then
        say "already running (pid $pid) on http://${MS_HOST:-127.0.0.1}:${MS_PORT:-8023}"
        return 0
    fi
    ensure_venv
    mkdir -p "$INSTANCE" "$LOGDIR"
    "$PY" -m msapp check >/dev/null || exit 1
    "$PY" -m msapp migrate >/dev/null || exit 1
    rm -f "$PIDFILE"
    nohup "$PY" -m msapp serve >>"$LOGDIR/stdout.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$PIDFILE"
    if ! wait_healthy "$pid"; then
        local reason
        reason="$(grep '^ms: ' "$LOGDIR/stdout.log" | tail -n 1 || true)"
        kill "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        die "did not start${reason:+: ${reason#ms: }} (see $LOGDIR/stdout.log)"
    fi
    local token_note="from MS_ADMIN_TOKEN"
    [ -z "${MS_ADMIN_TOKEN:-}" ] && token_note="in $INSTANCE/admin_token"
    say "running (pid $pid) at http://${MS_HOST:-127.0.0.1}:${MS_PORT:-8023}/ms-admin/"
    say "admin token: $token_note; log: $LOGDIR/ms.log"
}

cmd_stop() {
    local pid
    if ! pid="$(pid_of_ours)"; then
        [ -f "$PIDFILE" ] && { rm -f "$PIDFILE"; say "not running (removed a stale pid file)"; return 0; }
        say "not running"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid did not stop in 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

cmd_status() {
    local rc=0
    status_code || rc=$?
    case "$rc" in
        0) say "running (pid $(pid_of_ours)) on http://${MS_HOST:-127.0.0.1}:${MS_PORT:-8023}" ;;
        1) say "dead, but the pid file $PIDFILE exists" ;;
        *) say "not running" ;;
    esac
    return "$rc"
}

cmd_logs() {
    local file="$LOGDIR/ms.log"
    [ -f "$file" ] || die "no log yet at $file" 3
    if [ "${1:-}" = "-f" ]; then exec tail -n 50 -F "$file"; fi
    tail -n "${1:-100}" "$file"
}

cmd_test() {
    ensure_venv test
    local rc=0
    "$PY" -m pytest "$@" || rc=$?
    return "$rc"
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_stop; cmd_start ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        test) cmd_test "$@" ;;
        check|migrate|enterprise|sandbox|demo|bench)
            ensure_venv
            exec "$PY" -m msapp "$cmd" "$@" ;;
        ''|-h|--help|help)
            sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command: $cmd (try ./ms.sh help)" 2 ;;
    esac
}

main "$@"
