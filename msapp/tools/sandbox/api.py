"""The sandbox's MoySklad faces: Phone API 1.0 under /api/phone/1.0, JSON API 1.2 under /api/remap/1.2.

Every request passes MoySklad's checks in MoySklad's order: gzip in Accept-Encoding (else 415, empty
body), Accept (if sent) exactly `application/json;charset=utf-8`, JSON bodies, credentials (401),
injected faults, the rate and parallel limits (429 with X-Lognex-Retry-After), then the route.
"""
from __future__ import annotations

import gzip
import json
import time

from flask import Blueprint, Response, current_app, g, request

from msapp.tools.sandbox.state import SandboxError

ACCEPT = "application/json;charset=utf-8"

phone_bp = Blueprint("sandbox_phone", __name__, url_prefix="/api/phone/1.0")
remap_bp = Blueprint("sandbox_remap", __name__, url_prefix="/api/remap/1.2")


def state():
    return current_app.extensions["sandbox"]


def phone_base() -> str:
    return request.host_url.rstrip("/") + phone_bp.url_prefix


def remap_base() -> str:
    return request.host_url.rstrip("/") + remap_bp.url_prefix


def reply(body, status: int = 200, headers: dict | None = None) -> Response:
    data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    resp = Response(data, status=status, headers=headers or {})
    if data:
        resp.headers["Content-Type"] = ACCEPT
    return resp


def _guard(api: str):
    st = state()
    g.sandbox_api = api
    g.sandbox_started = time.time()
    g.sandbox_account = None
    g.sandbox_admitted = False
    try:
        body = request.get_data(cache=True)
        g.sandbox_body = body.decode("utf-8", "replace")[:4000] if body else None
    except Exception:  # noqa: BLE001 - an unreadable body is logged as absent
        g.sandbox_body = None
    if "gzip" not in request.headers.get("Accept-Encoding", "").lower():
        raise SandboxError(415, "gzip is required")
    accept = request.headers.get("Accept")
    # curl, used in MoySklad's own examples, sends */*: only other explicit types are refused.
    if accept and accept.replace(" ", "").lower() not in (ACCEPT, "*/*"):
        raise SandboxError(400, f"Заголовок Accept должен быть '{ACCEPT}'", 1062)
    if request.method in ("POST", "PUT"):
        if not request.mimetype == "application/json":
            raise SandboxError(415, "Content-Type must be application/json")
        try:
            g.sandbox_json = json.loads(request.get_data(cache=True) or b"null")
        except ValueError:
            raise SandboxError(400, "Ошибка формата JSON", 2001) from None
        if not isinstance(g.sandbox_json, dict):
            raise SandboxError(400, "Тело запроса должно быть объектом JSON", 2001)
    if api == "phone":
        credential = request.headers.get("Lognex-Phone-Auth-Token")
    else:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential if scheme.lower() == "bearer" else None
    acc = st.account_for(api, credential)
    g.sandbox_account = acc.name
    latency, error = st.admit(api, acc.name)
    if latency:
        time.sleep(latency)
    if error is not None:
        raise error
    g.sandbox_admitted = True
    g.acc = acc


def _finish(resp: Response) -> Response:
    st = state()
    if g.get("sandbox_admitted") and resp.status_code < 300:
        with st.lock:
            lost = st.faults.take_lost(g.sandbox_api, g.sandbox_account)
        if lost:  # the change is applied; only the answer is lost
            resp = reply({"errors": [{"error": "Gateway Timeout (answer lost, injected)", "code": 504}]}, 504)
    st.record({"t": g.get("sandbox_started"), "done": time.time(), "api": g.get("sandbox_api"),
               "account": g.get("sandbox_account"), "method": request.method, "path": request.path,
               "query": request.query_string.decode("utf-8", "replace"), "status": resp.status_code,
               "body": g.get("sandbox_body"), "agent": request.headers.get("User-Agent", "")})
    if resp.get_data() and resp.status_code != 415:
        resp.set_data(gzip.compress(resp.get_data(), compresslevel=1))
        resp.headers["Content-Encoding"] = "gzip"
    return resp


def _teardown(_exc):
    if g.get("sandbox_admitted"):
        state().release(g.sandbox_api, g.sandbox_account)


for _bp, _api in ((phone_bp, "phone"), (remap_bp, "json")):
    _bp.before_request(lambda _api=_api: _guard(_api))
    _bp.after_request(_finish)
    _bp.teardown_request(_teardown)


def _filter(raw: str | None) -> list[tuple[str, str, str]]:
    """MoySklad filter `a=1;b~x` -> [(field, op, value)] (operators = != ~ ~= =~; `\\;` escapes)."""
    out = []
    if not raw:
        return out
    parts, cur, i = [], "", 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] == ";":
            cur += ";"
            i += 2
            continue
        if raw[i] == ";":
            parts.append(cur)
            cur = ""
        else:
            cur += raw[i]
        i += 1
    parts.append(cur)
    for part in filter(None, parts):
        for op in ("!=", "~=", "=~", "~", "="):
            name, sep, value = part.partition(op)
            if sep and name and all(c.isalnum() or c in "._" for c in name):
                out.append((name, op, value))
                break
        else:
            raise SandboxError(400, f"Ошибка фильтрации: '{part}'", 1034, "filter")
    return out


def _match(value, op: str, expected: str) -> bool:
    text = "" if value is None else str(value)
    low, exp = text.lower(), expected.lower()
    return {"=": text == expected, "!=": text != expected, "~": exp in low,
            "~=": low.startswith(exp), "=~": low.endswith(exp)}[op]


def _meta(href: str, type_: str) -> dict:
    return {"href": href, "type": type_, "mediaType": "application/json"}


# ---- Phone API 1.0 --------------------------------------------------------------------------------
@phone_bp.get("/employee")
def phone_employees():
    rows = []
    conditions = _filter(request.args.get("filter"))
    for emp in g.acc.employees:
        if not emp.get("extension"):
            continue
        if all(_match(emp.get("extension"), op, v) for name, op, v in conditions if name == "extention"):
            rows.append({"meta": _meta(f"{remap_base()}/entity/employee/{emp['id']}", "employee"),
                         "extention": emp["extension"]})
    return reply({"employees": rows})


@phone_bp.post("/call")
def phone_create_call():
    return reply(state().create_call(g.acc, g.sandbox_json, phone_base(), remap_base()))


@phone_bp.get("/call/<call_id>")
def phone_get_call(call_id):
    call = state().find_call(g.acc, call_id=call_id)
    return reply(state().call_view(g.acc, call, phone_base(), remap_base()))


@phone_bp.put("/call/<call_id>")
def phone_update_call(call_id):
    call = state().find_call(g.acc, call_id=call_id)
    return reply(state().update_call(g.acc, call, g.sandbox_json, phone_base(), remap_base()))


@phone_bp.put("/call/extid/<path:external_id>")
def phone_update_call_extid(external_id):
    call = state().find_call(g.acc, external_id=external_id)
    return reply(state().update_call(g.acc, call, g.sandbox_json, phone_base(), remap_base()))


@phone_bp.post("/call/<call_id>/event")
def phone_event(call_id):
    state().apply_event(g.acc, state().find_call(g.acc, call_id=call_id), g.sandbox_json)
    return reply(None, 204)


@phone_bp.post("/call/extid/<path:external_id>/event")
def phone_event_extid(external_id):
    state().apply_event(g.acc, state().find_call(g.acc, external_id=external_id), g.sandbox_json)
    return reply(None, 204)


# ---- JSON API 1.2 ---------------------------------------------------------------------------------
def _list(rows: list, entity: str) -> dict:
    try:
        limit = int(request.args.get("limit", 1000))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise SandboxError(400, "Неверное значение limit/offset", 1034) from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise SandboxError(400, "limit должен быть от 1 до 1000", 1034, "limit")
    if request.args.get("expand") and limit > 100:
        raise SandboxError(400, "expand работает только при limit не больше 100", 1034, "expand")
    page = rows[offset:offset + limit]
    return {"meta": {"href": f"{remap_base()}/entity/{entity}", "type": entity, "mediaType": "application/json",
                     "size": len(rows), "limit": limit, "offset": offset}, "rows": page}


def _counterparty_view(cp: dict, expand: bool) -> dict:
    base = remap_base()
    out = {k: v for k, v in cp.items() if k not in ("contactpersons", "owner") and v is not None}
    out["meta"] = _meta(f"{base}/entity/counterparty/{cp['id']}", "counterparty")
    if cp.get("owner"):
        out["owner"] = {"meta": _meta(f"{base}/entity/employee/{cp['owner']}", "employee")}
    persons = [{"meta": _meta(f"{base}/entity/counterparty/{cp['id']}/contactpersons/{p['id']}", "contactperson"),
                **p} for p in cp.get("contactpersons", [])]
    href = f"{base}/entity/counterparty/{cp['id']}/contactpersons"
    out["contactpersons"] = {"meta": {"href": href, "type": "contactperson", "size": len(persons)}}
    if expand:
        out["contactpersons"]["rows"] = persons
    return out


def _employee_view(emp: dict) -> dict:
    out = {k: v for k, v in emp.items() if k != "extension"}  # the JSON API has no extension field
    out["meta"] = _meta(f"{remap_base()}/entity/employee/{emp['id']}", "employee")
    out["fullName"] = emp.get("name")
    return out


@remap_bp.get("/entity/counterparty")
def remap_counterparties():
    st = state()
    rows = list(g.acc.counterparties.values())
    if request.args.get("search"):
        rows = st.search_counterparties(g.acc, request.args["search"])
    for name, op, value in _filter(request.args.get("filter")):
        rows = [cp for cp in rows if _match(cp.get(name), op, value)]
    expand = "contactpersons" in (request.args.get("expand") or "")
    listing = _list(rows, "counterparty")
    listing["rows"] = [_counterparty_view(cp, expand) for cp in listing["rows"]]
    return reply(listing)


@remap_bp.post("/entity/counterparty")
def remap_create_counterparty():
    return reply(_counterparty_view(state().create_counterparty(g.acc, g.sandbox_json), False))


def _counterparty(cp_id: str) -> dict:
    cp = g.acc.counterparties.get(cp_id)
    if cp is None:
        raise SandboxError(404, "Объект не найден", 1021)
    return cp


@remap_bp.get("/entity/counterparty/<cp_id>")
def remap_counterparty(cp_id):
    return reply(_counterparty_view(_counterparty(cp_id), "contactpersons" in request.args.get("expand", "")))


@remap_bp.get("/entity/counterparty/<cp_id>/contactpersons")
def remap_contactpersons(cp_id):
    return reply(_list(_counterparty(cp_id).get("contactpersons", []), "contactperson"))


@remap_bp.post("/entity/counterparty/<cp_id>/contactpersons")
def remap_add_contactperson(cp_id):
    cp = _counterparty(cp_id)
    body = g.sandbox_json
    if not str(body.get("name") or "").strip():
        raise SandboxError(412, "Поле 'name' не может быть пустым", 3000, "name")
    import uuid

    person = {"id": str(uuid.uuid4()), "name": body["name"], "phone": body.get("phone")}
    with state().lock:
        cp.setdefault("contactpersons", []).append(person)
    return reply(person)


@remap_bp.get("/entity/employee")
def remap_employees():
    rows = g.acc.employees
    for name, op, value in _filter(request.args.get("filter")):
        rows = [e for e in rows if _match(e.get(name), op, value)]
    listing = _list(rows, "employee")
    listing["rows"] = [_employee_view(e) for e in listing["rows"]]
    return reply(listing)


@remap_bp.get("/entity/employee/<emp_id>")
def remap_employee(emp_id):
    emp = g.acc.employee(emp_id)
    if emp is None:
        raise SandboxError(404, "Объект не найден", 1021)
    return reply(_employee_view(emp))


@remap_bp.get("/context/employee")
def remap_context_employee():
    admin = next((e for e in g.acc.employees if e.get("uid", "").startswith("admin@")), g.acc.employees[0])
    return reply(_employee_view(admin))


def _simple(rows: list, entity: str, href_entity: str) -> dict:
    items = [{**r, "meta": _meta(f"{remap_base()}/entity/{href_entity}/{r['id']}", entity)} for r in rows]
    return _list(items, entity)


@remap_bp.get("/entity/organization")
def remap_organizations():
    return reply(_simple(g.acc.organizations, "organization", "organization"))


@remap_bp.get("/entity/saleschannel")
def remap_saleschannels():
    return reply(_simple(g.acc.saleschannels, "saleschannel", "saleschannel"))


@remap_bp.get("/entity/customerorder/metadata")
def remap_order_metadata():
    states = [{**s, "entityType": "customerorder",
               "meta": _meta(f"{remap_base()}/entity/customerorder/metadata/states/{s['id']}", "state")}
              for s in g.acc.states]
    return reply({"meta": _meta(f"{remap_base()}/entity/customerorder/metadata", "embeddedentity"),
                  "states": states, "attributes": [], "createShared": True})


@remap_bp.post("/entity/customerorder")
def remap_create_order():
    order = state().create_order(g.acc, g.sandbox_json)
    return reply({**order, "meta": _meta(f"{remap_base()}/entity/customerorder/{order['id']}", "customerorder")})


@remap_bp.get("/entity/customerorder")
def remap_orders():
    rows = g.acc.orders
    for name, op, value in _filter(request.args.get("filter")):
        rows = [o for o in rows if _match(o.get(name), op, value)]
    return reply(_list(rows, "customerorder"))
