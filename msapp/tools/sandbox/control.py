"""The sandbox's control API (/sandbox/api/*) and the page showing what each employee sees (/sandbox/)."""
from __future__ import annotations

import dataclasses

from flask import Blueprint, current_app, jsonify, render_template, request

from msapp.tools.sandbox.state import Faults

bp = Blueprint("sandbox_control", __name__, url_prefix="/sandbox", template_folder="templates")


def state():
    return current_app.extensions["sandbox"]


def _account():
    st = state()
    name = request.args.get("account") or "demo"
    acc = st.accounts.get(name)
    if acc is None:
        return None, (jsonify({"error": f"no account {name!r}", "field": "account"}), 404)
    return acc, None


@bp.get("/api/keys")
def keys():
    """The demo account's Phone API key and JSON API token (and every other account's)."""
    all_keys = state().keys()
    return jsonify({**all_keys["demo"], "accounts": all_keys})


@bp.post("/api/accounts")
def add_account():
    name = str((request.get_json(silent=True) or {}).get("name") or "").strip()
    if not name or len(name) > 64:
        return jsonify({"error": "name is required", "field": "name"}), 400
    acc = state().add_account(name)
    return jsonify({"name": acc.name, "phone_api_key": acc.phone_key, "json_api_token": acc.json_token})


@bp.get("/api/requests")
def requests_log():
    st = state()
    since = request.args.get("since", type=int, default=0)
    with st.lock:
        rows = [r for r in st.log[since:] if _wanted(r)]
        return jsonify({"requests": rows, "total": len(st.log), "own_429": st.own_429,
                        "max_in_flight": st.max_in_flight_seen})


def _wanted(row: dict) -> bool:
    for key in ("api", "account", "method"):
        if request.args.get(key) and row.get(key) != request.args[key]:
            return False
    return True


@bp.route("/api/faults", methods=["GET", "POST"])
def faults():
    st = state()
    if request.method == "POST":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify({"error": "body must be a JSON object"}), 400
        names = {f.name for f in dataclasses.fields(Faults)}
        unknown = set(body) - names
        if unknown:
            return jsonify({"error": "unknown fault", "field": sorted(unknown)[0]}), 400
        try:
            new = Faults(**{**dataclasses.asdict(Faults()), **body})
        except TypeError as exc:
            return jsonify({"error": str(exc)}), 400
        with st.lock:
            st.faults = new
    return jsonify(dataclasses.asdict(st.faults))


@bp.post("/api/reset")
def reset():
    state().reset()
    return jsonify({"status": "reset", **state().keys()["demo"]})


@bp.get("/api/calls")
def calls():
    acc, err = _account()
    if err:
        return err
    prefix = request.args.get("prefix")
    with state().lock:
        rows = [c for c in acc.calls.values() if not prefix or str(c.get("externalId") or "").startswith(prefix)]
        if request.args.get("summary"):  # counts only: cheap to poll while a benchmark waits
            return jsonify({"calls": len(rows), "ended": sum(1 for c in rows if c.get("endTime"))})
        return jsonify({"calls": rows})


@bp.get("/api/cards")
def cards():
    acc, err = _account()
    if err:
        return err
    with state().lock:
        return jsonify({ext: sorted(shown) for ext, shown in acc.cards.items() if shown})


@bp.get("/api/counterparties")
def counterparties():
    acc, err = _account()
    if err:
        return err
    with state().lock:
        return jsonify({"counterparties": list(acc.counterparties.values()), "orders": acc.orders})


@bp.get("/")
def page():
    """Per employee: the call cards shown now and the call history, as a MoySklad user sees them."""
    acc, err = _account()
    if err:
        return err
    st = state()
    with st.lock:
        people = []
        for emp in acc.employees:
            ext = emp.get("extension")
            shown = acc.cards.get(ext, {}) if ext else {}
            history = [c for c in acc.calls.values()
                       if ext and (c.get("extension") == ext or any(e.get("extension") == ext for e in c["events"]))]
            people.append({"employee": emp, "cards": [(acc.calls[cid], info) for cid, info in shown.items()
                                                       if cid in acc.calls],
                           "history": sorted(history, key=lambda c: c["created"], reverse=True)[:50]})
        names = {cp["id"]: cp["name"] for cp in acc.counterparties.values()}
        tasks = sorted(acc.tasks.values(), key=lambda t: t["created"], reverse=True)[:50]
        staff = {e["id"]: e["name"] for e in acc.employees}
        return render_template("sandbox.html", account=acc, accounts=sorted(st.accounts), people=people,
                               names=names, tasks=tasks, staff=staff)
