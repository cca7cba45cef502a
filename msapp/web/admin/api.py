"""Admin JSON API for scripts (`Authorization: Bearer <MS_ADMIN_TOKEN>`) and the pages (session + CSRF)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from msapp.db.reader import read_only
from msapp.errors import ApiError
from msapp.services.config_schema import public_view
from msapp.state import ms
from msapp.web.admin import auth
from msapp.web.http_utils import json_body

bp = Blueprint("admin_api", __name__, url_prefix="/ms-admin/api")


@bp.before_request
def require_auth():
    if auth.protect() is None:
        raise ApiError(401, "admin token required (Authorization: Bearer, or log in)")


@bp.after_request
def no_store(resp):
    """Answers carry configs and webhook addresses: no cache may keep them."""
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/config/<number>")
def get_config(number):
    return jsonify(public_view(ms().configs.read(number)))


def _call_filters() -> dict:
    args = request.args
    return {"q": (args.get("q") or "")[:128], "date_from": (args.get("from") or "")[:10],
            "date_to": (args.get("to") or "")[:10], "direction": (args.get("direction") or "")[:8],
            "result": (args.get("result") or "")[:16], "before": (args.get("before") or "")[:64]}


@bp.get("/calls/<number>")
def calls(number):
    """Calls by a phone number in any format, a PBX unique_id or a MoySklad call id, dates, direction, result;
    newest first, a page at a time (`next` is the following page's `before`)."""
    found = ms().support.search(number, **_call_filters())
    return jsonify({k: found[k] for k in ("calls", "total", "capped", "next")})


@bp.get("/calls/<number>/<path:unique_id>")
def call(number, unique_id):
    """One call with its timeline, oldest first."""
    return jsonify(ms().support.timeline(number, unique_id))


def _analytics(number: str) -> dict:
    read_only()  # the whole report only reads (db/reader.py)
    cfg = ms().configs.of(ms().configs.enterprise(number))
    return ms().analytics.for_request(number, cfg, request.args)


@bp.get("/analytics/<number>.csv")
def analytics_csv(number):
    """The analytics series and the employees as CSV (UTF-8 with BOM, for spreadsheets)."""
    from msapp.services.analytics import as_csv

    report = _analytics(number)
    name = f"ms-analytics-{number}-{report['from']}-{report['to']}.csv"
    return Response("\ufeff" + as_csv(report), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/analytics/<number>")
def analytics(number):
    """Every figure of the analytics page: `?period=today|yesterday|7d|30d` or `?from=&to=` (local dates),
    `grain=hour|day`."""
    return jsonify(_analytics(number))


@bp.get("/config/<number>/history")
def config_history(number):
    """Who changed which fields and when (names only: values, and secrets above all, are never shown)."""
    changes = ms().configs.history(number)
    return jsonify({"changes": [{**c, "at": c["at"].isoformat() + "Z"} for c in changes]})


@bp.put("/config/<number>")
def put_config(number):
    """Validate and merge; masked or omitted secrets keep their stored values."""
    return jsonify(public_view(ms().configs.save(number, json_body(), by=auth.who())))


@bp.delete("/config/<number>")
def delete_config(number):
    ms().configs.delete(number, by=auth.who())
    return jsonify({"deleted": True})


@bp.post("/config/<number>/webhook-uuid")
def new_webhook(number):
    cfg = ms().configs.regenerate_webhook(number, by=auth.who())
    return jsonify({"webhook_url": cfg["webhook_url"]})


@bp.post("/test/<number>")
def test(number):
    """Test the connection (it asks MoySklad and records the result: a POST, never a GET)."""
    return jsonify(ms().admin.test_connection(number, ms().configs.read(number)))


@bp.get("/employees/<number>")
def employees(number):
    """The stored employees; reads only (a refresh from MoySklad is the POST)."""
    if "refresh" in request.args:
        raise ApiError(400, "a refresh from MoySklad is POST /ms-admin/api/employees/<N>", "refresh")
    return jsonify({"employees": ms().admin.employees(number, ms().configs.read(number), refresh=False)})


@bp.post("/employees/<number>")
def refresh_employees(number):
    """Fetch the employees from MoySklad now and store them."""
    return jsonify({"employees": ms().admin.employees(number, ms().configs.read(number), refresh=True)})


@bp.post("/test-popup/<number>")
def test_popup(number):
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return jsonify(ms().admin.test_popup(number, ms().configs.read(number), body.get("extension")))
