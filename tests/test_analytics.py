"""Analytics figures on a known week (services/analytics.py): every total, bucket, callback and employee
figure checked by hand, in the enterprise's zone, across the zone's midnight and a daylight-saving change
of another zone."""
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from msapp.db.models import Call, Directory, Enterprise, MsTask
from msapp.errors import ValidationFailed
from msapp.extensions import db
from msapp.services.analytics import Analytics, Period, percentile, period_from
from msapp.services.analytics_rollup import Rollup
from tests.explain import assert_index_access, selects

MINSK = ZoneInfo("Europe/Minsk")
NOW = datetime(2026, 12, 2, 12, 0)
WEEK = Period(date(2026, 11, 23), date(2026, 11, 29), "day", MINSK)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def call(uid, direction, phone, status, start, exts, answered=None, answer_after=None, talk=None, ring=None,
         number="0367"):
    start = at(start)
    answer = start + timedelta(seconds=answer_after) if answer_after is not None else None
    if talk is not None:
        end = (answer or start) + timedelta(seconds=talk)
    else:
        end = start + timedelta(seconds=ring or 0) if status else None
    return Call(enterprise_number=number, unique_id=uid, direction=direction, phone=phone, extensions=exts,
                answered_extension=answered, start_time=start, answer_time=answer, end_time=end, call_status=status,
                status="ended" if status else "ringing", created_at=start, updated_at=start)


def week_calls() -> list:
    """The week (UTC; Minsk is UTC+3, no daylight saving): fresh rows for each test's database."""
    return [
        call("A", "in", "+375291000001", "answered", "2026-11-23T07:00:00", ["150", "151"], "150", 10, 120),
        call("B", "in", "+375291000002", "missed", "2026-11-23T08:00:00", ["150", "151"], ring=30),
        call("C", "out", "+375291000002", "answered", "2026-11-23T08:10:30", ["151"], None, 10, 120),  # B + 10 min
        call("D", "in", "+375291000003", "busy", "2026-11-24T09:00:00", ["152"], ring=5),
        call("E", "in", "+375291000003", "missed", "2026-11-24T09:30:00", ["152"], ring=20),  # same caller again
        call("F", "in", "+375291000003", "answered", "2026-11-24T10:00:05", ["152"], "152", 20, 60),  # D + 1 h
        call("G", "in", "+375291000004", "missed", "2026-11-25T06:00:00", ["150"], ring=10),
        call("H", "out", "+375291000004", "answered", "2026-11-25T15:00:10", ["150"], None, 10, 60),  # same day
        call("I", "in", "+375291000005", "missed", "2026-11-26T20:30:00", ["151"], ring=30),  # Thu 23:30 local
        call("I2", "out", "+375291000005", "answered", "2026-11-27T06:00:00", ["151"], None, 10, 30),  # Fri: later
        call("J", "in", "+375291000006", "missed", "2026-11-29T20:59:00", ["150"], ring=10),  # Sun 23:59 local
        call("K", "in", "+375291000007", "answered", "2026-11-29T21:01:00", ["150"], "150", 5, 10),  # Mon 00:01
        call("L", "in", "+375291000007", "answered", "2026-11-22T20:30:00", ["150"], "150", 5, 10),  # previous week
        call("R", "in", "+375291000008", None, "2026-11-28T10:00:00", ["150"]),  # still ringing: not counted
        call("X", "in", "+375291000002", "missed", "2026-11-23T08:00:00", ["150"], ring=30, number="0500"),
    ]


def rollup(app) -> Rollup:
    return Rollup(app.extensions["ms"].configs)


@pytest.fixture
def week(ctx):
    db.session.add_all([Enterprise(number="0367", name="Co", integrations_config={}),
                        Enterprise(number="0500", name="Other", integrations_config={})])
    db.session.add_all(week_calls())
    db.session.add(Directory(enterprise_number="0367", logins_known=True, fetched_at=NOW, employees=[
        {"id": "e1", "extension": "150", "name": "Иванов"}, {"id": "e2", "extension": "151", "name": "Петров"}]))
    db.session.add(MsTask(enterprise_number="0367", phone="+375291000006", state="open", task_id="task-6",
                          marker="m6", missed=[], created_at=NOW, updated_at=NOW))
    db.session.add(MsTask(enterprise_number="0367", phone="+375291000004", state="closed", task_id="task-4",
                          marker="m4", missed=[], closed_reason="reached", closed_by_call="H", closed_by_ext="150",
                          closed_at=at("2026-11-25T15:02:00"),
                          created_at=NOW, updated_at=NOW))
    db.session.commit()
    rollup(ctx).rebuild("0367")
    return Analytics().report("0367", WEEK, {"150": "Иванов", "151": "Петров"})


def test_totals_and_the_previous_week(week):
    assert week["totals"] == {
        "calls": 11, "incoming": 8, "outgoing": 3, "answered": 2, "missed": 5, "busy": 1, "missed_share": 0.75,
        "answer_p50_s": 10.0, "answer_p90_s": 20.0, "talk_s": 390.0, "missed_callers": 5, "reached_share": 0.8,
        "reached_p50_s": 3600.0, "demo_calls": 0}
    assert week["previous"]["from"] == "2026-11-16" and week["previous"]["totals"]["calls"] == 1
    assert week["change"]["calls"] == 1000.0 and week["change"]["missed_share"] is None  # nothing missed before


def test_days_in_the_enterprise_zone(week):
    days = {row["at"]: row for row in week["series"]}
    assert list(days) == [f"2026-11-{d}" for d in range(23, 30)]
    assert (days["2026-11-23"]["in_answered"], days["2026-11-23"]["in_missed"], days["2026-11-23"]["out_answered"]) \
        == (1, 1, 1)
    assert (days["2026-11-24"]["in_busy"], days["2026-11-24"]["in_missed"], days["2026-11-24"]["in_answered"]) \
        == (1, 1, 1)
    assert days["2026-11-24"]["missed_share"] == round(2 / 3, 4) and days["2026-11-24"]["answer_p50_s"] == 20.0
    assert days["2026-11-26"]["in_missed"] == 1 and days["2026-11-27"]["out_answered"] == 1  # 23:30 / 09:00 local
    assert days["2026-11-29"]["in_missed"] == 1 and days["2026-11-29"]["in_answered"] == 0  # K is Monday's
    assert sum(v for row in week["series"] for k, v in row.items() if k[:3] in ("in_", "out")) == 11


def test_callbacks(week):
    cb = week["callbacks"]
    assert {k: cb[k] for k in ("missed_callers", "within_15m", "within_1h", "same_day", "later", "never")} == {
        "missed_callers": 5, "within_15m": 1, "within_1h": 1, "same_day": 1, "later": 1, "never": 1}
    assert (cb["reached_p50_s"], cb["reached_p90_s"]) == (3600.0, 34170.0)
    assert cb["waiting"] == [{"phone": "+375291000006", "since": "2026-11-29T23:59+03:00", "missed_calls": 1,
                              "unique_id": "J", "task_id": "task-6"}]


def test_heatmap_by_local_weekday_and_hour(week):
    heat = week["heatmap"]
    assert heat[0][10] == {"calls": 1, "missed_share": 0.0} and heat[0][11] == {"calls": 1, "missed_share": 1.0}
    assert heat[1][12] == {"calls": 2, "missed_share": 1.0} and heat[1][13] == {"calls": 1, "missed_share": 0.0}
    assert heat[3][23]["calls"] == 1 and heat[6][23]["calls"] == 1 and heat[0][0]["calls"] == 0
    assert sum(cell["calls"] for day in heat for cell in day) == 8


def test_employees(week):
    rows = {r["extension"]: r for r in week["employees"]}
    assert rows["150"] == {"extension": "150", "name": "Иванов", "rung": 4, "answered": 1, "missed": 3,
                           "talk_s": 180.0, "avg_talk_s": 90.0, "callbacks": 1, "tasks_closed": 1}
    assert rows["151"] == {"extension": "151", "name": "Петров", "rung": 3, "answered": 0, "missed": 2,
                           "talk_s": 150.0, "avg_talk_s": 75.0, "callbacks": 2, "tasks_closed": 0}
    assert rows["152"] == {"extension": "152", "name": None, "rung": 3, "answered": 1, "missed": 2,
                           "talk_s": 60.0, "avg_talk_s": 60.0, "callbacks": 0, "tasks_closed": 0}


def test_a_daylight_saving_day_in_hours(ctx):
    """Berlin, 25 Oct 2026: 02:00-03:00 happens twice (one label, both hours' calls); 29 Mar: no 02:00."""
    berlin = ZoneInfo("Europe/Berlin")
    db.session.add(Enterprise(number="0600", name="Berlin", integrations_config={}))
    db.session.add_all([
        call("b1", "in", "+4930000001", "answered", "2026-10-25T00:30:00", ["1"], "1", 5, 10, number="0600"),
        call("b2", "in", "+4930000002", "answered", "2026-10-25T01:30:00", ["1"], "1", 5, 10, number="0600"),
        call("b3", "in", "+4930000003", "missed", "2026-10-25T22:30:00", ["1"], ring=5, number="0600"),  # 23:30 CET
    ])
    db.session.commit()
    rollup(ctx).rebuild("0600")
    autumn = Analytics().report("0600", Period(date(2026, 10, 25), date(2026, 10, 25), "hour", berlin))
    hours = {row["at"][11:13]: row for row in autumn["series"]}
    assert len(autumn["series"]) == 24 and hours["02"]["in_answered"] == 2 and hours["23"]["in_missed"] == 1
    spring = Period(date(2026, 3, 29), date(2026, 3, 29), "hour", berlin)
    assert len(spring.labels()) == 23 and "2026-03-29T02:00" not in spring.labels()


def test_the_period_asked(ctx):
    assert period_from({}, MINSK, NOW) == Period(date(2026, 11, 26), date(2026, 12, 2), "day", MINSK)
    assert period_from({"period": "today"}, MINSK, NOW).grain == "hour"
    late = datetime(2026, 12, 2, 22, 30)  # 01:30 on 3 Dec in Minsk
    assert period_from({"period": "yesterday"}, MINSK, late).first == date(2026, 12, 2)
    assert period_from({"from": "2026-11-01", "to": "2026-11-30"}, MINSK, NOW).days == 30
    for args, field in (({"period": "year"}, "period"), ({"from": "2026-13-01"}, "from"),
                        ({"from": "2026-11-10", "to": "2026-11-01"}, "to"), ({"grain": "minute"}, "grain"),
                        ({"from": "2026-01-01", "to": "2026-12-01"}, "to"),
                        ({"period": "30d", "grain": "hour"}, "grain")):
        with pytest.raises(ValidationFailed) as caught:
            period_from(args, MINSK, NOW)
        assert caught.value.field == field


def test_percentile_is_nearest_rank():
    assert percentile({}, 0.5) is None
    assert percentile({"30": 1, "10": 1, "20": 1}, 0.5) == 20 and percentile({"10": 1, "20": 1}, 0.9) == 20
    assert percentile({"5": 1}, 0.9) == 5 and percentile({"9": 3, "100": 1}, 0.75) == 9


BEARER = {"Authorization": "Bearer test-admin-token-0123456789"}


def test_the_json_the_csv_and_the_page_say_the_same(app, week):
    c = app.test_client()
    r = c.get("/ms-admin/api/analytics/0367?from=2026-11-23&to=2026-11-29", headers=BEARER)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert body["totals"] == week["totals"] and body["callbacks"]["waiting"] == week["callbacks"]["waiting"]
    r = c.get("/ms-admin/api/analytics/0367.csv?from=2026-11-23&to=2026-11-29", headers=BEARER)
    assert r.mimetype == "text/csv" and "ms-analytics-0367-2026-11-23-2026-11-29.csv" in r.headers["Content-Disposition"]
    lines = r.get_data(as_text=True).lstrip("\ufeff").splitlines()
    assert lines[0].startswith("at,in_answered,in_missed") and lines[1].startswith("2026-11-23,1,1,0,1,0,0,0.5,10.0")
    assert "150,Иванов,4,1,3,180.0,90.0,1,1" in lines
    c.get("/ms-admin/login")
    page = c.get("/ms-admin/analytics?enterprise_number=0367&from=2026-11-23&to=2026-11-29", headers=BEARER)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and html.count('<svg class="chart"') == 4
    assert 'data-key="in_missed" data-at="2026-11-24" data-value="1"' in html
    assert "<title>2026-11-23 · входящие: принят: 1</title>" in html and "+375291000006" in html


@pytest.mark.parametrize("query,field", [("period=year", "period"), ("from=2026-02-30", "from"),
                                         ("from=2026-11-10&to=2026-11-01", "to"), ("grain=minute", "grain")])
def test_a_bad_period_is_a_400_naming_the_field(app, week, query, field):
    r = app.test_client().get(f"/ms-admin/api/analytics/0367?{query}", headers=BEARER)
    assert r.status_code == 400 and r.get_json()["field"] == field


def test_an_unknown_enterprise_is_a_404(app, week):
    assert app.test_client().get("/ms-admin/api/analytics/9999", headers=BEARER).status_code == 404


def test_every_query_of_the_report_walks_an_index_of_its_enterprise(week):
    """No statement of the report reads other enterprises' rows: each one's plan is index access bounded
    by the enterprise (tests/explain.py)."""
    with selects() as seen:
        Analytics().report("0367", WEEK)
    tables = ("ms_call_hours", "ms_callbacks", "ms_tasks", "ms_calls")
    assert {t for t in tables if any(t in s for s, _ in seen)} == set(tables)
    assert_index_access(seen)
    closed = [(s, p) for s, p in seen if "ms_tasks.closed_at" in s]  # the period's, not all the enterprise's
    assert closed and assert_index_access(closed, keyed=True, rows=a_year_of_tasks) is None


def a_year_of_tasks(conn):
    """2,000 calls of the enterprise a year ago, each a task it closed, and fresh statistics (rolled back
    with the EXPLAINs): the planner weighs an enterprise's history, not a test's week."""
    old = datetime(2025, 11, 1)
    conn.execute(Call.__table__.insert(), [{
        "enterprise_number": "0367", "unique_id": f"old-{n}", "direction": "in", "phone": f"+37529{2000000 + n}",
        "extensions": ["150"], "status": "ended", "call_status": "missed", "start_time": old, "created_at": old,
        "updated_at": old} for n in range(2000)])
    conn.execute(MsTask.__table__.insert(), [{
        "enterprise_number": "0367", "phone": f"+37529{2000000 + n}", "state": "closed", "marker": f"old-{n}",
        "missed": [], "created_at": old, "updated_at": old, "closed_at": old, "closed_reason": "reached",
        "closed_by_call": f"old-{n}", "closed_by_ext": "150"} for n in range(2000)])
    for table in ("ms_calls", "ms_tasks"):
        conn.execute(text(f"ANALYZE {table}"))


def test_the_page_says_a_bad_period_in_russian(app, week):
    r = app.test_client().get("/ms-admin/analytics?enterprise_number=0367&from=2026-11-10&to=2026-11-01",
                              headers=BEARER)
    assert r.status_code == 200 and "конец периода раньше начала" in r.get_data(as_text=True)
