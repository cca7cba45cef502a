import json

from click.testing import CliRunner

from msapp.cli import main


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
