"""The admin in headless Chromium (Playwright driving Debian's /usr/bin/chromium) against the real
server and the sandbox: log in, save a config (with a field error first), regenerate the webhook URL,
test the connection, show a test card, open the journal. Screenshots go to MS_SCREENSHOT_DIR (the
README's are made with MS_SCREENSHOT_DIR=docs/screenshots) or the test's temporary directory."""
import os
import time
from pathlib import Path

import pytest

from msapp.db.models import Enterprise
from msapp.extensions import db
from tests.conftest import ADMIN_TOKEN, IN_CI
from tests.service_harness import Service, shown_cards

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def _need_browser():
    reason = None
    if not os.path.exists(CHROMIUM):
        reason = f"Chromium is not installed at {CHROMIUM} (Debian package 'chromium')"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (test extras)"
    if reason:
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def page(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="ru-RU")
        yield context.new_page()
        context.close()
        browser.close()


@pytest.fixture
def svc(tmp_path, sandbox):
    service = Service(f"sqlite:///{tmp_path / 'ms.db'}", tmp_path, sandbox)
    with service.app.app_context():
        db.session.add(Enterprise(number="0367", name="ООО Ромашка Телеком", secret="s", integrations_config={}))
        db.session.commit()
    yield service
    service.stop()


def shots(tmp_path) -> Path:
    out = Path(os.environ.get("MS_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_operator_sets_up_an_enterprise(page, svc, sandbox, tmp_path):
    out = shots(tmp_path)
    blocked = []  # the page must work under the admin's Content-Security-Policy: nothing blocked
    page.on("console", lambda msg: blocked.append((msg.text, msg.location, page.url)) if "Content Security Policy" in msg.text else None)
    keys = sandbox.state.keys()["demo"]
    page.goto(f"{svc.url}/ms-admin/")
    assert "/ms-admin/login" in page.url
    page.screenshot(path=str(out / "login.png"))
    page.get_by_label("Токен администратора").fill("wrong")
    page.get_by_role("button", name="Войти").click()
    assert page.get_by_role("alert").inner_text() == "Неверный токен администратора"
    page.get_by_label("Токен администратора").fill(ADMIN_TOKEN)
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.get_by_role("link", name="0367").wait_for()
    page.screenshot(path=str(out / "enterprises.png"))

    page.get_by_role("link", name="0367").click()
    page.get_by_role("heading", name="Настройки интеграции").wait_for()
    page.get_by_label("Интеграция включена").check()
    page.get_by_label("Ключ доступа Phone API").fill(keys["phone_api_key"])
    page.get_by_label("Токен JSON API").fill(keys["json_api_token"])
    page.get_by_label("Часовой пояс АТС").fill("Mars/Olympus")
    page.get_by_role("button", name="Сохранить").click()
    field = page.get_by_label("Часовой пояс АТС")
    page.wait_for_selector("#timezone[aria-invalid=true]")
    assert "неизвестный часовой пояс" in page.locator("#err-timezone").inner_text()
    page.screenshot(path=str(out / "config-error.png"), full_page=True)
    with svc.app.app_context():
        assert "ms" not in (db.session.get(Enterprise, "0367").integrations_config or {})

    field.fill("Europe/Minsk")
    page.get_by_label("Ключ доступа Phone API").fill(keys["phone_api_key"])
    page.get_by_label("Токен JSON API").fill(keys["json_api_token"])
    page.get_by_role("button", name="Сохранить").click()
    page.locator(".toast", has_text="Настройки сохранены").wait_for()
    with svc.app.app_context():
        db.session.expire_all()
        cfg = db.session.get(Enterprise, "0367").integrations_config["ms"]
        assert cfg["enabled"] is True and cfg["integration_code"] == keys["phone_api_key"]
    assert keys["phone_api_key"] not in page.content()

    old = page.locator("#webhook_url").input_value()
    assert "/ms/webhook/" in old
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Создать новый адрес").click()
    page.wait_for_function("old => document.querySelector('#webhook_url').value !== old", arg=old)
    assert page.locator("#webhook_url").input_value() != old

    page.get_by_role("button", name="Проверить подключение").click()
    page.get_by_text("Ключ принят").wait_for()
    assert page.get_by_text("Токен принят").is_visible()
    page.get_by_role("cell", name="Петрова Анна").wait_for()
    page.screenshot(path=str(out / "enterprise.png"), full_page=True)

    row = page.get_by_role("row").filter(has_text="Петрова Анна")
    row.get_by_role("button", name="Показать тестовую карточку").click()
    row.get_by_text("показана").wait_for()
    assert list(shown_cards(sandbox)) == ["151"]
    deadline = time.time() + 15
    while shown_cards(sandbox) and time.time() < deadline:
        time.sleep(0.2)
    events = [e["eventType"] for c in sandbox.state.accounts["demo"].calls.values() for e in c["events"]]
    assert events == ["SHOW", "HIDE"] and shown_cards(sandbox) == {}

    # the toll-fraud guard's section: a bad limit is refused in Russian, then countries and limits are saved
    limit = page.get_by_label("Звонков в минуту с одного добавочного")
    limit.fill("0")
    page.get_by_role("button", name="Сохранить").click()  # the browser itself refuses it (min=1)
    assert limit.evaluate("e => e.validity.rangeUnderflow") is True
    page.wait_for_timeout(300)
    with svc.app.app_context():
        db.session.expire_all()
        assert db.session.get(Enterprise, "0367").integrations_config["ms"]["click_to_call"][
            "max_per_extension_per_minute"] == 10
    limit.fill("5")
    page.get_by_label("Разрешённые страны назначения").select_option(["BY", "RU"])
    page.get_by_label("Запретить платные и специальные номера").uncheck()
    page.get_by_role("button", name="Сохранить").click()
    page.locator(".toast", has_text="Настройки сохранены").last.wait_for()
    with svc.app.app_context():
        db.session.expire_all()
        c2c = db.session.get(Enterprise, "0367").integrations_config["ms"]["click_to_call"]
        assert c2c["allowed_countries"] == ["BY", "RU"] and c2c["max_per_extension_per_minute"] == 5
        assert c2c["block_premium"] is False
    assert page.locator("#c2c_countries option:checked").all_inner_texts() == ["Беларусь (BY)", "Россия (RU)"]

    # missed calls: employee mode without an employee is refused in Russian; then a full setup is saved
    page.get_by_label("Создавать задачу по пропущенному звонку").check()
    page.get_by_label("Кому задача").select_option("employee")
    page.get_by_role("button", name="Сохранить").click()
    page.wait_for_selector("#mc_fallback[aria-invalid=true]")
    assert "выберите сотрудника" in page.locator("#err-missed_calls-fallback_employee").inner_text()
    page.get_by_role("button", name="Загрузить сотрудников из МойСклад").click()
    page.get_by_role("button", name="Обновить сотрудников из МойСклад").wait_for()
    page.get_by_label("Сотрудник для задач по умолчанию").select_option(label="Петрова Анна")
    page.get_by_label("Срок задачи, минут после звонка").fill("45")
    page.get_by_role("button", name="Сохранить").click()
    page.locator(".toast", has_text="Настройки сохранены").last.wait_for()
    with svc.app.app_context():
        db.session.expire_all()
        mc = db.session.get(Enterprise, "0367").integrations_config["ms"]["missed_calls"]
        assert mc == {"create_task": True, "assignee": "employee", "fallback_employee":
                      "0a9c1f00-0000-4000-8000-000000000151", "due_minutes": 45, "close_on_callback": True,
                      "only_known_customers": False}
    page.screenshot(path=str(out / "enterprise-settings.png"), full_page=True)

    page.get_by_role("link", name="Журнал").click()
    page.get_by_role("heading", name="Журнал обмена").wait_for()
    assert page.locator("table.journal tbody tr").count() >= 3
    page.locator("details summary").first.click()
    page.screenshot(path=str(out / "journal.png"), full_page=True)
    page.get_by_label("Результат").select_option("error")
    page.wait_for_timeout(300)
    assert "Записей" in page.locator("#journal").inner_text()
    assert blocked == []


def test_support_finds_a_call_and_reads_its_story(page, svc, sandbox, tmp_path):
    out = shots(tmp_path)
    keys = sandbox.state.keys()["demo"]
    svc.configure(enabled=True, integration_code=keys["phone_api_key"], api_token=keys["json_api_token"])
    for kind, extra in (("dial", {"extensions": ["150", "151"]}), ("answer", {"extension": "151"}),
                        ("hangup", {"call_status": "answered"})):
        svc.event(unique_id="1757772742.60", event_type=kind, direction="in", phone="+375297111222", **extra)
        svc.wait_idle()
    svc.event(unique_id="other.1", event_type="dial", direction="in", phone="+375296254070", extensions=["150"])
    svc.wait_idle()
    page.goto(f"{svc.url}/ms-admin/login")
    page.get_by_label("Токен администратора").fill(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.get_by_role("link", name="0367").wait_for()  # logged in (a goto now would cut the login short)
    page.get_by_role("link", name="0367").click()
    page.get_by_role("link", name="Звонки").click()
    page.get_by_role("heading", name="Звонки").wait_for()
    assert page.locator("#calls tbody tr").count() == 2
    page.get_by_label("Номер, unique_id АТС или id звонка в МойСклад").fill("8 029 711-12-22")  # another format
    deadline = time.time() + 10  # (no wait_for_function: the admin's CSP forbids the eval it needs)
    while page.locator("#calls tbody tr").count() != 1 and time.time() < deadline:
        page.wait_for_timeout(100)
    row = page.locator("#calls tbody tr").first
    assert "+375297111222" in row.inner_text() and "151" in row.inner_text() and "принят" in row.inner_text()
    page.screenshot(path=str(out / "calls.png"), full_page=True)
    row.get_by_role("link").first.click()
    page.get_by_role("heading", name="Что происходило").wait_for()
    story = page.locator("table.timeline").inner_text()
    assert "событие АТС: dial" in story and "карточка показана: доб. 150" in story and "разговор начат: доб. 151" in story
    page.locator("table.timeline details summary").first.click()
    page.screenshot(path=str(out / "call.png"), full_page=True)
