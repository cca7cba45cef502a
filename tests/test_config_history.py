"""Config history: every change of an enterprise's config (admin page, JSON API, CLI) records when, by
whom and which fields; never a value, least of all a secret."""
import hashlib
import re

from msapp.db.models import Enterprise
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN
from tests.test_cli import run

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_changes_from_the_page_the_api_and_the_cli(app):
    with app.app_context():
        db.session.add(Enterprise(number="0367", name="Co", integrations_config={}))
        db.session.commit()
    c = app.test_client()
    page = c.get("/ms-admin/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    c.post("/ms-admin/login", data={"token": ADMIN_TOKEN, "csrf_token": token})
    csrf = re.search(r'"X-CSRFToken": "([^"]+)"', c.get("/ms-admin/").text).group(1)
    r = c.post("/ms-admin/config/0367", headers={"HX-Request": "true", "X-CSRFToken": csrf},
               data={"enabled": "on", "timezone": "Europe/Moscow", "default_region": "BY",
                     "api_token": "very-secret-token-123"})
    assert r.status_code == 200
    api = app.test_client()
    assert api.put("/ms-admin/api/config/0367", headers=BEARER,
                   json={"click_to_call": {"max_per_extension_per_minute": 3}}).status_code == 200
    assert api.put("/ms-admin/api/config/0367", headers=BEARER, json={"timezone": "Europe/Moscow"}).status_code == 200
    assert run(app, "enterprise", "configure", "0367", '{"signature_mode": "enforce"}').exit_code == 0
    assert api.post("/ms-admin/api/config/0367/webhook-uuid", headers=BEARER).status_code == 200
    history = api.get("/ms-admin/api/config/0367/history", headers=BEARER)
    assert history.status_code == 200
    changes = history.get_json()["changes"]
    assert [c["by"] for c in changes][:3] == ["api", "cli", "api"]  # newest first; the no-op PUT left no row
    assert changes[0]["fields"] == ["webhook_url"] and changes[1]["fields"] == ["signature_mode"]
    assert changes[2]["fields"] == ["click_to_call.max_per_extension_per_minute"]
    first = changes[-1]
    # the browser session by a random id: nothing derived from the admin token is written down
    assert re.fullmatch(r"admin session [0-9a-f]{12}", first["by"])
    token_hash = hashlib.sha256(("ms-admin:" + ADMIN_TOKEN).encode()).hexdigest()
    assert token_hash[:8] not in history.text and token_hash[:8] not in c.get_cookie("session").value
    assert {"enabled", "timezone", "api_token", "webhook_url"} <= set(first["fields"])
    assert all(c["at"].endswith("Z") for c in changes)
    assert "very-secret-token-123" not in history.text
    shown = c.get("/ms-admin/?enterprise_number=0367").text
    assert "История изменений" in shown and "командная строка" in shown and "very-secret-token-123" not in shown


def test_history_of_an_unknown_enterprise_is_404(app):
    r = app.test_client().get("/ms-admin/api/config/9999/history", headers=BEARER)
    assert r.status_code == 404 and r.get_json()["field"] == "enterprise_number"
