"""Retention: old journal rows, finished jobs, ended calls, clicks and closed tasks go; the rest stays."""
from datetime import timedelta

from sqlalchemy import func, select

from msapp import metrics
from msapp.clock import utcnow
from msapp.db.models import Call, Click, IntegrationLog, Job, MsTask
from msapp.extensions import db
from msapp.services import retention
from msapp.services.retention import Retention


def _rows(when, n):
    for i in range(n):
        db.session.add(IntegrationLog(created_at=when, enterprise_number="0367", integration_type="ms",
                                      event_type="event.call-event", status="success"))
        db.session.add(Job(key=f"k{when}{i}", kind="call.sync", status="done", created_at=when, updated_at=when,
                           run_at=when))
        db.session.add(Call(enterprise_number="0367", unique_id=f"{when.timestamp()}.{i}", direction="in",
                            phone="+375296254070", status="ended", start_time=when, created_at=when, updated_at=when))
        db.session.add(Click(enterprise_number="0367", created_at=when, outcome="queued"))
        db.session.add(MsTask(enterprise_number="0367", phone="+375296254070", state="closed", marker="m",
                              missed=[], create_attempted=True, note_added=True, created_at=when, updated_at=when))


def count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def test_old_rows_go_in_batches_new_and_unfinished_rows_stay(ctx, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 3)
    monkeypatch.setattr(retention, "PAUSE", 0)
    old, new = utcnow() - timedelta(days=31), utcnow() - timedelta(days=29)
    _rows(old, 7)
    _rows(new, 2)
    db.session.add(IntegrationLog(created_at=old, enterprise_number="0367", integration_type="bitrix",
                                  event_type="x", status="success"))  # another integration's row: never ours
    db.session.add(Job(key="waiting", kind="call.sync", status="pending", created_at=old, updated_at=old, run_at=old))
    db.session.add(Call(enterprise_number="0367", unique_id="ringing", direction="in", phone="+375296254070",
                        status="ringing", created_at=old, updated_at=old))
    db.session.commit()
    before = metrics.PRUNED.labels("integration_logs")._value.get()
    deleted = Retention(30).prune()
    assert deleted == {"integration_logs": 7, "ms_jobs": 7, "ms_calls": 7, "ms_clicks": 7, "ms_tasks": 7}
    assert count(IntegrationLog) == 3 and count(Job) == 3 and count(Call) == 3 and count(Click) == 2
    assert count(MsTask) == 2
    assert db.session.scalar(select(IntegrationLog.integration_type).where(IntegrationLog.created_at == old)) == "bitrix"
    assert metrics.PRUNED.labels("integration_logs")._value.get() - before == 7


def test_a_tick_stops_at_its_budget_and_zero_days_keeps_everything(ctx, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)
    _rows(utcnow() - timedelta(days=40), 5)
    db.session.commit()
    assert Retention(0).prune() == {}
    assert Retention(30).prune(budget=0.0) == {}  # nothing done once the budget is spent
    assert sum(Retention(30).prune().values()) == 25


def test_the_admin_doors_counts_and_ended_cool_downs_are_forgotten_after_a_day(ctx):
    from msapp.db.models import AuthFailure, AuthLockout, ClickCooldown

    now = utcnow()
    old, recent = now - timedelta(days=2), now - timedelta(hours=2)
    db.session.add_all([AuthFailure(address="a", at=old), AuthFailure(address="a", at=recent),
                        AuthLockout(address="a", locked_until=old, strikes=1, last_at=old),
                        AuthLockout(address="b", locked_until=now + timedelta(minutes=5), strikes=1, last_at=recent),
                        ClickCooldown(enterprise_number="0367", address="a", started_at=old, until=old),
                        ClickCooldown(enterprise_number="0367", address="b", started_at=now,
                                      until=now + timedelta(minutes=10))])
    db.session.commit()
    Retention(0).prune()  # even with retention off
    assert [f.at for f in db.session.scalars(select(AuthFailure))] == [recent]
    assert [x.address for x in db.session.scalars(select(AuthLockout))] == ["b"]
    assert [x.address for x in db.session.scalars(select(ClickCooldown))] == ["b"]


def test_a_journal_rows_link_to_its_call_goes_with_it(ctx, monkeypatch):
    from msapp.db.models import CallJournal
    from msapp.services import exchange_log

    monkeypatch.setattr(retention, "PAUSE", 0)
    for uid in ("old", "new"):
        exchange_log.add("0367", "event.dial", {"unique_id": uid})
    db.session.commit()
    db.session.execute(IntegrationLog.__table__.update().where(IntegrationLog.id == select(CallJournal.log_id).where(
        CallJournal.unique_id == "old").scalar_subquery()).values(created_at=utcnow() - timedelta(days=31)))
    db.session.commit()
    assert Retention(30).prune()["integration_logs"] == 1
    assert db.session.scalars(select(CallJournal.unique_id)).all() == ["new"]


def test_every_walk_follows_an_index_to_its_cutoff(ctx, monkeypatch):
    """Each SELECT of a tick is bounded by an index: the enterprises by a skip along it (one probe each),
    each batch by its part (enterprise or status) and the cutoff (tests/explain.py); never a walk of a
    whole table, whatever its size. EXPLAIN on both databases."""
    from tests.explain import plans, selects, walks_a_table

    monkeypatch.setattr(retention, "PAUSE", 0)
    monkeypatch.setattr(retention, "BATCH", 2)
    _rows(utcnow() - timedelta(days=31), 3)
    db.session.add(IntegrationLog(created_at=utcnow() - timedelta(days=31), enterprise_number=None, integration_type="ms",
                                  event_type="admin.login", status="success"))
    db.session.commit()
    with selects() as seen:
        deleted = Retention(30).prune()
    assert deleted["integration_logs"] == 4 and deleted["ms_calls"] == 3
    pg = db.engine.dialect.name == "postgresql"
    walks = 0
    for statement, plan in plans(seen):
        walk = statement.lstrip().startswith("SELECT ") and ".id, " in statement.split("FROM")[0]
        walks += walk
        if pg:
            bounds = [line for line in plan.splitlines() if "Index Cond:" in line]
            assert "Seq Scan" not in plan and bounds, (statement, plan)
            assert not walk or any(" < " in line for line in bounds), (statement, plan)
        else:
            assert not any(walks_a_table(line) for line in plan.splitlines()), (statement, plan)
            assert not walk or "<?" in plan, (statement, plan)
    assert walks >= 8
    db.session.rollback()


def test_a_table_walked_to_its_cutoff_waits_for_the_cutoff_to_move_a_step(ctx, monkeypatch):
    from msapp import clock

    monkeypatch.setattr(retention, "PAUSE", 0)
    keeper = Retention(30)
    keeper.prune()
    _rows(utcnow() - timedelta(days=30, minutes=30), 1)
    db.session.commit()
    assert keeper.prune() == {}  # walked up to half an hour ago: not again before the cutoff moves an hour
    now = utcnow()
    monkeypatch.setattr(clock, "utcnow", lambda: now + timedelta(hours=1))
    monkeypatch.setattr(retention, "utcnow", lambda: now + timedelta(hours=1))
    assert keeper.prune()["ms_calls"] == 1
