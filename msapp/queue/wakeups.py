"""Wake-ups between processes sharing PostgreSQL (LISTEN/NOTIFY).

A job may be queued by one process and owned (queue/ownership.py) by another. Every transaction that
queues a job due now also sends a NOTIFY naming the job's bucket on this deployment's channel
(`JobQueue.enqueue`; PostgreSQL delivers it at the commit, never for a rolled-back transaction); every
process LISTENs on a connection of its own and wakes one of its workers when the bucket is one it owns.
It is sent only while other processes are alive (alone, the local notify is enough). A process that
runs no workers (`MS_WORKERS=0`: HTTP only) owns no bucket and is seen by no other, so it announces
every job it queues (`announce_only`). Nothing depends on it: a lost notification costs at most the
owner's idle poll.
"""
from __future__ import annotations

import logging
import select
import threading
from typing import Optional

from sqlalchemy import bindparam, func
from sqlalchemy import select as sql_select

log = logging.getLogger("msapp.wakeups")
NOTIFY = sql_select(func.pg_notify(bindparam("_channel"), bindparam("_payload")))
RECONNECT = 1.0


def channel(bucket_class: int) -> str:
    """This deployment's channel (from its schema's lock class: two deployments in one database never meet)."""
    return f"ms_jobs_{bucket_class}"


def announce(queue, run, bucket: Optional[int]) -> None:
    """In a transaction that queues a job: tell the other live processes, by `run(statement, values)` in
    that transaction (a rawsql `Tx.later`: sent with the job's insert; or the session's `execute`)."""
    owner = queue.ownership
    if bucket is None:
        return
    if owner is not None:  # set only once connected: its bucket class is known
        if not owner.alone:
            run(NOTIFY, {"_channel": channel(owner.bucket_class), "_payload": str(bucket)})
    elif queue.announce_to is not None:
        run(NOTIFY, {"_channel": queue.announce_to, "_payload": str(bucket)})


def announce_only(queue, conn) -> None:
    """A process without workers on PostgreSQL (`conn` on its schema): announce every job it queues."""
    from msapp.queue.ownership import lock_classes

    queue.announce_to = channel(lock_classes(conn.exec_driver_sql("SELECT current_schema()").scalar())[1])


class Listener:
    """LISTENs for other processes' jobs; wakes a worker of this one for those in its buckets."""

    def __init__(self, queue, owner, url):
        self.queue = queue
        self.owner = owner
        self.url = url
        self.listening = threading.Event()  # set while LISTEN is in place (tests wait for it)

    def run(self, stop: threading.Event) -> None:
        from msapp.queue.ownership import dedicated_engine

        engine = dedicated_engine(self.url, "ms-listen", self.queue.worker_id)
        while not stop.is_set():  # started after the ownership connected: its bucket class is known
            conn = None
            try:
                conn = engine.raw_connection()
                dbapi = conn.dbapi_connection
                dbapi.autocommit = True
                cursor = dbapi.cursor()
                cursor.execute(f'LISTEN "{channel(self.owner.bucket_class)}"')
                cursor.close()
                self.listening.set()
                while not stop.is_set():
                    if select.select([dbapi], [], [], RECONNECT)[0]:
                        dbapi.poll()
                        self._wake([n.payload for n in dbapi.notifies])
                        dbapi.notifies.clear()
            except Exception as exc:  # noqa: BLE001 - the database went away: the idle poll covers, retry
                log.debug("listening for other processes' jobs failed: %s", type(exc).__name__)
                stop.wait(RECONNECT)
            finally:
                self.listening.clear()
                if conn is not None:
                    try:
                        conn.invalidate()
                    except Exception as exc:  # noqa: BLE001 - gone already
                        log.debug("closing the listening connection: %s", type(exc).__name__)
        engine.dispose()

    def _wake(self, payloads: list) -> None:
        owned = self.owner.owned
        for payload in payloads:
            try:
                bucket = int(payload)
            except ValueError:
                continue
            if bucket in owned:
                self.queue.notify()
