#!/usr/bin/env bash
# ms.sh - lifecycle of the ms service (MoySklad telephony bridge). `./ms.sh help` lists the commands.
#
# start and test create .venv on first use (only Python 3.11 is needed) from the hash-checked locks in
# requirements/. status follows LSB: 0 running, 1 dead but pid file exists, 3 not running. The script
# only ever signals a process whose command line is this checkout's `msapp serve`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
INSTANCE="${MS_INSTANCE_DIR:-$ROOT/instance}"
LOGDIR="${MS_LOG_DIR:-$ROOT/logs}"
PIDFILE="$INSTANCE/ms.pid"
PORT="${MS_PORT:-8023}"
# MS_ADMIN_PORT: the admin face in a process of its own on this port (docs/operations.md, "The admin face
# in a process of its own"), with its own pid file and log directory.
ADMIN_PORT="${MS_ADMIN_PORT:-}"
ADMIN_PIDFILE="$INSTANCE/ms-admin.pid"
ADMIN_LOGDIR="$LOGDIR/admin"
SETUP_LOG="$LOGDIR/setup.log"
PYTHON_VERSION="3.11"  # the one CI runs the whole suite on
export MS_INSTANCE_DIR="$INSTANCE" MS_LOG_DIR="$LOGDIR"

say() { printf 'ms: %s\n' "$*"; }
die() { printf 'ms: %s\n' "$*" >&2; exit "${2:-1}"; }

usage() {
    cat <<'EOF_USAGE'
usage: ./ms.sh COMMAND

  start | stop | restart | status   run the service (SQLite in instance/ unless MS_DATABASE_URL is set;
                                    with MS_ADMIN_PORT, the admin face in a second process on that port)
  logs [-f | N]                     the service's log
  test [pytest args]                the whole test suite
  migrate | check                   upgrade the database; check the settings and the database
  enterprise ...                    add, list and configure enterprises (./ms.sh enterprise --help)
  sandbox [--port N]                the MoySklad stand-in, for trying things by hand
  demo [--once]                     the service and the sandbox, with a few calls played
  bench [...]                       the performance figures (./ms.sh bench --help)
  lock                              refresh requirements/*.lock from setup.cfg (needs the package index)
EOF_USAGE
}

is_supported() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != (${PYTHON_VERSION/./, }))" >/dev/null 2>&1; }

python3_bin() {
    for candidate in "python$PYTHON_VERSION" python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && is_supported "$candidate"; then
            echo "$candidate"; return 0
        fi
    done
    die "Python $PYTHON_VERSION is required (found: $(python3 --version 2>&1 || echo none))" 2
}

# step WHAT COMMAND...: one line for the user; the command's own output goes to the setup log, shown
# (its end) only when the command fails.
step() {
    local what="$1"; shift
    say "$what"
    mkdir -p "$LOGDIR"
    printf '\n== %s: %s\n' "$(date -u +%FT%TZ)" "$what" >>"$SETUP_LOG"
    if ! "$@" >>"$SETUP_LOG" 2>&1; then
        tail -n 25 "$SETUP_LOG" >&2
        die "$what failed (the whole output: $SETUP_LOG)" 2
    fi
}

# fresh STAMP LOCK: the stamp exists and is newer than the lock.
fresh() { [ -f "$1" ] && [ ! "$2" -nt "$1" ]; }

# ensure_venv [test]: .venv with the locked packages (the test extras too with `test`), when missing or
# stale. The checkout itself is put on the path by a .pth file: no build step.
ensure_venv() {
    local kind="${1:-run}"
    local lock="requirements/$kind.lock" stamp="$VENV/.ms-installed-$kind"
    if [ -x "$PY" ] && ! is_supported "$PY"; then
        step "replacing .venv (not Python $PYTHON_VERSION)" rm -rf "$VENV"
    fi
    if [ ! -x "$PY" ]; then
        local python
        python="$(python3_bin)"
        step "creating .venv" "$python" -m venv "$VENV"
    fi
    if fresh "$stamp" "$lock" || { [ "$kind" = run ] && fresh "$VENV/.ms-installed-test" requirements/test.lock; }; then
        return 0
    fi
    step "installing $(grep -c '^[a-z0-9]' "$lock") locked packages" \
        "$PY" -m pip install --disable-pip-version-check --require-hashes -r "$lock"
    "$PY" - "$ROOT" >>"$SETUP_LOG" 2>&1 <<'PYEOF'
import sys, sysconfig
with open(sysconfig.get_paths()["purelib"] + "/ms-checkout.pth", "w") as fh:
    fh.write(sys.argv[1] + "\n")
PYEOF
    touch "$stamp"
}

# pid_of_ours [PIDFILE]: print the pid from the pid file (the service's by default) if that process is
# this checkout's server.
pid_of_ours() {
    local file="${1:-$PIDFILE}"
    [ -f "$file" ] || return 1
    local pid
    pid="$(cat "$file" 2>/dev/null || true)"
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
    echo "http://$host:$1/healthz"
}

# wait_healthy PID PORT
wait_healthy() {
    local pid="$1" url
    url="$(health_url "$2")"
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

# launch PIDFILE LOGDIR PORT [VAR=VALUE...]: `msapp serve` in the background with the settings given;
# returns once /healthz answers on PORT, or stops the script with the process's own `ms:` line.
launch() {
    local pidfile="$1" logdir="$2" port="$3"; shift 3
    mkdir -p "$logdir"
    rm -f "$pidfile"
    env "$@" nohup "$PY" -m msapp serve >>"$logdir/stdout.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$pidfile"
    if ! wait_healthy "$pid" "$port"; then
        local reason
        reason="$(grep '^ms: ' "$logdir/stdout.log" | tail -n 1 || true)"
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        die "did not start${reason:+: ${reason#ms: }} (see $logdir/stdout.log)"
    fi
}

# start_admin: the admin face alone on MS_ADMIN_PORT, no workers, the events' address for its webhook URLs.
start_admin() {
    launch "$ADMIN_PIDFILE" "$ADMIN_LOGDIR" "$ADMIN_PORT" MS_FACES=admin MS_WORKERS=0 MS_PORT="$ADMIN_PORT" \
        MS_LOG_DIR="$ADMIN_LOGDIR" MS_PUBLIC_URL="${MS_PUBLIC_URL:-http://localhost:$PORT}"
}

cmd_start() {
    if pid="$(pid_of_ours)"; then
        if [ -n "$ADMIN_PORT" ] && ! pid_of_ours "$ADMIN_PIDFILE" >/dev/null; then
            start_admin
            say "admin face started again (pid $(cat "$ADMIN_PIDFILE")) on port $ADMIN_PORT"
        fi
        say "already running (pid $pid) on http://${MS_HOST:-127.0.0.1}:$PORT"
        return 0
    fi
    ensure_venv
    mkdir -p "$INSTANCE" "$LOGDIR"
    "$PY" -m msapp check >/dev/null || exit 1
    step "migrating the database" "$PY" -m msapp migrate
    local admin_url="http://${MS_HOST:-127.0.0.1}:$PORT/ms-admin/"
    if [ -n "$ADMIN_PORT" ]; then
        [ "$ADMIN_PORT" != "$PORT" ] || die "MS_ADMIN_PORT must differ from MS_PORT" 2
        launch "$PIDFILE" "$LOGDIR" "$PORT" MS_FACES=internal,webhook
        start_admin
        admin_url="http://${MS_HOST:-127.0.0.1}:$ADMIN_PORT/ms-admin/"
        say "events: pid $(cat "$PIDFILE") on port $PORT; admin: pid $(cat "$ADMIN_PIDFILE")"
    else
        launch "$PIDFILE" "$LOGDIR" "$PORT"
    fi
    local token_note="from MS_ADMIN_TOKEN"
    [ -z "${MS_ADMIN_TOKEN:-}" ] && token_note="in $INSTANCE/admin_token"
    say "running (pid $(cat "$PIDFILE")) at $admin_url"
    say "admin token: $token_note; log: $LOGDIR/ms.log"
}

# stop_one PIDFILE: SIGTERM this checkout's server named by PIDFILE, SIGKILL after 20 s.
stop_one() {
    local file="$1" pid
    if ! pid="$(pid_of_ours "$file")"; then
        [ -f "$file" ] && { rm -f "$file"; say "not running (removed a stale pid file)"; return 0; }
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
    rm -f "$file"
    say "stopped"
}

cmd_stop() {
    if [ -f "$ADMIN_PIDFILE" ]; then stop_one "$ADMIN_PIDFILE"; fi  # started with MS_ADMIN_PORT
    stop_one "$PIDFILE"
}

cmd_status() {
    local rc=0
    status_code || rc=$?
    case "$rc" in
        0) say "running (pid $(pid_of_ours)) on http://${MS_HOST:-127.0.0.1}:$PORT" ;;
        1) say "dead, but the pid file $PIDFILE exists" ;;
        *) say "not running" ;;
    esac
    if [ -f "$ADMIN_PIDFILE" ]; then
        local admin
        if admin="$(pid_of_ours "$ADMIN_PIDFILE")"; then say "admin face: running (pid $admin)"
        else say "admin face: dead, but the pid file $ADMIN_PIDFILE exists"; [ "$rc" -ne 0 ] || rc=1; fi
    fi
    return "$rc"
}

cmd_logs() {
    local file="$LOGDIR/ms.log"
    [ -f "$file" ] || die "no log yet at $file" 3
    if [ "${1:-}" = "-f" ]; then exec tail -n 50 -F "$file"; fi
    tail -n "${1:-100}" "$file"
}

cmd_lock() {
    local tools="$ROOT/.venv-tools"
    [ -x "$tools/bin/uv" ] || step "installing uv into .venv-tools" sh -c \
        "\"$(python3_bin)\" -m venv \"$tools\" && \"$tools/bin/pip\" install uv"
    for kind in run test; do
        local extra=""
        [ "$kind" = test ] && extra="--extra test"
        # shellcheck disable=SC2086
        step "locking requirements/$kind.lock" "$tools/bin/uv" pip compile setup.cfg $extra --universal \
            --python-version "$PYTHON_VERSION" --generate-hashes --custom-compile-command "./ms.sh lock" \
            -o "requirements/$kind.lock"
    done
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
        lock) cmd_lock ;;
        check|migrate|enterprise|sandbox|demo|bench)
            ensure_venv
            exec "$PY" -m msapp "$cmd" "$@" ;;
        ''|-h|--help|help) usage ;;
        *) die "unknown command: $cmd (try ./ms.sh help)" 2 ;;
    esac
}

main "$@"
