"""The durable job queue (docs/design.md 7): `store` (enqueue, claim, finish), `claims` (the claim's SQL),
`policy` (what a failure means), `workers` (the threads that run jobs), `ownership` and `wakeups` (several
processes on one PostgreSQL)."""
from msapp.queue.claims import Subject
from msapp.queue.policy import Defer, Permanent, Retry, backoff
from msapp.queue.store import ACTIVE, Handler, JobContext, JobQueue
from msapp.queue.workers import WorkerPool, release_orphans

__all__ = ["ACTIVE", "Defer", "Handler", "JobContext", "JobQueue", "Permanent", "Retry", "Subject", "WorkerPool",
           "backoff", "release_orphans"]
