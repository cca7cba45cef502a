"""Several real service processes on one PostgreSQL (docs/design.md 7, 10): enterprises spread over them,
SIGKILL of one -> its enterprises' cards resume <= 3 s later and its calls in flight complete <= 5 s
later; a process whose database connection is killed stops before another takes over."""
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests

from msapp.db.models import Enterprise
from msapp.extensions import db
from msapp.queue.ownership import balanced, bucket_of, snapshot
from tests.conftest import PG_URL, dispose, free_port, make_app, require_pg
from tests.service_harness import calls, service_env, start_process, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]
CALLER = "+375296254070"
ACCOUNTS = ["demo", "acc-b", "acc-c", "acc-d", "acc-e", "acc-f"]


class Cluster:
    """N `python -m msapp serve` processes on one PostgreSQL schema, and one enterprise per account,
    numbered so that each process owns some of them (numbers are picked once the buckets are shared)."""

    def __init__(self, schema, tmp_path, sandbox, processes=2):
        self.sandbox, self.schema = sandbox, schema
        app = make_app(schema.url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url)
        dispose(app)
        self.procs, self.urls, self.ports = [], [], []
        for n in range(processes):
            port = free_port()
            env = service_env(schema.url, port, tmp_path / f"p{n}", workers=4, MS_PHONE_API_URL=sandbox.phone_url)
            self.procs.append(start_process(env, port))
            self.urls.append(f"http://127.0.0.1:{port}/internal/ms/call-event")
            self.ports.append(str(port))
        assert wait_for(lambda: self.settled(processes), timeout=10)
        owner_of = self.owners()
        per_process = {port: [] for port in self.ports}
        for n in range(700, 10_000):
            port = owner_of[bucket_of(str(n))]
            if len(per_process[port]) < len(ACCOUNTS) // processes:
                per_process[port].append(str(n))
            if all(len(v) == len(ACCOUNTS) // processes for v in per_process.values()):
                break
        numbers = [num for group in zip(*per_process.values()) for num in group]
        self.numbers = {}
        app = make_app(schema.url, tmp_path, MS_PHONE_API_URL=sandbox.phone_url)
        with app.app_context():
            for account, number in zip(ACCOUNTS, numbers):
                keys = sandbox.state.keys().get(account) or (sandbox.state.add_account(account) and
                                                             sandbox.state.keys()[account])
                db.session.add(Enterprise(number=number, name=account, integrations_config={}))
                db.session.commit()
                app.extensions["ms"].configs.save(number, {"enabled": True, "integration_code": keys["phone_api_key"]})
                self.numbers[account] = number
        dispose(app)
        self.owned_by = {account: self.ports.index(owner_of[bucket_of(num)]) for account, num in self.numbers.items()}
        self.http = requests.Session()

    def event(self, proc: int, account: str, uid: str, kind: str, **extra):
        body = {"enterprise_number": self.numbers[account], "unique_id": uid, "direction": "in", "phone": CALLER,
                "event_type": kind, **extra}
        r = self.http.post(self.urls[proc], json=body, timeout=5)
        assert r.status_code == 202, r.text

    def settled(self, count):
        """`count` live processes, and every bucket held by the process rendezvous hashing gives it to."""
        live, held = self.snapshot()
        return len(live) == count and balanced(live, held)

    def snapshot(self):
        conn = psycopg2.connect(self.schema.url)  # the URL puts the schema first on the search_path
        try:
            return snapshot(conn)
        finally:
            conn.close()

    def owners(self) -> dict:
        """bucket -> the port of the process holding it."""
        return {b: worker.rsplit(":", 1)[1] for b, worker in self.snapshot()[1].items()}

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(20)


def first_show(sandbox, account, uid):
    for row in list(sandbox.state.log):
        if row["account"] == account and row["method"] == "POST" and row["status"] == 200 and \
                uid in (row.get("body") or ""):
            return row["done"]
    return None


@pytest.fixture
def cluster(pg_schema, tmp_path, sandbox):
    require_pg()
    c = Cluster(pg_schema, tmp_path, sandbox)
    yield c
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    c.stop()


def test_enterprises_are_spread_and_survive_a_sigkill(cluster, sandbox):
    owners = cluster.owners()
    shares = [list(owners.values()).count(port) for port in cluster.ports]
    assert sum(shares) == 256 and min(shares) > 64, shares  # spread, not one process owning all
    assert set(cluster.owned_by.values()) == {0, 1}
    for account in ACCOUNTS:  # steady state: both processes carry traffic
        cluster.event(0, account, f"warm-{account}", "dial", extensions=["150"])
    assert wait_for(lambda: all(first_show(sandbox, a, f"warm-{a}") for a in ACCOUNTS), timeout=10)
    agents = {r["agent"] for r in sandbox.state.log if r["path"].endswith("/call")}
    assert len(agents) == 2, "one process did all the work while the other idled"

    # calls in flight on both processes, MoySklad slow enough that requests are under way at the kill
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 300})
    for n, account in enumerate(ACCOUNTS * 2):
        cluster.event(n % 2, account, f"fly-{n}", "dial", extensions=["150", "151"])
        cluster.event(n % 2, account, f"fly-{n}", "hangup", call_status="missed")
    time.sleep(0.2)
    killed = time.time()
    cluster.procs[0].send_signal(signal.SIGKILL)
    cluster.procs[0].wait(10)
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    for account in ACCOUNTS:  # a new call for every enterprise, on the surviving process
        cluster.event(1, account, f"after-{account}", "dial", extensions=["152"])
    assert wait_for(lambda: all(first_show(sandbox, a, f"after-{a}") for a in ACCOUNTS), timeout=10)
    blackout = max(first_show(sandbox, a, f"after-{a}") for a in ACCOUNTS) - killed
    assert blackout <= 3.0, f"first card {blackout:.2f}s after the kill"

    def in_flight_done():
        return all(any(c["externalId"] == f"fly-{n}" and c["endTime"] for c in calls(sandbox, account))
                   for n, account in enumerate(ACCOUNTS * 2))

    assert wait_for(in_flight_done, timeout=15)
    finished = time.time() - killed
    assert finished <= 5.0, f"in-flight calls completed {finished:.2f}s after the kill"
    for account in ACCOUNTS:
        ids = [c["externalId"] for c in calls(sandbox, account)]
        assert len(ids) == len(set(ids)), f"a call of {account} was created twice"
        for call in calls(sandbox, account):
            # in order; a request cut off by the kill may be repeated whole (at most that one), never reordered
            firsts = list(dict.fromkeys(e["sequence"] for e in call["events"]))
            assert firsts == sorted(firsts), "a call's events went out of order"


def test_a_process_that_loses_its_database_connection_stops_before_another_takes_over(cluster, sandbox):
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={"latency_ms": 150})
    victim_pid = cluster.procs[0].pid
    stop = time.time() + 6

    def load(n):
        account = ACCOUNTS[n % len(ACCOUNTS)]
        while time.time() < stop:
            uid = f"load-{n}-{time.time():.3f}"
            cluster.event(n % 2, account, uid, "dial", extensions=["150"])
            cluster.event(n % 2, account, uid, "hangup", call_status="missed")
            time.sleep(0.05)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, n) for n in range(4)]
        time.sleep(2.0)
        conn = psycopg2.connect(PG_URL)
        conn.autocommit = True
        with conn.cursor() as cur:  # kill the victim's ownership connection (it holds its bucket locks)
            port = cluster.urls[0].split(":")[2].split("/")[0]
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                        (f"ms-owner %:{port}",))
            assert cur.rowcount == 1
        conn.close()
        for f in futures:
            f.result()
    requests.post(f"{sandbox.url}/sandbox/api/faults", json={})
    time.sleep(6)  # let everything drain
    assert cluster.procs[0].poll() is None, "the victim process itself is alive"
    victim = f"pid {victim_pid}"
    for account in ACCOUNTS:
        rows = sorted((r for r in sandbox.state.log if r["account"] == account and r["api"] == "phone"),
                      key=lambda r: r["t"])
        # never two processes' requests for one enterprise at once
        for a, b in zip(rows, rows[1:]):
            if a["agent"] != b["agent"]:
                overlapping = [r for r in rows if r["agent"] != b["agent"] and r["t"] <= b["t"] < r["done"]]
                assert not overlapping, f"{account}: requests from two processes at once ({victim})"
        ids = [c["externalId"] for c in calls(sandbox, account)]
        assert len(ids) == len(set(ids))
    assert wait_for(lambda: cluster.settled(2), timeout=10), "the victim came back and took its share again"
