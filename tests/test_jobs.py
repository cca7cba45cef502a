"""The durable queue: transactions, per-key order, backoff, leases, dead jobs, concurrent consumers."""
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from msapp import clock
from msapp.clock import utcnow
from msapp.db import compiled, rawsql
from msapp.db.models import Job
from msapp.extensions import db
from msapp.queue import Defer, JobQueue, Permanent, Retry, WorkerPool, backoff, release_orphans
from msapp.state import ms
from tests.conftest import dispose, make_app, statement_work


def wait_until(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def job(job_id):
    db.session.expire_all()
    return db.session.get(Job, job_id)


def add(kind="test", key="k", payload=None, **kw):
    job_id = ms().queue.enqueue(kind, key, payload or {}, **kw)
    db.session.commit()
    return job_id


def test_enqueue_is_part_of_the_callers_transaction(ctx):
    ms().queue.enqueue("test", "k", {"a": 1})
    db.session.rollback()
    assert db.session.query(Job).count() == 0
    ms().queue.enqueue("test", "k", {"a": 1})
    db.session.commit()
    assert db.session.query(Job).count() == 1


def test_jobs_of_one_key_run_in_order_other_keys_are_not_held(ctx):
    q = ms().queue
    a1, a2, b1 = add(key="A"), add(key="A"), add(key="B")
    first = q.claim()
    assert first.id == a1
    assert q.claim().id == b1  # A2 waits for A1; B is independent
    assert q.claim() is None
    q.complete(first)
    assert q.claim().id == a2


def test_dead_job_does_not_block_its_successors(ctx):
    q = ms().queue
    a1, a2 = add(key="A", max_attempts=1), add(key="A")
    q.fail(q.claim(), RuntimeError("boom"))
    assert job(a1).status == "dead"
    assert q.claim().id == a2


def test_a_retried_older_dead_job_waits_for_the_running_one(ctx):
    """Retrying a dead job from the admin must not run two jobs of one call at once."""
    q = ms().queue
    a1, a2 = add(key="A", max_attempts=1), add(key="A")
    q.fail(q.claim(), RuntimeError("boom"))
    running = q.claim()
    assert running.id == a2
    assert q.retry_dead(a1)
    assert q.claim() is None  # a1 is earlier, but a2 is running: nobody else of key A runs now
    q.complete(running)
    assert q.claim().id == a1


def test_outside_failures_live_until_the_horizon_not_max_attempts(ctx):
    from msapp import clock

    q = ms().queue
    jid = add(max_attempts=2)
    for _ in range(5):  # far more runs than max_attempts: MoySklad unreachable is not our fault
        db.session.query(Job).filter_by(id=jid).update({"run_at": utcnow()})
        db.session.commit()
        assert q.fail(q.claim(), Retry(None, "HTTP 503")) == "pending"
    clock.advance(q.retry_horizon.total_seconds() + 1)
    db.session.query(Job).filter_by(id=jid).update({"run_at": utcnow()})
    db.session.commit()
    assert q.fail(q.claim(), Defer(5.0, "breaker open")) == "dead"
    assert "retry horizon" in job(jid).last_error
    other = add(key="other", max_attempts=2)
    for expected in ("pending", "dead"):  # our own faults still stop after max_attempts
        db.session.query(Job).filter_by(id=other).update({"run_at": utcnow()})
        db.session.commit()
        assert q.fail(q.claim(), KeyError("bug")) == expected


def test_failure_backs_off_exponentially_with_jitter(ctx):
    q = ms().queue
    jid = add()
    waits = []
    for attempt in range(1, 5):
        db.session.query(Job).filter_by(id=jid).update({"run_at": utcnow()})
        db.session.commit()
        claimed = q.claim()
        assert claimed.attempts == attempt
        before = utcnow()
        q.fail(claimed, ConnectionError("refused"))
        waits.append((job(jid).run_at - before).total_seconds())
        assert job(jid).status == "pending" and "refused" in job(jid).last_error
    for attempt, wait in enumerate(waits, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 - 0.05 <= wait <= ceiling + 0.05
    assert all(0.5 * min(300, 2 ** (n - 1)) <= backoff(n) <= min(300, 2 ** (n - 1)) for n in range(1, 20))


def test_handler_can_ask_for_a_wait(ctx):
    q = ms().queue
    jid = add()
    before = utcnow()
    q.fail(q.claim(), Retry(30, "429 from MoySklad"))
    wait = (job(jid).run_at - before).total_seconds()
    assert 30 <= wait <= 33.5 and job(jid).attempts == 1


def test_defer_is_not_an_attempt(ctx):
    q = ms().queue
    jid = add()
    q.fail(q.claim(), Defer(0.5))
    assert job(jid).attempts == 0 and job(jid).status == "pending"
    assert q.claim() is None  # not due yet


def test_dead_after_last_attempt_and_retry_from_admin(ctx):
    q = ms().queue
    jid = add(max_attempts=2)
    q.fail(q.claim(), RuntimeError("first"))
    db.session.query(Job).filter_by(id=jid).update({"run_at": utcnow()})
    db.session.commit()
    q.fail(q.claim(), RuntimeError("second Lognex-Phone-Auth-Token: abcdef123"))
    dead = job(jid)
    assert dead.status == "dead" and "second" in dead.last_error and "abcdef123" not in dead.last_error
    assert q.claim() is None
    assert q.retry_dead(jid, enterprise_number="other") is False  # another enterprise's job
    assert q.retry_dead(jid) is True
    assert q.retry_dead(jid) is False  # no longer dead
    again = q.claim()
    assert again.id == jid and again.attempts == 1


def test_permanent_error_is_dead_at_once(ctx):
    q = ms().queue
    jid = add()
    q.fail(q.claim(), Permanent("401 bad key"))
    assert job(jid).status == "dead" and job(jid).attempts == 1


def test_unknown_kind_is_dead(ctx):
    q = ms().queue
    jid = add(kind="nobody-handles-this")
    assert q.run_one(q.claim()) == "dead"
    assert "no handler" in job(jid).last_error


def test_expired_lease_is_taken_again_and_late_finish_is_ignored(ctx):
    crashed = JobQueue(lease_seconds=60, worker_id="crashed")
    rescuer = JobQueue(lease_seconds=30, worker_id="rescuer")
    jid = add()
    taken = crashed.claim()
    assert taken.id == jid and rescuer.claim() is None
    clock.advance(61)  # the crashed process's lease runs out
    again = rescuer.claim()
    assert again.id == jid and again.attempts == 2
    crashed.complete(taken)  # the "dead" process wakes up: its finish must not count
    assert job(jid).status == "running" and job(jid).locked_by == "rescuer"
    rescuer.complete(again)
    assert job(jid).status == "done"


def test_restart_releases_its_own_orphans_at_once(ctx):
    q = JobQueue(lease_seconds=3600, worker_id="host:8023")
    jid = add()
    q.claim()
    assert ms().queue.claim() is None  # lease still valid
    assert release_orphans(JobQueue(worker_id="host:8023")) == 1
    assert job(jid).status == "pending"
    assert ms().queue.claim().id == jid


def test_pool_runs_jobs_in_per_key_order(ctx):
    seen, lock = [], threading.Lock()

    def handler(j):
        time.sleep(0.002)
        with lock:
            seen.append((j.key, j.payload["n"]))

    q = ms().queue
    q.register("test", handler)
    for n in range(40):
        q.enqueue("test", f"call-{n % 4}", {"n": n}, enterprise_number=f"e{n % 2}")
    db.session.commit()
    pool = WorkerPool(ctx, q, 4, idle_poll=0.05)
    pool.start()
    try:
        deadline = time.time() + 20
        while len(seen) < 40 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pool.stop()
    assert len(seen) == 40
    for key in {k for k, _ in seen}:
        ns = [n for k, n in seen if k == key]
        assert ns == sorted(ns)
    assert db.session.query(Job).filter(Job.status != "done").count() == 0


def test_slow_enterprise_does_not_hold_all_workers(ctx):
    release = threading.Event()
    done_fast = []

    def handler(j):
        if j.enterprise_number == "slow":
            release.wait(10)
        else:
            done_fast.append(j.id)

    q = ms().queue
    q.register("test", handler)
    for n in range(8):
        q.enqueue("test", f"slow-{n}", {}, enterprise_number="slow")
    for n in range(5):
        q.enqueue("test", f"fast-{n}", {}, enterprise_number="fast")
    db.session.commit()
    pool = WorkerPool(ctx, q, 4, idle_poll=0.05)
    pool.start()
    try:
        deadline = time.time() + 10
        while len(done_fast) < 5 and time.time() < deadline:
            time.sleep(0.05)
        assert len(done_fast) == 5  # while every slow job is still blocked
    finally:
        release.set()
        pool.stop()


def test_two_consumers_never_run_one_job_twice(db_url, tmp_path):
    apps = [make_app(db_url, tmp_path / f"p{i}") for i in range(2)]
    runs, lock = [], threading.Lock()

    def handler_for(name):
        def handler(j):
            with lock:
                runs.append((name, j.id))
        return handler

    with apps[0].app_context():
        q = ms().queue
        for n in range(120):
            q.enqueue("test", f"key-{n}", {"n": n})
        db.session.commit()
    pools = []
    for i, app in enumerate(apps):
        app.extensions["ms"].queue.register("test", handler_for(f"p{i}"))
        pool = WorkerPool(app, app.extensions["ms"].queue, 3, idle_poll=0.02)
        pools.append(pool)
    for pool in pools:
        pool.start()
    deadline = time.time() + 60
    while len(runs) < 120 and time.time() < deadline:
        time.sleep(0.05)
    for pool in pools:
        pool.stop()
    ids = [jid for _, jid in runs]
    assert len(ids) == 120 and len(set(ids)) == 120
    assert {name for name, _ in runs} == {"p0", "p1"}  # both really consumed
    with apps[0].app_context():
        assert db.session.query(Job).filter(Job.status == "done").count() == 120
    for app in apps:
        dispose(app)


def test_stats(ctx):
    add()
    jid = add(key="other", max_attempts=1)
    q = ms().queue
    db.session.query(Job).filter_by(id=jid).update({"created_at": utcnow() - timedelta(seconds=5)})
    db.session.commit()
    stats = q.stats()
    assert stats["depth"] == 2 and stats["oldest_pending_age_seconds"] >= 5 and stats["dead"] == 0


def test_stats_count_by_status_through_the_index_never_reading_the_done_jobs(ctx):
    """/readyz and /metrics poll stats() while the event path runs: each figure is a search by status
    (ix_ms_jobs_due, or the partial index of unfinished jobs); a month of done jobs is never walked (it
    was: 120-190 ms at 1 M jobs on SQLite, inside the writers' lock)."""
    from tests.explain import plans, selects, walks_a_table

    add()
    with selects() as seen:
        assert ms().queue.stats()["depth"] == 1
    pg = db.engine.dialect.name == "postgresql"
    [(_, plan)] = plans(seen, rows=a_month_of_done_jobs)
    db.session.rollback()
    if pg:  # each figure an index search by status, or the partial index that holds no done job
        lines = plan.splitlines()
        scans = [n for n, line in enumerate(lines) if " Scan " in line]
        assert len(scans) == 3 and "Seq Scan" not in plan, plan
        assert all("ix_ms_jobs_enterprise_unfinished" in lines[n] or "Index Cond: " in "".join(lines[n + 1:n + 2])
                   for n in scans), plan
    else:
        lines = plan.splitlines()
        assert not any(walks_a_table(line) for line in lines), plan
        assert sum("ix_ms_jobs_due (status" in line for line in lines) >= 2, plan


def a_month_of_done_jobs(conn):
    """3,000 done jobs and fresh statistics (rolled back with the EXPLAIN)."""
    old = utcnow() - timedelta(days=20)
    conn.execute(Job.__table__.insert(), [{
        "kind": "test", "key": f"done-{n}", "payload": {}, "status": "done", "run_at": old, "created_at": old,
        "updated_at": old} for n in range(3000)])
    conn.execute(text("ANALYZE ms_jobs"))


def test_processes_share_buckets_and_take_over_at_once(pg_schema, tmp_path):
    """With several processes on one PostgreSQL each enterprise's jobs go to one of them at a time (its
    bucket's advisory lock), the buckets are spread over the processes, and a process that goes away
    leaves its buckets to the others at their next tick."""
    from msapp.queue.ownership import BUCKETS, PgOwnership, bucket_of

    apps = [make_app(pg_schema.url, tmp_path / f"p{i}") for i in range(2)]
    owners = []
    try:
        for i, app in enumerate(apps):
            with app.app_context():
                ms().queue.worker_id = f"host:{8023 + i}"
                owner = PgOwnership(ms().queue, set)
                owner.start()
                ms().queue.ownership = owner
                owners.append(owner)
        for _ in range(2):  # each sees the other and settles on its share
            for app, owner in zip(apps, owners):
                with app.app_context():
                    owner.tick()
        mine = [set(o.claimable()) for o in owners]
        assert not mine[0] & mine[1] and len(mine[0] | mine[1]) == BUCKETS
        assert BUCKETS / 4 < len(mine[0]) < BUCKETS * 3 / 4  # spread, not one process owning everything

        def enterprise_in(buckets):
            return next(f"E{n}" for n in range(10_000) if bucket_of(f"E{n}") in buckets)

        e0, e1 = enterprise_in(mine[0]), enterprise_in(mine[1])
        with apps[0].app_context():
            for n in range(3):
                ms().queue.enqueue("test", f"{e0}-{n}", {}, enterprise_number=e0)
                ms().queue.enqueue("test", f"{e1}-{n}", {}, enterprise_number=e1)
            db.session.commit()
            assert {ms().queue.claim().enterprise_number for _ in range(3)} == {e0}
            assert ms().queue.claim() is None  # never e1's jobs while the other process owns them
        with apps[1].app_context():
            running = ms().queue.claim()
            assert running.enterprise_number == e1
        with apps[1].app_context():
            owners[1].stop()  # process 1 goes away (its locks end with its connection)
            assert ms().queue.claim() is None
        with apps[0].app_context():
            owners[0].tick()
            assert set(owners[0].claimable()) == set(range(BUCKETS))
            assert ms().queue.claim().enterprise_number == e1
    finally:
        for owner in owners:
            owner.stop()
        for app in apps:
            dispose(app)


def test_a_worker_back_from_a_job_claims_again_only_if_work_may_wait(ctx):
    """A claim that finds nothing costs a write transaction: alone (SQLite, or the only live process on
    PostgreSQL) a worker claims again at once only when a job was announced that no claim has taken;
    while another process is alive, always (its jobs are announced by no notify here)."""
    q = ms().queue

    class Owner:  # what the queue asks of ownership.PgOwnership
        alone = True

        def claimable(self):
            return frozenset(range(256))

        def run(self, _fn):  # the claim itself, without the ownership's connection
            with rawsql.transaction() as tx:
                return q._claim(tx, frozenset(), None)

    for owner in (None, Owner()):
        q.ownership = owner
        since = q.generation
        assert not q.worth_claiming(since)  # nothing announced since the last claim
        add(key=f"k{owner}")
        q.notify()
        assert q.worth_claiming(since) and q.worth_claiming(q.generation)  # announced, not taken yet
        assert q.claim() is not None
        assert not q.worth_claiming(q.generation)  # taken: the next job will be announced
        assert q.claim() is None and not q.worth_claiming(q.generation)
        if owner is not None:
            owner.alone = False
            assert q.worth_claiming(q.generation)  # another process's jobs come without a notify here
    q.ownership = None


def test_a_job_behind_one_running_here_wakes_no_worker_and_runs_when_it_ends(ctx, monkeypatch):
    """A job whose key has a job running in this process cannot be claimed before that one ends: waking an
    idle worker for it bought a claim that found nothing. The worker back from the running job claims it
    at once (not at the idle poll); a job of another key still wakes an idle worker at once."""
    q, started, gate, done = ms().queue, threading.Event(), threading.Event(), []

    def handler(j):
        if j.payload["n"] == 0:
            started.set()
            gate.wait(10)
        done.append(j.payload["n"])

    q.register("test", handler)
    pool = WorkerPool(ctx, q, 2, idle_poll=2.5)  # an idle poll longer than the test waits
    pool.start()
    resting, real_wait = [], q.wait
    monkeypatch.setattr(q, "wait", lambda *a: resting.append(1) or real_wait(*a))
    signalled, real_notify = [], q._wakeup.notify
    monkeypatch.setattr(q._wakeup, "notify", lambda *a: signalled.append(1) or real_notify(*a))
    try:
        assert wait_until(lambda: len(resting) >= 2)  # both workers claimed, found nothing, and rest
        add(key="call-1", payload={"n": 0})
        q.notify(key="call-1")
        assert started.wait(5)
        signalled.clear()
        add(key="call-1", payload={"n": 1})
        q.notify(key="call-1")
        assert signalled == []  # that notify woke no idle worker: the busy one takes the job when back
        gate.set()
        deadline = time.time() + 1
        while done != [0, 1] and time.time() < deadline:
            time.sleep(0.01)
        assert done == [0, 1]  # run by the worker back from the first, well before the idle poll
        add(key="call-2", payload={"n": 2})
        q.notify(key="call-2")
        deadline = time.time() + 1
        while 2 not in done and time.time() < deadline:
            time.sleep(0.01)
        assert done == [0, 1, 2]
        stopping = time.monotonic()
        pool.stop()  # its workers, just back from their jobs, do not sleep out their idle poll
        assert time.monotonic() - stopping < 1.0
    finally:
        gate.set()
        pool.stop()


def test_an_event_reaching_another_process_wakes_the_owner_at_once(pg_schema, tmp_path):
    """The job an event queued in one process is announced (NOTIFY) to the process owning its bucket,
    which wakes a worker at once instead of at its idle poll; so is one queued in the session (a
    click-to-call, a task), but not one that waits a delay; a bucket it does not own wakes nobody there,
    and a process alone sends nothing."""
    from msapp.db.models import Enterprise
    from msapp.queue.ownership import PgOwnership, bucket_of
    from msapp.queue.wakeups import Listener
    from msapp.services import events

    apps = [make_app(pg_schema.url, tmp_path / f"p{i}") for i in range(2)]
    owners, stop = [], threading.Event()
    try:
        for i, app in enumerate(apps):
            with app.app_context():
                ms().queue.worker_id = f"host:{8023 + i}"
                owners.append(PgOwnership(ms().queue, set))
                owners[-1].start()
                ms().queue.ownership = owners[-1]
        for _ in range(2):
            for app, owner in zip(apps, owners):
                with app.app_context():
                    owner.tick()
        numbers = [next(f"E{n}" for n in range(10_000) if bucket_of(f"E{n}") in set(o.claimable())) for o in owners]
        # process 0's too, in another bucket: its notifications tell themselves apart from numbers[0]'s
        marker = next(f"M{n}" for n in range(10_000) if bucket_of(f"M{n}") in set(owners[0].claimable())
                      and bucket_of(f"M{n}") != bucket_of(numbers[0]))
        with apps[0].app_context():
            for number in [*numbers, marker]:
                db.session.add(Enterprise(number=number, name=number, integrations_config={}))
            db.session.commit()
            listener = Listener(ms().queue, owners[0], db.engine.url)
        heard, real_wake = [], listener._wake
        listener._wake = lambda payloads: heard.extend(payloads) or real_wake(payloads)
        threading.Thread(target=listener.run, args=(stop,), daemon=True).start()
        assert listener.listening.wait(10)
        woken = apps[0].extensions["ms"].queue

        def event_in_process_1(number, uid):
            with apps[1].app_context():
                body = {"enterprise_number": number, "unique_id": uid, "direction": "in", "phone": "+375296254070",
                        "event_type": "dial", "extensions": ["150"]}
                events.accept(events.parse(body, None, {}), ms().queue, "event.call-event", body)

        before = woken.generation
        event_in_process_1(numbers[1], "theirs")  # process 1's own bucket: nothing for process 0
        event_in_process_1(numbers[0], "mine")
        deadline = time.time() + 5
        while woken.generation == before and time.time() < deadline:
            time.sleep(0.01)
        assert woken.generation == before + 1
        with apps[0].app_context():
            assert woken.claim().key == f"call:{numbers[0]}:mine"
        with apps[1].app_context():  # a job queued in the session (click-to-call, a task), not by an event
            ms().queue.enqueue("test", "click", {}, enterprise_number=numbers[0])
            ms().queue.enqueue("test", "later", {}, enterprise_number=numbers[0], delay=60)  # not due: silent
            db.session.commit()
        assert wait_until(lambda: woken.generation >= before + 2)
        mine, theirs = str(bucket_of(numbers[0])), str(bucket_of(marker))

        def quiet_until_marked(start: int, uid: str) -> bool:
            """Nothing of numbers[0]'s bucket heard since `start`: PostgreSQL delivers notifications in
            commit order, so once a marker sent after the silent step is heard, anything it sent was too."""
            event_in_process_1(marker, uid)
            assert wait_until(lambda: theirs in heard[start:])
            return mine not in heard[start:]

        start = len(heard)
        with apps[1].app_context():  # a job not due yet: silent
            ms().queue.enqueue("test", "later-2", {}, enterprise_number=numbers[0], delay=60)
            db.session.commit()
        assert quiet_until_marked(start, "marker-1")
        live, start = owners[1].live, len(heard)
        owners[1].live = [owners[1].worker_id]  # alone: no NOTIFY at all
        event_in_process_1(numbers[0], "alone")
        owners[1].live = live
        assert quiet_until_marked(start, "marker-2")
    finally:
        stop.set()
        for owner in owners:
            owner.stop()
        for app in apps:
            dispose(app)


def test_a_process_without_workers_announces_every_job_its_events_queue(pg_schema, tmp_path):
    """`MS_WORKERS=0` (HTTP only) on PostgreSQL: the process owns no bucket and no other process sees it,
    so the one working its jobs believes itself alone and, without a NOTIFY, ran each worker's next job
    at the idle poll (2 jobs a second per worker). Every job its events queue is announced."""
    import select as select_mod

    import psycopg2

    from msapp.db.models import Enterprise
    from msapp.queue.ownership import PgOwnership, bucket_of
    from msapp.services import events

    app = make_app(pg_schema.url, tmp_path)
    listen = psycopg2.connect(pg_schema.url)
    listen.autocommit = True
    try:
        with app.app_context():
            pool = WorkerPool(app, ms().queue, 0)
            pool.ownership = PgOwnership(ms().queue, set)
            pool.start()
            assert ms().queue.ownership is None and ms().queue.announce_to
            listen.cursor().execute(f'LISTEN "{ms().queue.announce_to}"')
            db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
            db.session.commit()
            for n in range(2):
                body = {"enterprise_number": "0367", "unique_id": f"u-{n}", "direction": "in",
                        "phone": "+375296254070", "event_type": "dial", "extensions": ["150"]}
                events.accept(events.parse(body, None, {}), ms().queue, "event.call-event", body)
            heard, deadline = [], time.time() + 5
            while len(heard) < 2 and time.time() < deadline:
                select_mod.select([listen], [], [], 0.2)
                listen.poll()
                heard += [note.payload for note in listen.notifies]
                listen.notifies.clear()
            assert heard == [str(bucket_of("0367"))] * 2
            pool.stop()
    finally:
        listen.close()
        dispose(app)


def test_a_second_process_on_one_sqlite_file_is_refused(tmp_path):
    from msapp.queue.ownership import SecondProcess, SqliteOwnership

    first, second = SqliteOwnership(str(tmp_path / "ms.db")), SqliteOwnership(str(tmp_path / "ms.db"))
    first.start()
    try:
        with pytest.raises(SecondProcess, match="SQLite is for one process"):
            second.start()
    finally:
        first.stop()
    second.start()  # free again once the first has stopped
    second.stop()


def _a_call(unique_id: str) -> int:
    """A call.sync job for a new call (as an event queues it); returns the call's id."""
    from msapp.db.models import Enterprise
    from msapp.services import events

    if db.session.get(Enterprise, "0367") is None:
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    body = {"enterprise_number": "0367", "unique_id": unique_id, "direction": "in", "phone": "+375296254070",
            "event_type": "dial", "extensions": ["150"]}
    return events.accept(events.parse(body, None, {}), ms().queue, "event.call-event", body)


def test_a_claim_reads_its_jobs_subject_with_it(ctx, monkeypatch):
    """A sync's claim brings its call (every column the sync reads), in the claim's one execute on
    PostgreSQL; other kinds get none (a value under the same key is never read as an id), and a job whose
    call is gone, or whose id is not one, gets None (the handler reads, finds none)."""
    from msapp.db.models import Call
    from msapp.services.callflow import SUBJECT

    call_id = _a_call("s-1")
    gone = _a_call("s-2")
    db.session.query(Call).filter_by(id=gone).delete()
    db.session.commit()
    add(kind="test", key="other", payload={"call_id": "f5e15329-54a0-4e5f"})  # not a call's id: never cast
    add(kind="call.sync", key="bad", payload={"call_id": "1; DROP"})
    sent, real = [], rawsql.Tx._send
    monkeypatch.setattr(rawsql.Tx, "_send", lambda self, sql, params: sent.append(compiled.expanded(sql)) or
                        real(self, sql, params))
    first = ms().queue.claim()
    assert first.kind == "call.sync" and first.subject["id"] == call_id and first.subject["unique_id"] == "s-1"
    assert set(first.subject) == set(SUBJECT.columns) and first.subject["extensions"] == ["150"]
    assert first.subject["created_at"] is not None and first.subject["create_attempted"] is False
    if db.engine.dialect.name == "postgresql":
        claim = [sql for sql in sent if "set_config" in sql]
        assert len(claim) == 1 and "FROM ms_jobs LEFT OUTER JOIN" in claim[0].replace("\n", " ")
        assert not [sql for sql in sent if "ms_calls" in sql and sql not in claim]
    second, third, fourth = ms().queue.claim(), ms().queue.claim(), ms().queue.claim()
    assert second.subject is None and second.payload == {"call_id": gone}
    assert third.kind == "test" and third.subject is None
    assert fourth.key == "bad" and fourth.subject is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: nothing commits while a claim runs
def test_the_subject_is_read_after_the_job_is_taken(ctx):
    """PostgreSQL: the subject is read by a statement after the claim's UPDATE, with a snapshot of its own.
    A change to the call committed while the claim runs (here: a trigger holds the UPDATE until the test
    has committed it) is in the row the handler gets; read in the UPDATE's own statement, it was not."""
    import psycopg2

    from msapp.db.models import Call

    call_id = _a_call("r-1")
    db.session.execute(db.text(
        "CREATE FUNCTION hold_claim() RETURNS trigger AS $$ BEGIN PERFORM pg_advisory_lock(7041);"
        " PERFORM pg_advisory_unlock(7041); RETURN NEW; END $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER hold_claim BEFORE UPDATE ON ms_jobs FOR EACH ROW EXECUTE FUNCTION hold_claim()"))
    db.session.commit()
    other = psycopg2.connect(str(db.engine.url.render_as_string(hide_password=False)).replace("+psycopg2", ""))
    schema = db.session.execute(db.text("SELECT current_schema()")).scalar()
    db.session.commit()
    try:
        with other.cursor() as cur:
            cur.execute(f'SET search_path TO "{schema}"')
            cur.execute("SELECT pg_advisory_lock(7041)")
        other.commit()
        claimed = []
        worker = threading.Thread(target=lambda: claimed.append(_claim_in(ctx)))
        worker.start()
        time.sleep(0.5)  # the claim has begun: its UPDATE waits in the trigger
        with other.cursor() as cur:
            cur.execute("UPDATE ms_calls SET answered_extension = '150' WHERE id = %s", (call_id,))
        other.commit()
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(7041)")
        other.commit()
        worker.join(10)
        assert claimed and claimed[0].subject["answered_extension"] == "150"
    finally:
        other.close()
    assert db.session.get(Call, call_id) is not None


def _claim_in(app):
    with app.app_context():
        return ms().queue.claim()


def _claim_work() -> int:
    """What one claim costs the database (`statement_work`), rolled back."""
    from msapp.queue.claims import claim_statements, pg_array

    now, name = utcnow(), db.engine.dialect.name
    return statement_work(claim_statements(name, {}).take, {
        "_now": now, "_by": "w", "_lease": now + timedelta(seconds=60), "_retaken": "r",
        "_busy": pg_array([]) if name == "postgresql" else "[]"})


def test_a_claims_cost_does_not_grow_with_the_backlog(ctx):
    """A claim walks the due jobs in its order and stops at the first it may take: with 2,000 due jobs
    it costs what it does with 20 (a backlog after a MoySklad outage drains in linear time). The pick
    over pending and lease-expired jobs in one OR read and sorted every due job, per claim, on both
    databases; on PostgreSQL with statistics never gathered (here: none), NOT EXISTS became an anti-join
    that read every waiting job per candidate."""
    def backlog(count: int, start: int) -> None:
        for i in range(start, start + count):
            ms().queue.enqueue("test", f"backlog-{i}", {}, enterprise_number="100")
        db.session.commit()

    backlog(20, 0)
    small = _claim_work()
    backlog(1980, 20)
    large = _claim_work()
    assert large < 2 * small, (small, large)


def test_an_expired_lease_is_taken_before_the_waiting_backlog(ctx):
    """The job of a process that died goes first: it has waited its lease out already."""
    crashed = JobQueue(lease_seconds=0.2, worker_id="crashed")
    lost = add(key="lost")
    assert crashed.claim().id == lost
    clock.advance(1)  # its lease runs out
    later = [add(key=f"waiting-{i}") for i in range(3)]
    rescuer = JobQueue(lease_seconds=30, worker_id="rescuer")
    assert [rescuer.claim().id for _ in range(4)] == [lost, *later]


def test_a_backlog_announced_by_no_notify_drains_without_idle_polls(ctx, monkeypatch):
    """Retries coming due and jobs released after an outage come with no notify. A claim says whether
    another job was due as it took its own; the worker back from it claims again at once, and rests only
    when the claim said none was (before: one job per worker per idle poll, 8 jobs/s for a process)."""
    q, done = ms().queue, []
    q.register("test", lambda j: done.append(j.payload["n"]))
    for n in range(10):
        add(key=f"backlog-{n}", payload={"n": n})  # committed, not announced
    pool = WorkerPool(ctx, q, 1, idle_poll=2.5)  # an idle poll longer than the test waits
    claims, real = [], q.claim
    monkeypatch.setattr(q, "claim", lambda *a: claims.append(1) or real(*a))
    resting, real_wait = threading.Event(), q.wait
    monkeypatch.setattr(q, "wait", lambda *a: (resting.set() if len(done) == 10 else None) or real_wait(*a))
    try:
        pool.start()
        assert resting.wait(2)  # all ten ran, and the worker went to rest
        assert done == list(range(10))
        assert len(claims) == 10  # the last claim said no more were due: it rested without an empty claim
    finally:
        pool.stop()


def test_a_backlog_that_has_to_wait_is_not_rushed(ctx, monkeypatch):
    """A job deferred (an open breaker, our own pacing) or failed says the jobs due behind it would wait
    too: its worker rests as before rather than claim and defer each of them at once."""
    q, runs = ms().queue, []

    def handler(j):
        runs.append(j.payload["n"])
        raise Defer(60, "MoySklad unavailable")

    q.register("test", handler)
    for n in range(5):
        add(key=f"waiting-{n}", payload={"n": n})
    pool = WorkerPool(ctx, q, 1, idle_poll=2.5)
    resting, real_wait = threading.Event(), q.wait
    monkeypatch.setattr(q, "wait", lambda *a: (resting.set() if runs else None) or real_wait(*a))
    try:
        pool.start()
        assert resting.wait(5)  # the worker ran one job and went to rest
        assert runs == [0]
    finally:
        pool.stop()
