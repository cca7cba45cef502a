"""The analytics rollup (services/analytics_rollup.py) never drifts from the calls: what PBX events mark,
the ticker recomputes, and the result equals a rebuild from scratch, through reordered, repeated and
corrected events."""
from sqlalchemy import select

from msapp import clock
from msapp.db.models import AnalyticsMark, CallbackEpisode, CallHour, Enterprise
from msapp.extensions import db
from msapp.services import events
from msapp.services.analytics_rollup import Rollup

P = "+375291112233"


def play(app, *bodies):
    for body in bodies:
        body = {"enterprise_number": "0367", **body}
        kind = "log" if body["event_type"] == "log" else None  # a CDR line comes by a route of its own
        events.accept(events.parse(body, kind, {}), app.extensions["ms"].queue, "event.call-event", body)


def snapshot(number="0367"):
    hours = {h.hour: dict(h._mapping) for h in db.session.execute(select(
        CallHour.hour, CallHour.counts, CallHour.waits, CallHour.talk_s, CallHour.employees)
        .where(CallHour.enterprise_number == number))}
    t = CallbackEpisode.__table__
    episodes = sorted(tuple(r) for r in db.session.execute(select(
        t.c.phone, t.c.first_missed_at, t.c.ended_at, t.c.misses, t.c.unique_id, t.c.reached_at, t.c.delay_s,
        t.c.bucket, t.c.callback_by).where(t.c.enterprise_number == number)))
    db.session.commit()
    return hours, episodes


def test_what_events_mark_the_ticker_recomputes_as_a_rebuild_would(ctx):
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)
    a = {"unique_id": "a", "direction": "in", "phone": "+375291000001", "start_time": "2026-11-23 10:00:00"}
    play(ctx, {**a, "event_type": "dial", "extensions": ["150", "151"]}, {**a, "event_type": "answer", "extension": "150"},
         {**a, "event_type": "hangup", "call_status": "answered", "end_time": "2026-11-23 10:03:00"})
    b = {"unique_id": "b", "direction": "in", "phone": P, "start_time": "2026-11-23 11:00:00"}
    play(ctx, {**b, "event_type": "hangup", "call_status": "missed", "end_time": "2026-11-23 11:00:30"},
         {**b, "event_type": "dial", "extensions": ["151"]})  # the hangup first: reordered
    assert rollup.refresh() == 4 and rollup.refresh() == 0  # two hours, two phones
    assert snapshot()[1][0][7] == "never"
    c = {"unique_id": "c", "direction": "out", "phone": P, "extension": "151", "start_time": "2026-11-23 11:10:00"}
    play(ctx, {**c, "event_type": "dial"}, {**c, "event_type": "answer"},
         {**c, "event_type": "hangup", "call_status": "answered", "end_time": "2026-11-23 11:12:00"},
         {**c, "event_type": "hangup", "call_status": "answered", "end_time": "2026-11-23 11:12:00"})  # repeated
    # a correction: the log says call b started in the hour before (the call moves between hours)
    play(ctx, {**b, "event_type": "log", "call_status": "missed", "start_time": "2026-11-23 09:59:00"})
    while rollup.refresh():
        pass
    assert db.session.scalars(select(AnalyticsMark.key)).all() == []
    kept = snapshot()
    hours, episodes = kept
    assert sorted(h.hour for h in hours) == [6, 7, 8]  # UTC: 09:59 (b, moved), 10:00 (a), 11:10 (c) in Minsk
    assert [(e[0], e[3], e[6], e[7], e[8]) for e in episodes] == [(P, 1, 570.0, "within_15m", "151")]
    rollup.rebuild("0367")
    assert snapshot() == kept


def test_a_mark_made_again_while_recomputed_stays_for_the_next_tick(ctx, monkeypatch):
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)
    a = {"unique_id": "a", "direction": "in", "phone": P, "start_time": "2026-11-23 10:00:00"}
    play(ctx, {**a, "event_type": "hangup", "call_status": "missed"})  # nobody rang yet: no extension
    real = Rollup._hour

    def hour_then_an_event(self, number, hour):
        real(self, number, hour)
        clock.advance(1)  # the event comes a moment later, while the ticker is between recompute and unmark
        play(ctx, {**a, "event_type": "log", "call_status": "answered", "extension": "150"})

    monkeypatch.setattr(Rollup, "_hour", hour_then_an_event)
    rollup.refresh()
    monkeypatch.setattr(Rollup, "_hour", real)
    assert "hour" in {m.kind for m in db.session.scalars(select(AnalyticsMark))}
    while rollup.refresh():
        pass
    hours, _ = snapshot()
    assert list(hours.values())[0]["employees"] == {"150": [1, 0, 1, 0.0, 0]}  # the later event is in


def test_a_new_time_zone_rebuilds_the_enterprise(ctx):
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    configs = ctx.extensions["ms"].configs
    configs.save("0367", {"enabled": False})
    assert db.session.scalars(select(AnalyticsMark.kind)).all() == []
    configs.save("0367", {"timezone": "Asia/Vladivostok"})
    assert db.session.scalars(select(AnalyticsMark.kind)).all() == ["rebuild"]
    assert Rollup(configs).refresh() == 1 and db.session.scalars(select(AnalyticsMark.kind)).all() == []


def test_a_phones_episodes_are_its_calls_by_index_in_start_order_whatever_order_they_were_written(ctx):
    """The ticker recomputes a marked phone from that phone's calls only (ix_ms_calls_enterprise_phone),
    never by walking all the enterprise's calls (150 ms at 333 k calls on SQLite, inside the writers' lock),
    and puts them in start order itself: here the callback is written before the miss it answers."""
    from tests.explain import assert_index_access, selects

    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)
    c = {"unique_id": "c", "direction": "out", "phone": P, "extension": "151", "start_time": "2026-11-23 11:10:00"}
    play(ctx, {**c, "event_type": "dial"}, {**c, "event_type": "answer"},
         {**c, "event_type": "hangup", "call_status": "answered", "end_time": "2026-11-23 11:12:00"})
    b = {"unique_id": "b", "direction": "in", "phone": P, "start_time": "2026-11-23 11:00:00"}
    play(ctx, {**b, "event_type": "hangup", "call_status": "missed", "end_time": "2026-11-23 11:00:30"})
    with selects() as seen:
        while rollup.refresh():
            pass
    assert [(e[0], e[3], e[6], e[7], e[8]) for e in snapshot()[1]] == [(P, 1, 570.0, "within_15m", "151")]
    of_calls = [s for s in seen if "FROM ms_calls" in s[0]]
    assert len(of_calls) == 2  # their hour, their phone
    assert_index_access(of_calls, keyed=True, rows=a_month_of_other_callers)


def a_month_of_other_callers(conn):
    """2,000 ended calls of the enterprise from other phones over November (rolled back with the EXPLAINs);
    statistics on PostgreSQL only, as its autovacuum keeps them: the service never analyzes SQLite."""
    from datetime import datetime, timedelta

    from sqlalchemy import text

    from msapp.db.models import Call

    start = datetime(2026, 11, 1)
    conn.execute(Call.__table__.insert(), [{
        "enterprise_number": "0367", "unique_id": f"old-{n}", "direction": "in", "phone": f"+37529{2000000 + n}",
        "extensions": ["150"], "status": "ended", "call_status": "answered",
        "start_time": start + timedelta(minutes=10 * n), "created_at": start, "updated_at": start}
        for n in range(2000)])
    if conn.dialect.name == "postgresql":
        conn.execute(text("ANALYZE ms_calls"))


def test_on_sqlite_a_recompute_reads_and_folds_outside_the_writers_lock(tmp_path, monkeypatch):
    """The ticker reads a marked hour's calls and folds them while another thread holds the writers' lock
    (which the event path's 202 waits for); only its delete and insert wait for the lock."""
    import threading

    from msapp.db.sqlite_lock import WRITE_LOCK
    from msapp.services import analytics_rollup
    from tests.conftest import dispose, make_app

    app = make_app(f"sqlite:///{tmp_path / 'ms.db'}", tmp_path)
    folded, done = threading.Event(), threading.Event()
    real = analytics_rollup.hour_figures

    def observed(calls):
        folded.set()
        return real(calls)

    monkeypatch.setattr(analytics_rollup, "hour_figures", observed)
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
        b = {"unique_id": "b", "direction": "in", "phone": P, "start_time": "2026-11-23 11:00:00"}
        play(app, {**b, "event_type": "hangup", "call_status": "missed", "end_time": "2026-11-23 11:00:30"})

    def tick():
        with app.app_context():
            Rollup(app.extensions["ms"].configs).refresh()
            done.set()

    with WRITE_LOCK:
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        assert folded.wait(10), "the recompute waited for the writers' lock to read"
        assert not done.is_set()  # its write waits for the lock
    ticker.join(10)
    with app.app_context():
        assert done.is_set() and snapshot()[1][0][0] == P
    dispose(app)
