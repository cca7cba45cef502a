"""End-to-end harness: the real service (waitress, worker pool) on a free port, pointed at the sandbox."""
from __future__ import annotations

import time

import requests

from msapp.db.models import Enterprise
from msapp.extensions import db
from tests.conftest import dispose, make_app

DEFAULT_CFG = {"enabled": True, "timezone": "Europe/Minsk", "default_region": "BY",
               "incoming_call_actions": {"create_customers": False, "create_orders": "none"}}


class Service:
    def __init__(self, db_url, tmp_path, sandbox, workers=4, **overrides):
        from msapp.web.server import make_server, serve_in_thread

        self.sandbox = sandbox
        self.app = make_app(db_url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url, MS_JSON_API_URL=sandbox.json_url,
                            MS_WORKERS=workers, **overrides)
        self.server = make_server(self.app, "127.0.0.1", 0, threads=8)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = serve_in_thread(self.server)
        self.app.extensions["ms"].pool.start()
        self.http = requests.Session()

    def add_enterprise(self, number="0367", account="demo", **cfg):
        keys = self.sandbox.state.keys().get(account) or self.sandbox.state.add_account(account) and \
            self.sandbox.state.keys()[account]
        with self.app.app_context():
            db.session.add(Enterprise(number=number, name=f"Co {number}", secret="client-secret-1",
                                      integrations_config={"other": {"keep": True}}))
            db.session.commit()
            merged = {**DEFAULT_CFG, "integration_code": keys["phone_api_key"],
                      "api_token": keys["json_api_token"], **cfg}
            self.app.extensions["ms"].configs.save(number, merged)
        return number

    def webhook_url(self, number="0367"):
        """The enterprise's click-to-call URL, on this server."""
        with self.app.app_context():
            url = self.app.extensions["ms"].configs.read(number)["webhook_url"]
        return url.replace("https://bot.example.by", self.url)

    def configure(self, number="0367", **cfg):
        with self.app.app_context():
            self.app.extensions["ms"].configs.save(number, cfg)

    def event(self, path="call-event", **body):
        body.setdefault("enterprise_number", "0367")
        return self.http.post(f"{self.url}/internal/ms/{path}", json=body, timeout=10)

    def wait_idle(self, timeout=30.0, serve_backoff=False):
        """Wait until no job is pending or running; with `serve_backoff`, keep making waiting jobs due
        (for after injected faults were stopped: a job failing just then must not sleep out its backoff)."""
        deadline = time.time() + timeout
        q = self.app.extensions["ms"].queue
        while time.time() < deadline:
            with self.app.app_context():
                if q.stats()["depth"] == 0:
                    return
            if serve_backoff:
                self.release_waiting()
            time.sleep(0.05)
        from msapp.clock import utcnow

        raise AssertionError(f"jobs still pending after {timeout}s (project clock {utcnow()}): {self.active_jobs()}")

    def active_jobs(self) -> list:
        """The pending and running jobs as rows (what a wait that timed out was waiting for)."""
        from sqlalchemy import select

        from msapp.db.models import Job

        with self.app.app_context():  # the clock is the project's: run_at and lease_until are in its time
            rows = db.session.execute(select(Job.id, Job.kind, Job.key, Job.status, Job.attempts, Job.run_at,
                                             Job.lease_until, Job.locked_by, Job.last_error)
                                      .where(Job.status.in_(("pending", "running"))).order_by(Job.id)).all()
            db.session.commit()
            return [dict(r._mapping) for r in rows]

    def release_waiting(self):
        """Serve every pending job's wait at once (as if the clock jumped past its backoff).

        Tests that inject faults stop them first, then call this, so that no test bets on random jitter.
        """
        from sqlalchemy import update

        from msapp.clock import utcnow
        from msapp.db.models import Job

        with self.app.app_context():
            db.session.execute(update(Job).where(Job.status == "pending").values(run_at=utcnow()))
            db.session.commit()
        self.app.extensions["ms"].queue.notify(everyone=True)

    def stop(self):
        self.server.close()
        dispose(self.app)


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def phone_requests(sandbox, account="demo", since=0):
    log = sandbox.state.log[since:]
    return [r for r in log if r["api"] == "phone" and r["account"] == account]


def calls(sandbox, account="demo"):
    return list(sandbox.state.accounts[account].calls.values())


def shown_cards(sandbox, account="demo"):
    return {ext: sorted(ids) for ext, ids in sandbox.state.accounts[account].cards.items() if ids}


class FakeOriginate:
    """The PBX's originate service: records each GET and answers a chosen status."""

    def __init__(self, status=200, delay=0.0):
        from flask import Flask, request

        from msapp.web.server import make_server, serve_in_thread

        self.requests, self.status, self.delay = [], status, delay
        app = Flask("fake-originate")

        @app.get("/api/makecallexternal")
        def originate():
            self.requests.append(request.args.to_dict(flat=False))
            if self.delay:
                time.sleep(self.delay)
            return ("ok", self.status)

        self.server = make_server(app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}/api/makecallexternal"
        serve_in_thread(self.server)

    def stop(self):
        self.server.close()


def service_env(db_url: str, port: int, home, workers: int, **settings: str) -> dict:
    """The environment of a real `ms serve` with its instance and log directories under `home`."""
    from msapp.tools.bench.common import service_env as env_of

    return env_of(db_url, port, str(home / "instance"), str(home / "logs"), workers, **settings)


def start_process(env: dict, port: int, command=None, cwd=None):
    """`python -m msapp serve` (or `command`, from `cwd`) as a real process with `env`; returns it once
    /healthz answers."""
    from msapp.tools.bench.common import start_service

    return start_service(env, port, command, cwd)


def frozen_objects(metrics_page: str) -> float:
    """The gauge `ms_gc_frozen_objects` of a /metrics page: what startup froze out of the collector's walks."""
    (line,) = [line for line in metrics_page.splitlines() if line.startswith("ms_gc_frozen_objects ")]
    return float(line.split()[1])
