"""The support desk's search and story at the database: keyset pages, the capped total, the days by the
call's start, and every query bounded by the enterprise through an index (docs/design.md 5.4)."""
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from msapp.db.models import Call, Enterprise
from msapp.errors import ValidationFailed
from msapp.extensions import db
from msapp.services import exchange_log, paging
from tests.explain import assert_index_access, selects

START = datetime(2026, 11, 20, 9, 0)  # UTC; 12:00 in Minsk


def a_call(n: int, number: str = "0367", **values) -> dict:
    return {"enterprise_number": number, "unique_id": f"c-{number}-{n}", "direction": "in",
            "phone": f"+37529{1000000 + n % 50}", "extensions": ["150"], "status": "ended",
            "call_status": "answered", "start_time": START + timedelta(minutes=n), "created_at": START,
            "updated_at": START, **values}


@pytest.fixture
def desk(ctx):
    db.session.add_all([Enterprise(number="0367", name="Co", integrations_config={}),
                        Enterprise(number="0500", name="Other", integrations_config={})])
    db.session.flush()
    db.session.execute(Call.__table__.insert(), [a_call(n) for n in range(120)] + [a_call(n, "0500") for n in range(30)])
    db.session.commit()
    return ctx.extensions["ms"].support


def test_pages_follow_one_another_newest_first_and_end(desk):
    seen, before = [], ""
    for _ in range(5):
        page = desk.search("0367", before=before)
        assert page["total"] == 120 and not page["capped"]
        seen += [c["unique_id"] for c in page["calls"]]
        before = page["next"]
        if before is None:
            break
    assert seen == [f"c-0367-{n}" for n in range(119, -1, -1)]  # each once, newest first, then no next


def test_calls_that_started_together_are_paged_by_id(desk):
    db.session.execute(Call.__table__.insert(), [a_call(1000 + n, start_time=START + timedelta(days=1))
                                                 for n in range(60)])
    db.session.commit()
    first = desk.search("0367", date_from="2026-11-21", date_to="2026-11-21")
    second = desk.search("0367", date_from="2026-11-21", date_to="2026-11-21", before=first["next"])
    ids = [c["unique_id"] for c in first["calls"] + second["calls"]]
    assert len(ids) == 60 == len(set(ids)) and second["next"] is None


def test_the_total_is_counted_up_to_its_cap(desk, monkeypatch):
    monkeypatch.setattr(paging, "TOTAL_CAP", 100)
    page = desk.search("0367")
    assert (page["total"], page["capped"]) == (100, True)
    assert desk.search("0367", q="+375291000007") == {**desk.search("0367", q="+375291000007"), "total": 3,
                                                    "capped": False}


def test_days_are_the_calls_start_in_the_enterprises_zone(desk):
    # created long before it started: the day is the start's (Minsk is UTC+3: 21:00 UTC is the next day)
    db.session.execute(Call.__table__.insert(), [a_call(5000, start_time=datetime(2026, 11, 21, 21, 30),
                                                        created_at=datetime(2026, 11, 1))])
    db.session.commit()
    found = desk.search("0367", date_from="2026-11-22", date_to="2026-11-22")
    assert [c["unique_id"] for c in found["calls"]] == ["c-0367-5000"]


def test_calls_in_progress_are_found_among_a_long_history(desk):
    db.session.execute(Call.__table__.insert(), [a_call(7000, status="ringing", call_status=None)])
    db.session.commit()
    found = desk.search("0367", result="in_progress")
    assert [c["unique_id"] for c in found["calls"]] == ["c-0367-7000"] and found["total"] == 1


def test_a_cursor_not_given_by_a_page_is_refused(desk):
    for bad in ("yesterday", "2026-11-20T09:00:00~x", "~5"):
        with pytest.raises(ValidationFailed) as err:
            desk.search("0367", before=bad)
        assert "before" in err.value.errors


def test_the_api_answers_a_bad_cursor_with_400(app, desk):
    from tests.conftest import ADMIN_TOKEN

    r = app.test_client().get("/ms-admin/api/calls/0367?before=nope", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 400 and r.json["field"] == "before"
    r = app.test_client().get("/ms-admin/api/calls/0367", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and r.json["total"] == 120 and r.json["next"]
    assert set(r.json) == {"calls", "total", "capped", "next"}


def grown(conn):
    """3,000 more calls of the enterprise and 3,000 of another, 6,000 journal rows of theirs and of another
    integration, their links, and fresh statistics (rolled back with the EXPLAINs)."""
    conn.execute(Call.__table__.insert(), [a_call(10_000 + n, number) for n in range(3000) for number in ("0367", "0900")])
    logs = exchange_log._LOGS
    conn.execute(logs.insert(), [{"enterprise_number": number, "integration_type": kind, "event_type": "event.dial",
                                  "request_data": {"unique_id": f"c-{number}-{n}"}, "status": "success",
                                  "created_at": START}
                                 for n in range(2000) for number, kind in (("0367", "ms"), ("0900", "bitrix"),
                                                                            ("0900", "ms"))])
    conn.execute(text("INSERT INTO ms_call_journal (log_id, enterprise_number, unique_id) SELECT id, enterprise_number,"
                      " 'grown-' || id FROM integration_logs WHERE integration_type = 'ms'"
                      " AND id NOT IN (SELECT log_id FROM ms_call_journal)"))
    for table in ("ms_calls", "integration_logs", "ms_call_journal"):
        conn.execute(text(f"ANALYZE {table}"))


def test_every_query_of_the_desk_is_an_index_lookup_of_the_enterprise(ctx, desk):
    """First page, a page far on, a day, a filter, a call in progress, one call's story, the journal's
    pages and the enterprise's panel: each statement walks an index bounded by the enterprise
    (tests/explain.py), on both databases."""
    exchange_log.add("0367", "event.dial", {"unique_id": "c-0367-5"})
    db.session.commit()
    far = desk.search("0367")["next"]
    admin = ctx.extensions["ms"].admin
    with selects() as seen:
        desk.search("0367")
        desk.search("0367", before=far)
        desk.search("0367", date_from="2026-11-20", date_to="2026-11-20", direction="in", result="missed")
        desk.search("0367", result="in_progress")
        assert desk.timeline("0367", "c-0367-5")["timeline"]
        admin.journal("0367")
        admin.journal("0367", call="c-0367-5")
        admin.journal("0367", status="problems", before=far)
        admin.panel("0367")
    assert len(seen) >= 20
    assert_index_access(seen, rows=grown)
