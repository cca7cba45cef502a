"""The sandbox's JSON API tasks (docs/moysklad.md 2.11): /entity/task with its documented filters, notes,
required fields (412, code 3000), 404 for unknown ids, and a switch that makes an account refuse tasks
like one without MoySklad's CRM option (faults: {"tasks_disabled": true}). Adds its routes to remap_bp."""
from __future__ import annotations

import copy
import uuid
from datetime import datetime

from flask import g, request

from msapp.tools.sandbox.api import _filter, _list, _match, remap_base, remap_bp, reply, state
from msapp.tools.sandbox.state import TIME_RE, SandboxError


def _id_of(ref) -> str | None:
    href = ((ref or {}).get("meta") or {}).get("href")
    return href.rstrip("/").rsplit("/", 1)[-1] if href else None


def _refuse_without_crm() -> None:
    st = state()
    f = st.faults
    if f.tasks_disabled and f.account in (None, g.acc.name):
        raise SandboxError(403, "Для работы с задачами нужна опция «CRM» тарифа", 1016)


def _view(task: dict) -> dict:
    base = remap_base()
    out = {k: v for k, v in task.items() if k not in ("assignee", "agent", "notes")}
    out["meta"] = {"href": f"{base}/entity/task/{task['id']}", "type": "task", "mediaType": "application/json"}
    out["assignee"] = {"meta": {"href": f"{base}/entity/employee/{task['assignee']}", "type": "employee",
                                "mediaType": "application/json"}}
    if task.get("agent"):
        out["agent"] = {"meta": {"href": f"{base}/entity/counterparty/{task['agent']}", "type": "counterparty",
                                 "mediaType": "application/json"}}
    return out


def _task(task_id: str) -> dict:
    task = g.acc.tasks.get(task_id)
    if task is None:
        raise SandboxError(404, f"Объект с ID '{task_id}' не найден", 1021)
    return task


def _apply(task: dict, body: dict, creating: bool) -> None:
    if not isinstance(body, dict):
        raise SandboxError(400, "Ошибка формата JSON", 2001)
    if creating:
        for name in ("description", "assignee"):
            if not body.get(name):
                raise SandboxError(412, f"Не указано обязательное поле '{name}'", 3000, name)
    if "description" in body:
        text = str(body["description"] or "")
        if not text.strip():
            raise SandboxError(412, "Поле 'description' не может быть пустым", 3000, "description")
        task["description"] = text[:4096]
    if "assignee" in body:
        emp = _id_of(body["assignee"])
        if emp is None or g.acc.employee(emp) is None:
            raise SandboxError(400, "Неверная ссылка на сотрудника", 2010, "assignee")
        task["assignee"] = emp
    if "agent" in body:
        agent = _id_of(body["agent"])
        if agent is not None and agent not in g.acc.counterparties:
            raise SandboxError(400, "Неверная ссылка на контрагента", 2010, "agent")
        task["agent"] = agent
    if "dueToDate" in body:
        due = body["dueToDate"]
        if due is not None and (not isinstance(due, str) or not TIME_RE.match(due)):
            raise SandboxError(400, "Неверный формат даты в поле 'dueToDate'", 2001, "dueToDate")
        task["dueToDate"] = due
    if "done" in body:
        if not isinstance(body["done"], bool):
            raise SandboxError(400, "Поле 'done' должно быть логическим", 2001, "done")
        if body["done"] and not task.get("done"):
            task["completed"] = _now()
        task["done"] = body["done"]
    task["updated"] = _now()


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.000")


def _filter_value(task: dict, name: str):
    if name in ("agent", "assignee"):
        ref = task.get(name)
        if ref is None:
            return ""
        entity = "employee" if name == "assignee" else "counterparty"
        return f"{remap_base()}/entity/{entity}/{ref}"
    value = task.get(name)
    return str(value).lower() if isinstance(value, bool) else value


@remap_bp.get("/entity/task")
def remap_tasks():
    rows = list(g.acc.tasks.values())
    conditions = _filter(request.args.get("filter"))
    if not any(name == "done" for name, _, _ in conditions):  # MoySklad lists open tasks by default
        rows = [t for t in rows if not t.get("done")]
    for name, op, value in conditions:
        rows = [t for t in rows if _match(_filter_value(t, name), op, value)]
    listing = _list(rows, "task")
    listing["rows"] = [_view(t) for t in listing["rows"]]
    return reply(listing)


@remap_bp.post("/entity/task")
def remap_create_task():
    _refuse_without_crm()
    task = {"id": str(uuid.uuid4()), "done": False, "created": _now(), "notes": []}
    with state().lock:
        _apply(task, g.sandbox_json, creating=True)
        g.acc.tasks[task["id"]] = task
    return reply(_view(task))


@remap_bp.get("/entity/task/<task_id>")
def remap_task(task_id):
    return reply(_view(_task(task_id)))


@remap_bp.put("/entity/task/<task_id>")
def remap_update_task(task_id):
    _refuse_without_crm()
    with state().lock:
        task = _task(task_id)
        changed = copy.deepcopy(task)
        _apply(changed, g.sandbox_json, creating=False)
        task.update(changed)
    return reply(_view(task))


@remap_bp.delete("/entity/task/<task_id>")
def remap_delete_task(task_id):
    with state().lock:
        _task(task_id)
        del g.acc.tasks[task_id]
    return reply(None)


@remap_bp.get("/entity/task/<task_id>/notes")
def remap_task_notes(task_id):
    return reply(_list(_task(task_id)["notes"], "tasknote"))


@remap_bp.post("/entity/task/<task_id>/notes")
def remap_add_task_note(task_id):
    _refuse_without_crm()
    body = g.sandbox_json if isinstance(g.sandbox_json, dict) else {}
    text = str(body.get("description") or "")
    if not text.strip():
        raise SandboxError(412, "Не указано обязательное поле 'description'", 3000, "description")
    note = {"id": str(uuid.uuid4()), "description": text[:4096], "moment": _now()}
    with state().lock:
        _task(task_id)["notes"].append(note)
    return reply(note)

