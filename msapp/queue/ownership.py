"""Which process works which enterprise's jobs (docs/design.md 7): one owner at a time, failover in seconds.

PostgreSQL (several processes or hosts): enterprises fall into BUCKETS buckets (crc32 of the number).
Each process holds one dedicated connection, on which it takes (in lock classes of its own schema)
- a session advisory lock of its own (worker class, a random key): "this process is alive";
- the advisory locks (bucket class, b) of the buckets it owns.
Every TICK the process reads which processes are alive (their locks in `pg_locks`), computes the
buckets it should own by rendezvous hashing over the live processes (so N processes share the work
and a join or leave moves only 1/N of it), takes the free ones and drains and releases the ones that
moved elsewhere. Claims run on that same connection and only in owned buckets: if the connection dies
(process killed, `pg_terminate_backend`, host gone), its locks go with it on the server, and the
process cannot claim again before it has reconnected. The server notices a vanished host through
TCP keepalives set on that session (about 3 s); the process itself stops claiming when its last good
heartbeat is older than FENCE seconds, so it stops before the server lets another process take over.
Jobs left running by a dead process are handed back ORPHAN_GRACE seconds after their bucket changed
hands (long enough for a cut-off process's request in flight to end, short enough for the call).

SQLite (one process with workers): an exclusive lock on a file beside the database refuses a second
process with workers. Processes without workers (`MS_WORKERS=0`, e.g. the admin face alone) take no
lock: they only answer HTTP, and the jobs they queue wait for the worker process's idle poll.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Optional

from sqlalchemy import text

from msapp.clock import utcnow
from msapp.db import compiled
from msapp.extensions import db

log = logging.getLogger("msapp.ownership")
BUCKETS = 256
TICK = 0.5
FENCE = 2.0
ORPHAN_GRACE = 3.0
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2,
             "tcp_user_timeout": 2000}
SERVER_KEEPALIVE = ("SET tcp_keepalives_idle = 1", "SET tcp_keepalives_interval = 1",
                    "SET tcp_keepalives_count = 2", "SET tcp_user_timeout = 3000")


def bucket_of(enterprise: Optional[str]) -> Optional[int]:
    return None if enterprise is None else zlib.crc32(enterprise.encode("utf-8")) % BUCKETS


def dedicated_engine(url, role: str, worker_id: str, **connect_args):
    """Unpooled connections for one of this process's own sessions (the ownership's, the listener's),
    named `<role> <worker id>` in pg_stat_activity."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool, connect_args={
        "connect_timeout": 3, "application_name": f"{role} {worker_id}"[:63], **connect_args})


def lock_classes(schema: str) -> tuple:
    """The two advisory-lock classes (workers, buckets) of the deployment living in `schema`: advisory
    locks are database-wide, so two deployments (or test schemas) in one database never meet."""
    base = zlib.crc32(f"ms-telephony:{schema}".encode()) & 0x3FFFFFFF
    return base * 2 % 0x7FFFFFFF, (base * 2 + 1) % 0x7FFFFFFF


def _score(worker: str, bucket: int) -> int:
    return zlib.crc32(f"{worker}/{bucket}".encode())


def desired_buckets(me: str, live: list) -> set:
    """Rendezvous hashing: the buckets whose highest-scoring live worker is `me`."""
    workers = sorted(set(live) | {me})
    return {b for b in range(BUCKETS) if max(workers, key=lambda w: (_score(w, b), w)) == me}


class SecondProcess(RuntimeError):
    """Another process already serves this SQLite database."""


class SqliteOwnership:
    """One process with workers per SQLite file (`serve` takes it, for the process's life): a second one
    is refused."""

    def __init__(self, database_path: str):
        self.path = database_path + ".lock"
        self._fh = None

    def start(self) -> None:
        fh = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SecondProcess(f"another ms process (pid {other}) already runs the workers of the SQLite "
                                    f"database {self.path[:-5]}; SQLite is for one process with workers (others "
                                    f"may only answer HTTP, MS_WORKERS=0), use PostgreSQL for several"
                                    ) from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def stop(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class PgOwnership:
    """Advisory-lock ownership of enterprise buckets on one dedicated PostgreSQL connection."""

    def __init__(self, queue, busy_buckets: Callable[[], set]):
        self.queue = queue  # its worker_id names this process (set by `serve` before start)
        self.busy_buckets = busy_buckets  # buckets with a job of this process running now
        self.lock_key = random.randrange(1, 2 ** 31 - 1)
        self.owned: dict[int, float] = {}  # bucket -> monotonic time it was taken
        self.draining: set = set()
        self.live: list = []
        self._conn = None
        self._engine = None
        self.worker_class = self.bucket_class = 0
        self._last_ok = 0.0
        self._lock = threading.RLock()

    @property
    def worker_id(self) -> str:
        return self.queue.worker_id

    # -- the connection ---------------------------------------------------------------------------
    def _connect(self) -> None:
        if self._engine is None:  # its own connection, with client keepalives: a lost server is noticed fast
            self._engine = dedicated_engine(db.engine.url, "ms-owner", self.worker_id, **KEEPALIVE)
        conn = self._engine.connect()
        self.worker_class, self.bucket_class = lock_classes(conn.exec_driver_sql("SELECT current_schema()").scalar())
        for statement in SERVER_KEEPALIVE:  # so the server drops our locks soon after our host vanishes
            conn.exec_driver_sql(statement)
        conn.commit()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), {"c": self.worker_class, "k": self.lock_key})
        if not got.scalar():
            conn.close()
            raise RuntimeError("could not take this process's own advisory lock")
        now = utcnow()
        conn.execute(text("DELETE FROM ms_workers WHERE worker_id = :w"), {"w": self.worker_id})
        conn.execute(text("INSERT INTO ms_workers (worker_id, lock_key, host, pid, started_at, seen_at) "
                          "VALUES (:w, :k, :h, :p, :n, :n)"),
                     {"w": self.worker_id, "k": self.lock_key, "h": socket.gethostname()[:200], "p": os.getpid(),
                      "n": now})
        conn.commit()
        if compiled.prepares(db.engine):  # the claims run here: PREPAREd once, as on the pool's connections
            conn.connection.info[compiled.PREPARED] = set()
        self._conn = conn
        self.owned = {}
        self.draining = set()
        self._last_ok = time.monotonic()

    def _drop(self, why: str) -> None:
        if self._conn is not None or self.owned:
            log.warning("ownership connection lost (%s): this process stops working its %s buckets",
                        why, len(self.owned))
        self.owned, self.draining = {}, set()
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception as exc:  # noqa: BLE001 - it is gone either way
                log.debug("closing the lost ownership connection: %s", exc)
        self._conn = None

    def start(self) -> None:
        with self._lock:
            self._connect()
            self.tick()

    def stop(self) -> None:
        """Release everything at once (graceful stop): the others take over on their next tick."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("DELETE FROM ms_workers WHERE worker_id = :w"), {"w": self.worker_id})
                    self._conn.commit()
                    self._conn.close()  # ends the session: every advisory lock of ours is released
                except Exception as exc:  # noqa: BLE001 - the database may be gone at shutdown
                    log.warning("releasing ownership at stop failed: %s", type(exc).__name__)
            self._conn = None
            self.owned, self.draining = {}, set()

    # -- the tick ---------------------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            try:
                if self._conn is None:
                    self._connect()
                self._tick()
                self._last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - lost connection: stop, reconnect next tick
                self._drop(type(exc).__name__)

    def _tick(self) -> None:
        conn = self._conn
        now = utcnow()
        self.live = [r[0] for r in conn.execute(text(
            "SELECT w.worker_id FROM ms_workers w WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE "
            "l.locktype = 'advisory' AND l.classid = :c AND l.objid = w.lock_key AND l.objsubid = 2 "
            "AND l.granted)"), {"c": self.worker_class})]
        conn.execute(text("UPDATE ms_workers SET seen_at = :n WHERE worker_id = :w"), {"n": now, "w": self.worker_id})
        want = desired_buckets(self.worker_id, self.live)
        missing = sorted(want - set(self.owned))
        if missing:
            got = conn.execute(text("SELECT b FROM unnest(CAST(:bs AS int[])) AS b WHERE pg_try_advisory_lock(:c, b)"),
                               {"bs": missing, "c": self.bucket_class}).scalars().all()
            taken = time.monotonic()
            for b in got:
                self.owned[b] = taken
        self.draining = set(self.owned) - want
        busy = self.busy_buckets()
        for b in sorted(self.draining - busy):  # moved to another process and nothing of ours runs there
            conn.execute(text("SELECT pg_advisory_unlock(:c, :b)"), {"c": self.bucket_class, "b": b})
            del self.owned[b]
            self.draining.discard(b)
        settled = [b for b, at in self.owned.items() if time.monotonic() - at >= ORPHAN_GRACE]
        if settled and self.live:
            handed = conn.execute(text(
                "UPDATE ms_jobs SET status = 'pending', locked_by = NULL, lease_until = NULL, run_at = :n, "
                "updated_at = :n WHERE status = 'running' AND bucket = ANY(CAST(:bs AS int[])) "
                "AND (locked_by IS NULL OR locked_by <> ALL(CAST(:live AS text[])))"),
                {"n": now, "bs": settled, "live": self.live}).rowcount
            if handed:
                log.warning("handed back %s job(s) left running by a process that is gone", handed)
        conn.commit()

    @property
    def alone(self) -> bool:
        """No other process was alive at the last tick: every job is enqueued (and announced) here."""
        return all(w == self.worker_id for w in self.live)

    # -- claims -----------------------------------------------------------------------------------
    def claimable(self) -> frozenset:
        """Buckets this process may claim in now (empty while its connection is in doubt)."""
        if self._conn is None or time.monotonic() - self._last_ok > FENCE:
            return frozenset()
        return frozenset(set(self.owned) - self.draining)

    def run(self, fn: Callable):
        """Run a claim on the ownership connection: if the locks are gone, so is the claim."""
        with self._lock:
            if self._conn is None:
                return None
            try:
                return fn(self._conn)
            except Exception:
                self._drop("claim failed")
                raise


def snapshot(conn) -> tuple:
    """(live worker ids, {bucket: worker id}) as the database sees them now (a DB-API or SQLAlchemy
    connection on the deployment's schema): for tests, the benchmark and operators."""
    cur = conn.cursor()
    cur.execute("SELECT current_schema()")
    workers, buckets = lock_classes(cur.fetchone()[0])
    cur.execute("SELECT w.worker_id FROM ms_workers w WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = "
                "'advisory' AND l.classid = %s AND l.objid = w.lock_key AND l.granted)", (workers,))
    live = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT l.objid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.granted", (buckets,))
    held = {int(objid): name[len("ms-owner "):] for objid, name in cur.fetchall()}
    cur.close()
    return live, held


def balanced(live: list, held: dict) -> bool:
    """Every bucket held, each by the live process rendezvous hashing gives it to."""
    if len(held) != BUCKETS or not live:
        return False
    return all(held[b] == max(sorted(live), key=lambda w: (_score(w, b), w)) for b in held)
