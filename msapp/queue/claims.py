"""The claim's statements, built once per dialect: one UPDATE that takes the first due job a process may
run (per-key order, its owned buckets, enterprises not at their cap) and returns it, with the row the
job is about (`Subject`) read after the job is locked.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)

from msapp.db.models import Job


@dataclass(frozen=True)
class Subject:
    """The row a kind of job is about: `table`'s row whose `id` is the payload's `key`, its `columns` (a
    handler's first read, done by the claim instead)."""

    table: Any
    key: str
    columns: tuple

    @functools.cached_property
    def select(self):
        """Its columns by `_id`: the claim's read on SQLite, and the handler's when the claim read none."""
        return select(*(self.table.c[name] for name in self.columns)).where(self.table.c.id == bindparam("_id"))



@dataclass(frozen=True)
class ClaimStatements:
    """The claim of one dialect (see `claim_statements`). `take` takes and returns the first due job of
    any bucket, `take_owned` one of the buckets bound as `_buckets`. PostgreSQL with subjects: `mark` /
    `mark_owned` only note the id taken and `read` returns the job with its subject's row, each kind's
    columns named with its prefix (`prefixes`). SQLite: `more` (whether another job is due) is read after
    the claim."""

    take: Any
    take_owned: Any
    mark: Any = None
    mark_owned: Any = None
    read: Any = None
    prefixes: dict = field(default_factory=dict)
    more: Any = None

    def first(self, owned: bool):
        """The statement to send first: `mark` when `read` follows it, else `take`."""
        if self.read is not None:
            return self.mark_owned if owned else self.mark
        return self.take_owned if owned else self.take


_JOB_COLUMNS = ("id", "kind", "key", "enterprise_number", "payload", "attempts", "max_attempts", "created_at",
                "last_error")


def claim_statements(dialect: str, subjects: dict) -> ClaimStatements:
    """The claim, built once per dialect and run through `rawsql`: one UPDATE that picks the first due
    job, takes it and returns it. A job whose lease expired (its process died) gets `_retaken` as its
    last error: RETURNING shows new values only (and SQLite's cannot name a FROM table), so that is how
    the claimer learns it, and how the support desk sees why the job ran twice.

    The lists (enterprises this process is busy with, buckets it owns) are bound as one value each (a
    PostgreSQL array, a JSON text on SQLite), not expanded into an IN list of up to 256 values.

    With `subjects` (kind -> Subject), PostgreSQL: the UPDATE (`mark`) only notes the id it took, and `read`
    returns the job with its subject's row (columns named by `prefix`, kind -> `s<n>_`), sent with it in one
    round trip. `read` is a statement of its own on purpose: in READ COMMITTED it reads with a snapshot taken
    after the job is locked, so an event that re-armed the job and committed while the claim was on its way is
    in the row (a join in the UPDATE's own statement would read the calls as they were when it started). SQLite:
    the subject's own `select` runs after the claim, in its transaction (writers are serialized)."""
    j = Job.__table__
    p = j.alias("p")
    # One job of a key at a time, earliest first: blocked by an earlier waiting one, or by any running one
    # (a dead job retried from the admin may be older than one already running). A sub-select with LIMIT,
    # not NOT EXISTS: PostgreSQL turns NOT EXISTS into an anti-join whose shape rests on the table's
    # statistics, and with stale ones it read every waiting job for each candidate; this stays one lookup
    # on ix_ms_jobs_key per candidate, whatever they say.
    blocker = select(literal_column("1")).select_from(p).where(
        p.c.key == j.c.key, p.c.id != j.c.id,
        or_(p.c.status == "running", and_(p.c.id < j.c.id, p.c.status == "pending"))).limit(1).scalar_subquery()
    if dialect == "postgresql":  # array literals ('{1,2}'): one string to send, not 256 values to adapt
        from sqlalchemy import all_, any_
        from sqlalchemy.dialects.postgresql import ARRAY

        not_busy = j.c.enterprise_number != all_(cast(bindparam("_busy"), ARRAY(Text)))
        owned = j.c.bucket == any_(cast(bindparam("_buckets"), ARRAY(Integer)))
    else:
        def listed(name):
            return select(literal_column("value")).select_from(func.json_each(bindparam(name))).scalar_subquery()

        not_busy = j.c.enterprise_number.not_in(listed("_busy"))
        owned = j.c.bucket.in_(listed("_buckets"))
    fits = [blocker.is_(None), or_(j.c.enterprise_number.is_(None), not_busy)]
    found: dict = {"prefixes": {}}
    # Whether another waiting job was due as this one was taken: its worker, back, claims again at once
    # instead of waiting for a notify (a backlog of retries, or of jobs released after an outage, comes
    # with none). One step of ix_ms_jobs_due past the job taken.
    if dialect == "postgresql":  # returned with the job
        m = j.alias("m")
        more = [exists().where(m.c.status == "pending", m.c.run_at <= bindparam("_now"), m.c.id != j.c.id)
                .label("more")]
    else:  # read after the claim, in its transaction: SQLite's RETURNING cannot name another row of the table
        more = []
        found["more"] = select(exists().where(j.c.status == "pending", j.c.run_at <= bindparam("_now")).label("more"))
    for in_buckets in (False, True):
        # several processes: only the buckets this one owns (msapp/ownership.py)
        where = [*fits, or_(j.c.bucket.is_(None), owned)] if in_buckets else fits
        # Two picks, each walking ix_ms_jobs_due (status, run_at, id) in its order and stopping at its first
        # fit: a job whose lease expired (among the few running rows), else the earliest due waiting one.
        # So a claim's cost does not grow with the backlog (one pick over both would sort every due job).
        pick = func.coalesce(_first(dialect, j.c.status == "running", j.c.lease_until < bindparam("_now"), *where),
                             _first(dialect, j.c.status == "pending", j.c.run_at <= bindparam("_now"), *where))
        take = update(j).where(j.c.id == pick).values(
            status="running", attempts=j.c.attempts + 1, locked_by=bindparam("_by"), lease_until=bindparam("_lease"),
            updated_at=bindparam("_now"),
            last_error=case((j.c.status == "running", bindparam("_retaken")), else_=j.c.last_error))
        suffix = "_owned" if in_buckets else ""
        found["take" + suffix] = take.returning(*(j.c[name] for name in _JOB_COLUMNS), *more)
        if dialect == "postgresql" and subjects:  # the id taken, for `read`, until the claim commits
            found["mark" + suffix] = take.returning(func.set_config(_CLAIMED, cast(j.c.id, Text), True))
    if dialect == "postgresql" and subjects:
        joined, columns = j, [*(j.c[name] for name in _JOB_COLUMNS), *more]
        for n, (kind, subject) in enumerate(sorted(subjects.items())):
            row, key = subject.table.alias(f"s{n}"), j.c.payload[subject.key].as_string()
            # cast only a plain id of this kind's payload: another kind's (or a malformed) value must not
            # make every claim fail (SQL does not promise to evaluate an AND left to right; CASE does)
            row_id = case((and_(j.c.kind == kind, key.regexp_match("^[0-9]{1,9}$")), cast(key, Integer)))
            joined = joined.outerjoin(row, row.c.id == row_id)
            columns += [row.c[name].label(f"s{n}_{name}") for name in subject.columns]
            found["prefixes"][kind] = f"s{n}_"  # of its columns in `read`
        taken = cast(func.nullif(func.current_setting(_CLAIMED, True), ""), Integer)
        found["read"] = select(*columns).select_from(joined).where(j.c.id == taken)
    return ClaimStatements(**found)


def _first(dialect: str, *where):
    """The id of the first job, in the claim's order, that meets `where` (locked on PostgreSQL)."""
    j = Job.__table__
    query = select(j.c.id).where(*where).order_by(j.c.run_at, j.c.id).limit(1)
    if dialect == "postgresql":  # SQLite: writers are serialized (BEGIN IMMEDIATE) already
        query = query.with_for_update(skip_locked=True, of=j)
    return query.scalar_subquery()


_CLAIMED = "ms.claimed_job"  # a setting local to the claim's transaction: the id it took


def pg_array(values: list) -> str:
    """A PostgreSQL array literal of ints or of enterprise numbers (letters, digits, '-', '_')."""
    return "{" + ",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "}"

