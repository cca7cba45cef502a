import json

import pytest
import requests
from click.testing import CliRunner

from msapp.cli import main
from tests.conftest import dispose, free_port, make_app
from tests.service_harness import frozen_objects, service_env, start_process


def run(app, *args, input=None):
    with app.app_context():
        return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_enterprise_lifecycle(app):
    assert run(app, "enterprise", "add", "0367", "--name", "Acme").exit_code == 0
    dup = run(app, "enterprise", "add", "0367")
    assert dup.exit_code == 1 and "already exists" in dup.output
    assert run(app, "enterprise", "set-secret", "0367", input="clientsecret42\n").exit_code == 0
    r = run(app, "enterprise", "configure", "0367", '{"enabled": true, "integration_code": "abcdefgh12345678"}')
    assert r.exit_code == 0, r.output
    listing = run(app, "enterprise", "list")
    assert "0367\tAcme\tenabled" in listing.output
    shown = run(app, "enterprise", "show", "0367")
    data = json.loads(shown.output)
    assert data["secret"] == "••••et42" and data["ms"]["integration_code"] == "••••5678"
    assert "clientsecret42" not in shown.output and "abcdefgh12345678" not in shown.output


def test_bad_input_is_one_line(app):
    assert run(app, "enterprise", "add", "bad number!").exit_code == 1
    r = run(app, "enterprise", "show", "9999")
    assert r.exit_code == 1 and "unknown enterprise" in r.output
    run(app, "enterprise", "add", "1")
    r = run(app, "enterprise", "configure", "1", '{"enabled": "yes"}')
    assert r.exit_code == 1 and "enabled" in r.output
    r = run(app, "enterprise", "configure", "1", "{not json")
    assert r.exit_code == 1 and "JSON" in r.output
    r = run(app, "enterprise", "set-secret", "1", input="has space\n")
    assert r.exit_code == 1


@pytest.mark.e2e
def test_serve_keeps_its_startup_objects_out_of_the_collectors_walks(tmp_path):
    """`ms serve` freezes what startup built (gc.freeze): a full collection, which stops every thread,
    then walks only what requests left behind (docs/benchmarks.md)."""
    db_url = f"sqlite:///{tmp_path / 'ms.db'}"
    dispose(make_app(db_url, tmp_path))
    port = free_port()
    proc = start_process(service_env(db_url, port, tmp_path, workers=1), port)
    try:
        page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(30)
    assert frozen_objects(page) > 10_000
