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
                            phone="+375296254070", status="ended", created_at=when, updated_at=when))
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
