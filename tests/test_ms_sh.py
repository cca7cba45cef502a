"""End to end: ms.sh start/status/stop in a temporary copy of the project, on a free port."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "ms"
    dest.mkdir()
    for name in ("ms.sh", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "msapp", dest / "msapp", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = Path(sys.prefix)
    if not (venv / ".ms-installed-test").exists() and not (venv / ".ms-installed").exists():
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
    """A copy of ms.sh whose .venv/bin/python only records how it was called (no real install)."""
    dest = tmp_path / "fake"
    dest.mkdir()
    for name in ("ms.sh", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    python = dest / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../calls.log"\nexit 0\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}

    def run(*args):
        r = subprocess.run(["./ms.sh", *args], cwd=dest, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        log = dest / ".venv" / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [line for line in lines if "--upgrade pip" not in line]

    return dest, run


def test_plain_install_then_test_installs_the_test_extras(fake_venv):
    """README order on a fresh clone: start (plain install) then test must still install pytest."""
    _, run = fake_venv
    assert any(line.endswith("-e .") for line in run("check"))
    calls = run("test", "-q")
    assert any(line.endswith("-e .[test]") for line in calls), calls
    assert calls[-1] == "-m pytest -q"


def test_test_install_satisfies_a_later_plain_start(fake_venv):
    _, run = fake_venv
    assert any(line.endswith("-e .[test]") for line in run("test"))
    assert run("check") == ["-m msapp check"]  # nothing reinstalled
    assert run("test") == ["-m pytest"]


def test_changed_dependencies_reinstall(fake_venv):
    """After a `git pull` that changes setup.cfg the next command installs again."""
    dest, run = fake_venv
    run("test")
    future = time.time() + 5
    os.utime(dest / "setup.cfg", (future, future))
    assert any(line.endswith("-e .[test]") for line in run("test"))
