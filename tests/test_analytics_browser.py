"""The analytics page in headless Chromium against the real server: a seeded demo week renders four SVG
charts whose bars, legends and tooltips carry the JSON's figures, the period switches through htmx under
the admin's CSP, and screenshots of each chart go to MS_SCREENSHOT_DIR (docs/screenshots for the README)."""
import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import func, select

from msapp.clock import utcnow
from msapp.db.models import AnalyticsMark, Directory
from msapp.extensions import db
from msapp.tools.demo_week import seed_week
from tests.conftest import ADMIN_TOKEN
from tests.test_admin_browser import page, shots, svc  # noqa: F401 - Chromium, screenshots, the service

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
MINSK = ZoneInfo("Europe/Minsk")


@pytest.fixture
def seeded(svc):  # noqa: F811 - the admin tests' service with its enterprise, here with a demo week
    with svc.app.app_context():
        svc.app.extensions["ms"].configs.save("0367", {"timezone": "Europe/Minsk"})
        seed_week("0367", utcnow(), MINSK)
        db.session.add(Directory(enterprise_number="0367", logins_known=True, fetched_at=utcnow(), employees=[
            {"id": "e150", "extension": "150", "name": "Иванов Иван"},
            {"id": "e151", "extension": "151", "name": "Петрова Анна"},
            {"id": "e152", "extension": "152", "name": "Сидоров Олег"}]))
        db.session.commit()
        deadline = time.monotonic() + 30
        while db.session.scalar(select(func.count()).select_from(AnalyticsMark)):  # the ticker's rebuild
            assert time.monotonic() < deadline, "the analytics of the seeded week were not built"
            db.session.commit()
            time.sleep(0.1)
    return svc


def test_the_analytics_page_draws_the_figures_and_switches_period(page, seeded, tmp_path):  # noqa: F811
    out = shots(tmp_path)
    blocked = []
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(f"{seeded.url}/ms-admin/login")
    page.get_by_label("Токен администратора").fill(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.get_by_role("link", name="0367").wait_for()
    page.goto(f"{seeded.url}/ms-admin/analytics?enterprise_number=0367&period=7d")
    page.locator("svg[data-chart=calls]").wait_for()
    report = requests.get(f"{seeded.url}/ms-admin/api/analytics/0367?period=7d",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()

    assert page.locator("svg.chart").count() == 4
    assert page.locator("[data-figure=calls] .num").inner_text() == str(report["totals"]["calls"])
    assert page.locator("#demo-note").is_visible()
    bars = page.locator("svg[data-chart=calls] rect.bar").evaluate_all(
        "els => els.map(e => [e.dataset.at, e.dataset.key, +e.dataset.value, e.querySelector('title').textContent])")
    for at, key, value, title in bars:
        row = next(r for r in report["series"] if r["at"] == at)
        assert row[key] == value and title.endswith(f": {value}")
    assert sum(v for _, _, v, _ in bars) == report["totals"]["calls"]
    assert page.locator("svg[data-chart=calls] + figcaption li").count() == 6
    cb = report["callbacks"]
    parts = page.locator("svg[data-chart=callbacks] rect.bar").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.key, +e.dataset.value]))")
    assert parts == {k: cb[k] for k in ("within_15m", "within_1h", "same_day", "later", "never") if cb[k]}
    heat = page.locator("svg[data-chart=heatmap] rect.cell").evaluate_all("els => els.map(e => +e.dataset.value)")
    assert len(heat) == 7 * 24 and sum(heat) == report["totals"]["incoming"]
    names = page.locator("#employees tbody tr td:first-child").all_inner_texts()
    assert any("Иванов Иван" in n for n in names)
    assert page.locator("#waiting tbody tr").count() == min(len(cb["waiting"]), 50) or not cb["waiting"]

    page.screenshot(path=str(out / "analytics.png"), full_page=True)
    for kind in ("calls", "quality", "callbacks", "heatmap"):
        page.locator(f"figure:has(svg[data-chart={kind}])").screenshot(path=str(out / f"analytics-{kind}.png"))

    yesterday = (utcnow().replace(tzinfo=ZoneInfo("UTC")).astimezone(MINSK) - timedelta(days=1)).date().isoformat()
    page.locator("a[data-period=yesterday]").click()  # htmx: the section is swapped, the URL pushed
    page.locator("#period-shown", has_text=f"{yesterday} — {yesterday}").wait_for()
    hours = page.locator("svg[data-chart=calls] rect.bar").evaluate_all("els => els.map(e => e.dataset.at)")
    assert hours and all(at.startswith(yesterday + "T") for at in hours)
    assert "period=yesterday" in page.url
    page.locator("#employees thead a", has_text="Разговор").click()
    page.locator("#employees thead a[aria-sort=descending]", has_text="Разговор").wait_for()
    assert blocked == []
