"""`./ms.sh demo`: the sandbox and the service side by side, a demo enterprise, and a few real calls.

Uses its own data directory (`instance/demo/`) and ports (service 8024, sandbox 8081 by default) so it
never touches a running service's data.
"""
from __future__ import annotations

import os
import shutil
import time
from zoneinfo import ZoneInfo

import click
import requests

from msapp.clock import utcnow

DEMO_NUMBER = "0367"


def _post(base: str, path: str, body: dict) -> None:
    r = requests.post(f"{base}/internal/ms/{path}", json={"enterprise_number": DEMO_NUMBER, **body}, timeout=10)
    r.raise_for_status()


def play_calls(base: str, pause: float = 1.0) -> None:
    """Four realistic calls: answered (three phones ring), missed (it becomes a callback task), outgoing, and
    the callback that closes the task."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    uid = f"{int(time.time())}"
    click.echo("  1) incoming from ООО Ромашка (8 029 711-12-22): 150, 151, 152 ring; 151 answers")
    call = {"unique_id": f"{uid}.1", "direction": "in", "phone": "80297111222", "start_time": now}
    _post(base, "call-event", {**call, "event_type": "dial", "extensions": ["150", "151", "152"]})
    time.sleep(pause * 2)
    _post(base, "call-event", {**call, "event_type": "answer", "extension": "151"})
    time.sleep(pause * 3)
    _post(base, "call-event", {**call, "event_type": "hangup", "call_status": "answered",
                               "record_url": "https://pbx.example.by/records/demo-1.mp3"})
    click.echo("  2) incoming from an unknown number, nobody answers (a new customer, and a task «перезвонить»)")
    call = {"unique_id": f"{uid}.2", "direction": "in", "phone": "+375 29 100-20-30"}
    _post(base, "call-event", {**call, "event_type": "dial", "extensions": ["150", "152"]})
    time.sleep(pause * 2)
    _post(base, "call-event", {**call, "event_type": "hangup", "call_status": "missed"})
    click.echo("  3) outgoing from 152 to ИП Васильев (+375 33 123-45-67)")
    call = {"unique_id": f"{uid}.3", "direction": "out", "phone": "+375331234567", "extension": "152"}
    _post(base, "call-event", {**call, "event_type": "dial"})
    time.sleep(pause)
    _post(base, "call-event", {**call, "event_type": "answer"})
    time.sleep(pause * 2)
    _post(base, "call-event", {**call, "event_type": "hangup", "call_status": "answered"})
    time.sleep(pause * 2)
    click.echo("  4) 151 calls the missed number back and gets through (the task is closed with a note)")
    call = {"unique_id": f"{uid}.4", "direction": "out", "phone": "+375291002030", "extension": "151"}
    _post(base, "call-event", {**call, "event_type": "dial"})
    time.sleep(pause)
    _post(base, "call-event", {**call, "event_type": "answer"})
    time.sleep(pause * 2)
    _post(base, "call-event", {**call, "event_type": "hangup", "call_status": "answered"})


def run_demo(port: int, sandbox_port: int, once: bool, pause: float) -> None:
    from msapp import create_app
    from msapp.db.models import Enterprise
    from msapp.db.schema import upgrade_database
    from msapp.extensions import db
    from msapp.tools.demo_week import seed_week
    from msapp.tools.sandbox import SandboxServer
    from msapp.web.server import make_server, serve_in_thread

    sandbox = SandboxServer(port=sandbox_port).start()
    keys = sandbox.state.keys()["demo"]
    data_dir = os.path.abspath(os.path.join("instance", "demo"))
    shutil.rmtree(data_dir, ignore_errors=True)
    app = create_app({"MS_INSTANCE_DIR": data_dir, "MS_DATABASE_URL": f"sqlite:///{data_dir}/ms.db",
                      "MS_PORT": str(port), "MS_PHONE_API_URL": sandbox.phone_url,
                      "MS_JSON_API_URL": sandbox.json_url, "MS_PUBLIC_URL": f"http://127.0.0.1:{port}"})
    upgrade_database(app)
    with app.app_context():
        db.session.add(Enterprise(number=DEMO_NUMBER, name="Демо-компания", integrations_config={}))
        db.session.commit()
        app.extensions["ms"].configs.save(DEMO_NUMBER, {
            "enabled": True, "integration_code": keys["phone_api_key"], "api_token": keys["json_api_token"],
            "incoming_call_actions": {"create_customers": True, "create_orders": "new_customer"},
            "missed_calls": {"create_task": True, "fallback_employee": "0a9c1f00-0000-4000-8000-000000000151"}})
        seeded = seed_week(DEMO_NUMBER, utcnow(), ZoneInfo("Europe/Minsk"))
        db.session.commit()
    server = make_server(app, "127.0.0.1", port, threads=8)
    serve_in_thread(server)
    app.extensions["ms"].pool.start()
    base = f"http://127.0.0.1:{port}"
    click.echo(f"service  {base}  (data in {data_dir})")
    click.echo(f"sandbox  {sandbox.url}")
    click.echo(f"watch the call cards and history: {sandbox.url}/sandbox/")
    click.echo(f"analytics (a seeded demo week of {seeded} calls): "
               f"{base}/ms-admin/analytics?enterprise_number={DEMO_NUMBER}")
    click.echo("playing calls:")
    play_calls(base, pause)
    deadline = time.time() + 30
    with app.app_context():
        while time.time() < deadline and app.extensions["ms"].queue.stats()["depth"]:
            time.sleep(0.2)
    acc = sandbox.state.accounts["demo"]
    click.echo(f"done: MoySklad (sandbox) holds {len(acc.calls)} calls, "
               f"{sum(1 for c in acc.counterparties.values() if c.get('externalCode', '').startswith('ms-call'))} "
               f"new customer(s), {len(acc.orders)} order(s), "
               f"{len(acc.tasks)} callback task(s) ({sum(1 for t in acc.tasks.values() if t.get('done'))} closed); "
               f"{sum(1 for r in sandbox.state.log if r['api'] == 'phone')} Phone API requests")
    click.echo(f"the service's journal (integration_logs) is in {data_dir}/ms.db")
    if once:
        app.extensions["ms"].pool.stop()
        server.close()
        sandbox.stop()
        return
    click.echo("press Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app.extensions["ms"].pool.stop()
