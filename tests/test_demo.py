"""`./ms.sh demo --once` plays its calls into the sandbox and reports them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def test_demo_plays_four_calls_and_a_callback_task(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    env.update(PYTHONPATH=str(ROOT), MS_LOG_DIR=str(tmp_path / "logs"))
    r = subprocess.run([sys.executable, "-m", "msapp", "demo", "--once", "--pause", "0.05",
                        "--port", str(free_port()), "--sandbox-port", str(free_port())],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "holds 4 calls, 1 new customer(s), 1 order(s), 1 callback task(s) (1 closed); 9 Phone API requests" \
        in r.stdout
    assert "/sandbox/" in r.stdout and (tmp_path / "instance" / "demo" / "ms.db").exists()
