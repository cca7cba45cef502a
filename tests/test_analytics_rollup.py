"""The analytics rollup (services/analytics_rollup.py) never drifts from the calls: what PBX events mark,
the ticker recomputes, and the result equals a rebuild from scratch, through reordered, repeated and
corrected events."""
import random
from datetime import datetime, timedelta

import pytest
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


def at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def a_call(rnd: random.Random, n: int, phones: list, base: datetime) -> list:
    """One call's events, as a PBX may send them: some calls of a phone start in the same second, some
    are corrected later by their log (which only moves a start earlier)."""
    start = base + timedelta(minutes=5 * rnd.randint(0, 40))
    call = {"unique_id": f"u{n}", "direction": rnd.choice(["in", "in", "out"]), "phone": rnd.choice(phones),
            "start_time": at(start)}
    status, ext = rnd.choice(["answered", "answered", "missed", "busy"]), rnd.choice(["150", "151", "152"])
    bodies = [{**call, "event_type": "dial", "extensions": sorted({ext, rnd.choice(["150", "153"])})}]
    if status == "answered":
        bodies.append({**call, "event_type": "answer", "extension": ext})
    bodies.append({**call, "event_type": "hangup", "call_status": status,
                   "end_time": at(start + timedelta(seconds=rnd.randint(0, 1800)))})
    if rnd.random() < 0.25:
        bodies.append({**call, "event_type": "log", "call_status": status,
                       "start_time": at(start - timedelta(minutes=rnd.randint(1, 90)))})
    return bodies


@pytest.mark.parametrize("seed", range(5))
def test_ticks_between_any_events_leave_what_a_rebuild_gives(ctx, seed):
    """Whatever the order of events and wherever the ticks fall between them, the marked hours and each
    phone's episodes replayed from its anchor equal a rebuild of the enterprise from scratch."""
    rnd = random.Random(seed)
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)
    bodies = [body for n in range(40) for body in a_call(rnd, n, ["+375291000001", "+375291000002", P],
                                                         datetime(2026, 11, 23, 8))]
    rnd.shuffle(bodies)
    for body in bodies:
        play(ctx, body)
        clock.advance(rnd.randint(0, 3))
        if rnd.random() < 0.2:
            rollup.refresh()
    while rollup.refresh():
        pass
    kept = snapshot()
    assert len(kept[1]) >= 3 and {e[7] for e in kept[1]} - {"never"}  # episodes, some of them closed
    rollup.rebuild("0367")
    assert snapshot() == kept


def test_a_frequent_callers_tick_replays_from_the_episode_still_open(ctx, monkeypatch):
    """A phone's recompute reads its calls from the start of the episode open when its earliest changed
    call began, not all its calls: a frequent caller's history does not grow the tick."""
    from msapp.services import analytics_rollup

    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)
    day = datetime(2026, 11, 22, 8)
    for n in range(30):  # a day of a missed call, then its callback, every 20 minutes
        start = day + timedelta(minutes=20 * n)
        play(ctx, {"unique_id": f"m{n}", "direction": "in", "phone": P, "start_time": at(start),
                   "event_type": "hangup", "call_status": "missed", "end_time": at(start + timedelta(seconds=20))},
             {"unique_id": f"r{n}", "direction": "out", "phone": P, "start_time": at(start + timedelta(minutes=5)),
              "extension": "151", "event_type": "hangup", "call_status": "answered",
              "end_time": at(start + timedelta(minutes=7))})
    while rollup.refresh():
        pass
    miss = {"unique_id": "open", "direction": "in", "phone": P, "start_time": "2026-11-23 10:00:00"}
    play(ctx, {**miss, "event_type": "hangup", "call_status": "missed", "end_time": "2026-11-23 10:00:30"})
    while rollup.refresh():
        pass
    read: list = []
    real = analytics_rollup._rows
    monkeypatch.setattr(analytics_rollup, "_rows", lambda query: read.append(real(query)) or read[-1])
    back = {"unique_id": "back", "direction": "out", "phone": P, "extension": "150",
            "start_time": "2026-11-23 10:30:00"}
    play(ctx, {**back, "event_type": "hangup", "call_status": "answered", "end_time": "2026-11-23 10:31:00"})
    while rollup.refresh():
        pass
    assert [[c["unique_id"] for c in rows] for rows in read] == [["open", "back"]]
    kept = snapshot()
    assert len(kept[1]) == 31 and kept[1][-1][7] == "within_1h"
    rollup.rebuild("0367")
    assert snapshot() == kept


def test_a_replay_starts_before_an_episode_closed_in_the_same_second_as_the_next_opened(ctx):
    """At 10:05:00 a second miss joins the first episode, our callback closes it, and a third miss opens
    the next (in the order they were written): a replay from 10:05 would open an episode with the second
    miss, so the anchor goes back to the first episode's first miss."""
    db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
    db.session.commit()
    rollup = Rollup(ctx.extensions["ms"].configs)

    def call(uid, direction, start, status):
        play(ctx, {"unique_id": uid, "direction": direction, "phone": P, "start_time": start, "extension": "151",
                   "event_type": "hangup", "call_status": status, "end_time": start[:-2] + "20"})

    call("m1", "in", "2026-11-23 10:00:00", "missed")
    call("m2", "in", "2026-11-23 10:05:00", "missed")
    call("c1", "out", "2026-11-23 10:05:00", "answered")
    call("m3", "in", "2026-11-23 10:05:00", "missed")
    while rollup.refresh():
        pass
    call("c2", "out", "2026-11-23 10:30:00", "answered")
    while rollup.refresh():
        pass
    kept = snapshot()
    assert [(e[1].minute, e[3], e[7]) for e in kept[1]] == [(0, 2, "within_15m"), (5, 1, "within_1h")]
    rollup.rebuild("0367")
    assert snapshot() == kept


def test_a_phones_mark_keeps_the_earliest_start_of_its_changed_calls(ctx):
    from msapp.db import rawsql
    from msapp.services import analytics_rollup

    def mark(since, kind="phone"):
        with rawsql.transaction() as tx:
            tx.later(analytics_rollup.mark_statement(db.engine.dialect.name),
                     {"enterprise_number": "0367", "kind": kind, "key": P, "marked_at": clock.utcnow(), "since": since},
                     analytics_rollup.MARK_KEYS)
        return db.session.scalar(select(AnalyticsMark.since).where(AnalyticsMark.kind == kind))

    assert mark(datetime(2026, 11, 23, 10)) == datetime(2026, 11, 23, 10)
    assert mark(datetime(2026, 11, 23, 11)) == datetime(2026, 11, 23, 10)
    assert mark(datetime(2026, 11, 23, 9)) == datetime(2026, 11, 23, 9)
    assert mark(None) is None and mark(datetime(2026, 11, 23, 9)) is None  # all its calls, until recomputed
    assert mark(None, kind="hour") is None


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
    from tests.explain import assert_index_access, plans, selects

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
    assert len(of_calls) == 5  # their hour's four aggregates, their phone's calls
    assert "ms_calls.phone IN" in of_calls[-1][0]
    _, plan = plans(of_calls[-1:], rows=a_month_of_other_callers)[0]
    db.session.rollback()
    assert "phone" in plan, plan  # looked up by the phone, not walked by time from its anchor
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
    real = analytics_rollup.hours_figures

    def observed(number, lo, hi):
        folded.set()
        return real(number, lo, hi)

    monkeypatch.setattr(analytics_rollup, "hours_figures", observed)
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
