"""Tables of docs/design.md 4.

`enterprises` and `integration_logs` may belong to the PBX platform: the service maps only the
columns it uses and never alters those tables. `ms_*` tables are the service's own.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from msapp.clock import utcnow
from msapp.extensions import db

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Enterprise(db.Model):
    __tablename__ = "enterprises"

    number: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[Optional[str]] = mapped_column(Text)
    secret: Mapped[Optional[str]] = mapped_column(Text)
    integrations_config: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType)


class IntegrationLog(db.Model):
    __tablename__ = "integration_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    enterprise_number: Mapped[Optional[str]] = mapped_column(Text)
    integration_type: Mapped[str] = mapped_column(Text, default="ms")
    event_type: Mapped[Optional[str]] = mapped_column(Text)
    request_data: Mapped[Optional[Any]] = mapped_column(JSONType)
    response_data: Mapped[Optional[Any]] = mapped_column(JSONType)
    status: Mapped[Optional[str]] = mapped_column(Text)
    error_message: Mapped[Optional[str]] = mapped_column(Text)


class CallJournal(db.Model):
    """Which journal rows tell a call's story: one row per `integration_logs` row that carries a call's
    unique_id, written in the same statement or transaction as that row (services/exchange_log.py), so a
    call's timeline is an index lookup here, never a search of the platform's journal (migration 0013)."""

    __tablename__ = "ms_call_journal"
    __table_args__ = (Index("ix_ms_call_journal_call", "enterprise_number", "unique_id", "log_id"),)

    log_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    unique_id: Mapped[str] = mapped_column(Text, nullable=False)


class WebhookKey(db.Model):
    """Exact, indexed lookup of an enterprise by webhook uuid: the key is sha256(uuid), never the uuid."""

    __tablename__ = "ms_webhooks"

    uuid_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False, index=True)


class Call(db.Model):
    """One PBX call: what the PBX told us (desired state) and what MoySklad has been sent."""

    __tablename__ = "ms_calls"
    __table_args__ = (UniqueConstraint("enterprise_number", "unique_id", name="uq_ms_calls_call"),
                      # an enterprise's calls by time and by caller (analytics, the support desk; migration 0010)
                      Index("ix_ms_calls_enterprise_start", "enterprise_number", "start_time"),
                      Index("ix_ms_calls_enterprise_phone", "enterprise_number", "phone"),
                      Index("ix_ms_calls_enterprise_ms_call", "enterprise_number", "ms_call_id"),  # 0012
                      # calls still going (the desk's "in progress"): few, however long the history (0013)
                      Index("ix_ms_calls_open", "enterprise_number", "start_time",
                            postgresql_where=text("status <> 'ended'"), sqlite_where=text("status <> 'ended'")))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    unique_id: Mapped[str] = mapped_column(Text, nullable=False)
    direction: Mapped[str] = mapped_column(String(8), nullable=False)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    # desired state, merged from events
    extensions: Mapped[list] = mapped_column(JSONType, default=list)
    answered_extension: Mapped[Optional[str]] = mapped_column(Text)
    start_time: Mapped[Optional[datetime]] = mapped_column(DateTime)
    answer_time: Mapped[Optional[datetime]] = mapped_column(DateTime)
    end_time: Mapped[Optional[datetime]] = mapped_column(DateTime)
    call_status: Mapped[Optional[str]] = mapped_column(String(16))
    record_url: Mapped[Optional[str]] = mapped_column(Text)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="ringing")
    # what MoySklad has been sent
    ms_call_id: Mapped[Optional[str]] = mapped_column(Text)
    external_id: Mapped[Optional[str]] = mapped_column(Text)
    create_attempted: Mapped[bool] = mapped_column(Boolean, default=False)
    shown: Mapped[list] = mapped_column(JSONType, default=list)
    hidden: Mapped[list] = mapped_column(JSONType, default=list)
    answer_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    end_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    counterparty_id: Mapped[Optional[str]] = mapped_column(Text)
    customer_checked: Mapped[bool] = mapped_column(Boolean, default=False)
    customer_attempted: Mapped[bool] = mapped_column(Boolean, default=False)
    customer_created: Mapped[bool] = mapped_column(Boolean, default=False)
    order_attempted: Mapped[bool] = mapped_column(Boolean, default=False)
    order_id: Mapped[Optional[str]] = mapped_column(Text)
    task_queued: Mapped[bool] = mapped_column(Boolean, default=False)  # its missed-call task work is queued
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Job(db.Model):
    """Durable work: claimed by workers, run in id order within one `key`."""

    __tablename__ = "ms_jobs"
    __table_args__ = (
        Index("ix_ms_jobs_due", "status", "run_at", "id"),  # the claim's order (migration 0008)
        Index("ix_ms_jobs_key", "key", "id"),
        # an enterprise's jobs not done (the admin panel's queue and dead jobs): done ones, the bulk, are not
        # in it (migration 0013). A query names `status <> 'done'` for SQLite to use it.
        Index("ix_ms_jobs_enterprise_unfinished", "enterprise_number", "status",
              postgresql_where=text("status <> 'done'"), sqlite_where=text("status <> 'done'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[Optional[str]] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    bucket: Mapped[Optional[int]] = mapped_column(Integer)  # ownership bucket of the enterprise (ownership.py)
    payload: Mapped[dict] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=10)
    run_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    lease_until: Mapped[Optional[datetime]] = mapped_column(DateTime)
    locked_by: Mapped[Optional[str]] = mapped_column(Text)
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Worker(db.Model):
    """A service process that works jobs (PostgreSQL): alive while it holds its advisory lock `lock_key`."""

    __tablename__ = "ms_workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    lock_key: Mapped[int] = mapped_column(BigInteger, nullable=False)
    host: Mapped[Optional[str]] = mapped_column(Text)
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    seen_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Directory(db.Model):
    """MoySklad's employees with extensions (and logins) of one enterprise, as last fetched."""

    __tablename__ = "ms_directory"

    enterprise_number: Mapped[str] = mapped_column(Text, primary_key=True)
    employees: Mapped[list] = mapped_column(JSONType, nullable=False)  # [{"id", "extension", "uid", "name"}]
    logins_known: Mapped[bool] = mapped_column(Boolean, nullable=False)  # False: JSON API not reachable/set
    fetched_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Click(db.Model):
    """One click-to-call request and what became of it: queued, repeat, or refused (with its reason)."""

    __tablename__ = "ms_clicks"
    __table_args__ = (Index("ix_ms_clicks_enterprise_time", "enterprise_number", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    extension: Mapped[Optional[str]] = mapped_column(Text)
    destination: Mapped[Optional[str]] = mapped_column(Text)
    uid: Mapped[Optional[str]] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # queued | repeat | refused | alert
    reason: Mapped[Optional[str]] = mapped_column(String(32))
    client_address: Mapped[Optional[str]] = mapped_column(Text)  # who sent it (behind MS_TRUSTED_PROXIES)


class ClickCooldown(db.Model):
    """A client address that sent too many refused clicks to one enterprise's webhook: 429 until `until`."""

    __tablename__ = "ms_click_cooldowns"

    enterprise_number: Mapped[str] = mapped_column(Text, primary_key=True)
    address: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    until: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class AuthFailure(db.Model):
    """One wrong admin token (form, Bearer or /metrics) from a client address."""

    __tablename__ = "ms_auth_failures"
    __table_args__ = (Index("ix_ms_auth_failures_address_at", "address", "at"),
                      Index("ix_ms_auth_failures_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class AuthLockout(db.Model):
    """An address locked out of the admin door; `strikes` doubles the next penalty within an hour."""

    __tablename__ = "ms_auth_lockouts"

    address: Mapped[str] = mapped_column(Text, primary_key=True)
    locked_until: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    strikes: Mapped[int] = mapped_column(Integer, nullable=False)
    last_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Breaker(db.Model):
    """MoySklad seen from one enterprise and API: open while unreachable (`outage`) or refusing the key (`auth`)."""

    __tablename__ = "ms_breakers"

    enterprise_number: Mapped[str] = mapped_column(Text, primary_key=True)
    api: Mapped[str] = mapped_column(String(8), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), nullable=False)  # open | closed
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # outage | auth
    reason: Mapped[Optional[str]] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    next_probe_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    probe_interval: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class MsTask(db.Model):
    """A caller's callback task in MoySklad (services/tasks.py): at most one open per enterprise and phone."""

    __tablename__ = "ms_tasks"
    __table_args__ = (Index("ix_ms_tasks_caller", "enterprise_number", "phone", "state"),
                      Index("ix_ms_tasks_state_updated", "state", "updated_at"),  # retention (migration 0013)
                      Index("ix_ms_tasks_created", "enterprise_number", "created_at"),  # the today panel (0016)
                      # analytics' «tasks closed» per employee and the today panel (0016, in place of 0014's)
                      Index("ix_ms_tasks_closed_by", "enterprise_number", "closed_at", "closed_by_ext",
                            postgresql_where=text("closed_reason = 'reached'"),
                            sqlite_where=text("closed_reason = 'reached'")))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(8), nullable=False)  # open | closed
    task_id: Mapped[Optional[str]] = mapped_column(Text)
    create_attempted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    marker: Mapped[str] = mapped_column(Text, nullable=False)  # in the description: finds a lost create
    assignee_id: Mapped[Optional[str]] = mapped_column(Text)
    counterparty_id: Mapped[Optional[str]] = mapped_column(Text)
    missed: Mapped[list] = mapped_column(JSONType, nullable=False)  # [{"unique_id", "at", "extensions"}]
    note_added: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    closed_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    closed_reason: Mapped[Optional[str]] = mapped_column(String(16))  # reached | person | never created
    closed_by_call: Mapped[Optional[str]] = mapped_column(Text)
    closed_by_ext: Mapped[Optional[str]] = mapped_column(Text)  # the extension whose call closed it (0016)


class ConfigChange(db.Model):
    """One change of an enterprise's `ms` config: when, by whom, which fields (names only, never values)."""

    __tablename__ = "ms_config_history"
    __table_args__ = (Index("ix_ms_config_history_enterprise", "enterprise_number", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    by: Mapped[str] = mapped_column(Text, nullable=False)  # "admin <fingerprint>", "api", "cli", "service"
    fields: Mapped[list] = mapped_column(JSONType, nullable=False)


class CallHour(db.Model):
    """The analytics rollup: figures of one enterprise's ended calls that started in one UTC hour, recomputed
    from ms_calls whenever one of them changes (services/analytics_rollup.py)."""

    __tablename__ = "ms_call_hours"
    __table_args__ = (UniqueConstraint("enterprise_number", "hour", name="uq_ms_call_hours"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    hour: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    counts: Mapped[dict] = mapped_column(JSONType, nullable=False)  # {"in_answered": n, ... "out_busy": n}
    waits: Mapped[dict] = mapped_column(JSONType, nullable=False)  # ring to answer: {"<whole seconds>": n}
    talk_s: Mapped[float] = mapped_column(Float, nullable=False)
    # {"<ext>": [rung, answered, missed while ringing, talk_s, calls talked]}
    employees: Mapped[dict] = mapped_column(JSONType, nullable=False)


class CallbackEpisode(db.Model):
    """A missed caller (analytics): their missed calls until someone talked to them, and how soon."""

    __tablename__ = "ms_callbacks"
    # the report reads a period's episodes from the index alone (bucket, delay, who called back)
    __table_args__ = (Index("ix_ms_callbacks_period", "enterprise_number", "first_missed_at", "bucket", "delay_s",
                            "callback_by"),
                      Index("ix_ms_callbacks_phone", "enterprise_number", "phone"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    first_missed_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)  # the first miss's start
    ended_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)  # the first miss's end
    misses: Mapped[int] = mapped_column(Integer, nullable=False)
    unique_id: Mapped[str] = mapped_column(Text, nullable=False)  # of the first missed call
    reached_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    delay_s: Mapped[Optional[float]] = mapped_column(Float)
    bucket: Mapped[str] = mapped_column(String(16), nullable=False)  # within_15m ... never
    callback_by: Mapped[Optional[str]] = mapped_column(Text)  # the extension whose outgoing call reached them


class AnalyticsMark(db.Model):
    """An hour or a phone of an enterprise whose rollup must be recomputed (written by the event path)."""

    __tablename__ = "ms_analytics_marks"

    enterprise_number: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # hour | phone
    key: Mapped[str] = mapped_column(Text, primary_key=True)  # the hour (ISO, UTC) or the phone
    marked_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # a phone's: the earliest start of its calls changed since its last recompute (None: all; 0015)
    since: Mapped[Optional[datetime]] = mapped_column(DateTime)


class CustomerName(db.Model):
    """The name of the customer a phone belongs to, as MoySklad last told us (a lookup found it, or the
    service created the customer): the support desk shows it after a restart too."""

    __tablename__ = "ms_customer_names"
    __table_args__ = (UniqueConstraint("enterprise_number", "phone", name="uq_ms_customer_names"),
                      Index("ix_ms_customer_names_updated", "updated_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_number: Mapped[str] = mapped_column(Text, nullable=False)
    phone: Mapped[str] = mapped_column(Text, nullable=False)
    counterparty_id: Mapped[Optional[str]] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
