"""End to end: ms.sh start/status/stop in a temporary copy of the project, on a free port."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.service_harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "ms"
    dest.mkdir()
    for name in ("ms.sh", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "requirements", dest / "requirements", copy_function=shutil.copy2)
    shutil.copytree(ROOT / "msapp", dest / "msapp", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = Path(sys.prefix)
    if not (venv / ".ms-installed-test").exists() and not (venv / ".ms-installed-run").exists():
        pytest.skip("tests are not running from the .venv that ms.sh made")
    (dest / ".venv").symlink_to(venv)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_") and k != "DATABASE_URL"}
    env.update(MS_PORT=str(port), MS_WORKERS="2")
    yield dest, env, port
    subprocess.run(["./ms.sh", "stop"], cwd=dest, env=env, capture_output=True, timeout=60)


def sh(dest, env, *args):
    return subprocess.run(["./ms.sh", *args], cwd=dest, env=env, capture_output=True, text=True, timeout=120)


def test_start_status_stop(project):
    dest, env, port = project
    assert sh(dest, env, "status").returncode == 3
    started = sh(dest, env, "start")
    assert started.returncode == 0, started.stderr + started.stdout
    assert f"http://127.0.0.1:{port}/ms-admin/" in started.stdout
    assert "admin_token" in started.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    assert (dest / "instance" / "admin_token").stat().st_mode & 0o777 == 0o600
    assert sh(dest, env, "status").returncode == 0
    again = sh(dest, env, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert sh(dest, env, "logs").returncode == 0
    assert sh(dest, env, "stop").returncode == 0
    assert sh(dest, env, "status").returncode == 3
    assert sh(dest, env, "stop").returncode == 0  # idempotent


def answers(url):
    """The HTTP status of a GET, or None when nothing listens."""
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None


def test_the_admin_face_in_a_process_of_its_own(project):
    """MS_ADMIN_PORT: `start` runs the events' process and an admin-only one beside it on the one SQLite
    file; `status` tells both; `stop` stops both."""
    dest, env, port = project
    admin_port = free_port()
    env = {**env, "MS_ADMIN_PORT": str(admin_port)}
    started = sh(dest, env, "start")
    assert started.returncode == 0, started.stderr + started.stdout
    assert f"http://127.0.0.1:{admin_port}/ms-admin/" in started.stdout
    events, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    assert answers(f"{admin}/ms-admin/login") == 200 and answers(f"{events}/ms-admin/login") == 404
    assert answers(f"{events}/healthz") == 200 and answers(f"{admin}/healthz") == 200
    assert (dest / "logs" / "admin" / "ms.log").exists()  # each process rotates a log of its own
    status = sh(dest, env, "status")
    assert status.returncode == 0 and "admin face: running" in status.stdout
    admin_pid = int((dest / "instance" / "ms-admin.pid").read_text())
    os.kill(admin_pid, signal.SIGKILL)  # the admin process dies; the events' goes on
    assert wait_for(lambda: answers(f"{admin}/healthz") is None)
    dead = sh(dest, env, "status")
    assert dead.returncode == 1 and "admin face: dead" in dead.stdout
    again = sh(dest, env, "start")  # starts the missing one only
    assert again.returncode == 0 and "admin face started again" in again.stdout, again.stderr + again.stdout
    assert answers(f"{admin}/ms-admin/login") == 200
    assert sh(dest, env, "stop").returncode == 0
    assert answers(f"{admin}/healthz") is None and answers(f"{events}/healthz") is None
    assert sh(dest, env, "status").returncode == 3
    assert not (dest / "instance" / "ms-admin.pid").exists()


def test_a_second_process_on_the_same_sqlite_file_is_refused(project):
    dest, env, port = project
    assert sh(dest, env, "start").returncode == 0
    other = subprocess.run([str(dest / ".venv" / "bin" / "python"), "-m", "msapp", "serve"], cwd=dest,
                           env={**env, "MS_PORT": str(free_port()), "MS_INSTANCE_DIR": str(dest / "instance"),
                                "MS_LOG_DIR": str(dest / "logs")}, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    lines = [line for line in other.stderr.splitlines() if line.startswith("ms:")]
    assert len(lines) == 1 and "SQLite is for one process" in lines[0] and "Traceback" not in other.stderr
    assert sh(dest, env, "status").returncode == 0  # the first one is untouched


def test_never_signals_a_process_it_did_not_start(project):
    dest, env, _ = project
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (dest / "instance").mkdir(exist_ok=True)
        (dest / "instance" / "ms.pid").write_text(f"{stranger.pid}\n")
        assert sh(dest, env, "status").returncode == 1
        sh(dest, env, "stop")
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("name,value,fragment", [
    ("MS_PORT", "99999", "MS_PORT"),
    ("MS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none", "database unreachable"),
    ("MS_DATABASE_URL", "oracle://x/y", "unsupported database"),
])
def test_bad_settings_stop_start_with_one_line(project, name, value, fragment):
    dest, env, _ = project
    r = sh(dest, {**env, name: value}, "start")
    assert r.returncode != 0
    assert fragment in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("ms:")]) == 1


def test_port_in_use_is_reported(project):
    import socket

    dest, env, port = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = sh(dest, env, "start")
    assert r.returncode != 0 and "cannot listen" in r.stderr
    assert sh(dest, env, "status").returncode == 3


@pytest.fixture
def fake_venv(tmp_path):
    """A copy of ms.sh whose .venv/bin/python only records how it was called (no real install); it
    prints noise, as pip does, that ms.sh must keep out of the user's way."""
    dest = tmp_path / "fake"
    dest.mkdir()
    for name in ("ms.sh", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "requirements", dest / "requirements", copy_function=shutil.copy2)
    python = dest / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../calls.log"\n'
                      'case "$*" in *"msapp check"*) ;; *) echo "pip noise: Editable installation warning";; esac\n'
                      'exit 0\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    env["MS_LOG_DIR"] = str(dest / "logs")

    def run(*args, output=None):
        r = subprocess.run(["./ms.sh", *args], cwd=dest, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        if output is not None:
            output.append(r.stdout + r.stderr)
        log = dest / ".venv" / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [line for line in lines if not line.startswith("-c import sys")]  # the version check

    return dest, run


def installs(calls, kind):
    return any(line.endswith(f"--require-hashes -r requirements/{kind}.lock") for line in calls)


def test_plain_install_then_test_installs_the_test_extras(fake_venv):
    """README order on a fresh clone: start (plain install) then test must still install pytest."""
    _, run = fake_venv
    assert installs(run("check"), "run")
    calls = run("test", "-q")
    assert installs(calls, "test"), calls
    assert calls[-1] == "-m pytest -q"


def test_test_install_satisfies_a_later_plain_start(fake_venv):
    _, run = fake_venv
    assert installs(run("test"), "test")
    assert run("check") == ["-m msapp check"]  # nothing reinstalled
    assert run("test") == ["-m pytest"]


def test_changed_dependencies_reinstall(fake_venv):
    """After a `git pull` that changes the lock the next command installs again."""
    dest, run = fake_venv
    run("test")
    future = time.time() + 5
    os.utime(dest / "requirements" / "test.lock", (future, future))
    assert installs(run("test"), "test")


def test_setup_says_one_line_per_step_and_keeps_the_tools_output_in_a_log(fake_venv):
    dest, run = fake_venv
    out = []
    run("check", output=out)
    assert "pip noise" not in out[0]
    assert [line for line in out[0].splitlines() if line.startswith("ms: ")] == \
        [f"ms: installing {_count(dest / 'requirements' / 'run.lock')} locked packages"]
    assert "pip noise" in (dest / "logs" / "setup.log").read_text()


def _count(lock):
    return sum(1 for line in lock.read_text().splitlines() if line[:1].isalnum())


def test_a_failing_step_shows_its_output(fake_venv):
    dest, _ = fake_venv
    python = dest / ".venv" / "bin" / "python"
    python.write_text('#!/bin/sh\ncase "$*" in *pip*) echo "ERROR: hash mismatch for flask" >&2; exit 1;; esac\nexit 0\n')
    r = subprocess.run(["./ms.sh", "check"], cwd=dest, capture_output=True, text=True, timeout=60,
                       env={**{k: v for k, v in os.environ.items() if not k.startswith("MS_")},
                            "MS_LOG_DIR": str(dest / "logs")})
    assert r.returncode == 2 and "hash mismatch for flask" in r.stderr and "setup.log" in r.stderr


def test_help_lists_the_commands_and_nothing_else():
    r = subprocess.run(["./ms.sh", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("usage: ./ms.sh COMMAND")
    assert "set -euo" not in r.stdout and "start | stop" in r.stdout and "bench" in r.stdout
