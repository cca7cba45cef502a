"""Admin face (docs/design.md 5.4): htmx pages for the PBX operator's staff. Thin: parse, authorise, call
services, render. htmx gets partials (200 even for form errors, so they are swapped in); full pages
otherwise."""
from __future__ import annotations

import json
import os
from datetime import UTC

from flask import (
    Blueprint,
    Response,
    abort,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from sqlalchemy import or_, select

from msapp.db.models import Enterprise
from msapp.db.reader import read_only
from msapp.errors import ValidationFailed
from msapp.extensions import db
from msapp.redact import mask_tail
from msapp.services import click_guard
from msapp.services.config_schema import NOTIFY_MODES, ORDER_MODES, SIGNATURE_MODES, public_view
from msapp.state import ms
from msapp.web.admin import auth, forms

bp = Blueprint("admin", __name__, url_prefix="/ms-admin")
STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "static")
OPEN = {"admin.login", "admin.login_post", "admin.favicon"}


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


@bp.before_request
def require_login():
    """Pages need the session (or a Bearer token); anonymous browsers go to the login page."""
    if request.endpoint in OPEN:
        if request.method == "POST":
            auth.csrf.protect()
        return None
    if auth.protect() is None:
        if is_htmx():
            resp = make_response("", 200)
            resp.headers["HX-Redirect"] = url_for("admin.login")
            return resp
        return redirect(url_for("admin.login", next=request.full_path if request.method == "GET" else None))
    return None


@bp.after_request
def no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "HX-Request, Cookie"
    return resp


# Admin pages run only our own files: htmx (with eval and its inline indicator style turned off in
# base.html), ms.js and ms.css. No inline script or style anywhere, no framing, no referrer leaks.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                    "X-Content-Type-Options": "nosniff"}


def security_headers(resp: Response) -> Response:
    if request.path.startswith(("/ms-admin", "/ms.png", "/ms/")) and not request.path.startswith("/ms/webhook/"):
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
    return resp


def _toast(resp: Response, message: str, kind: str = "ok") -> Response:
    # ASCII JSON: header values are latin-1 on the wire; htmx decodes the \u escapes
    resp.headers["HX-Trigger"] = json.dumps({"toast": {"message": message, "kind": kind}})
    return resp


# -- login ---------------------------------------------------------------------------------------
@bp.get("/login")
def login():
    return render_template("admin/login.html", error=None, next=request.args.get("next", ""))


@bp.post("/login")
def login_post():
    nxt = request.form.get("next") or ""
    if not auth.login(request.form.get("token", "").strip()):
        return render_template("admin/login.html", error="Неверный токен администратора", next=nxt), 401
    safe_next = nxt if nxt.startswith("/ms-admin") and "//" not in nxt else url_for("admin.index")
    return redirect(safe_next)


@bp.post("/logout")
def logout():
    auth.logout()
    if is_htmx():
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = url_for("admin.login")
        return resp
    return redirect(url_for("admin.login"))


@bp.get("/favicon.ico")
def favicon():
    return send_from_directory(STATIC, "ms.png", mimetype="image/png", max_age=86400)


# -- enterprises ---------------------------------------------------------------------------------
@bp.get("/")
def index():
    number = request.args.get("enterprise_number")
    if number:
        return _enterprise_page(number)
    q = (request.args.get("q") or "").strip()[:64]
    query = select(Enterprise).order_by(Enterprise.number).limit(500)
    if q:
        like = "%" + q.replace("%", "").replace("_", r"\_") + "%"
        query = query.where(or_(Enterprise.number.like(like, escape="\\"), Enterprise.name.like(like, escape="\\")))
    rows = [(e, ms().configs.of(e)) for e in db.session.scalars(query)]
    template = "admin/_enterprise_rows.html" if is_htmx() and request.headers.get("HX-Target") == "rows" \
        else "admin/enterprises.html"
    return render_template(template, rows=rows, q=q, error=None)


@bp.post("/enterprises")
def add_enterprise():
    number = (request.form.get("number") or "").strip()
    name = (request.form.get("name") or "").strip()[:200]
    error = None
    if not number or len(number) > 32 or not all(c.isalnum() or c in "-_" for c in number):
        error = "Номер предприятия: буквы, цифры, «-» или «_», не длиннее 32 символов"
    elif db.session.get(Enterprise, number) is not None:
        error = f"Предприятие {number} уже есть"
    if error:
        rows = [(e, ms().configs.of(e)) for e in db.session.scalars(select(Enterprise).order_by(Enterprise.number))]
        return render_template("admin/enterprises.html", rows=rows, q="", error=error, form=request.form), 200
    db.session.add(Enterprise(number=number, name=name or number, integrations_config={}))
    db.session.commit()
    target = url_for("admin.index", enterprise_number=number)
    if is_htmx():
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = target
        return resp
    return redirect(target)


def _context(number: str, cfg: dict, errors=None, values=None) -> dict:
    ent = ms().configs.enterprise(number)
    return {"ent": ent, "cfg": cfg, "view": public_view(cfg), "errors": errors or {}, "values": values or {},
            "secret": mask_tail(ent.secret), "notify_modes": NOTIFY_MODES, "order_modes": ORDER_MODES,
            "signature_modes": SIGNATURE_MODES,
            "panel": {**ms().admin.panel(number), "untrusted_proxy": ms().untrusted_proxy_seen},
            "countries": click_guard.country_choices(), "allowed": click_guard.allowed_countries(cfg),
            "staff": ms().admin.employee_choices(number, cfg), "resume_url": url_for("admin.resume", number=number),
            "history": ms().configs.history(number, limit=20)}


def _enterprise_page(number: str):
    cfg = ms().configs.read(number)
    ctx = _context(number, cfg)
    ctx["lists"] = {"organizations": [], "states": [], "saleschannels": [], "error": None, "loaded": False}
    return render_template("admin/enterprise.html", **ctx)


@bp.post("/config/<number>")
def save_config(number):
    """Save the form: 200 with the re-rendered form either way (errors inline, or a toast)."""
    ms().configs.enterprise(number)
    update = forms.to_update(request.form)
    try:
        cfg = ms().configs.save(number, update, by=auth.who())
    except ValidationFailed as exc:
        ctx = _context(number, ms().configs.read(number), errors=forms.in_russian(exc.errors), values=request.form)
        resp = make_response(render_template("admin/_config_form.html", **ctx))
        return _toast(resp, "Исправьте отмеченные поля", "error")
    resp = make_response(render_template("admin/_config_form.html", **_context(number, cfg)))
    return _toast(resp, "Настройки сохранены")


@bp.post("/config/<number>/webhook-uuid")
def regenerate_webhook(number):
    cfg = ms().configs.regenerate_webhook(number, by=auth.who())
    ent = ms().configs.enterprise(number)
    resp = make_response(render_template("admin/_webhook.html", view=public_view(cfg), ent=ent))
    return _toast(resp, "Создан новый адрес; старый больше не работает")


@bp.post("/config/<number>/delete")
def delete_config(number):
    ms().configs.delete(number, by=auth.who())
    resp = make_response("", 200)
    resp.headers["HX-Redirect"] = url_for("admin.index")
    return resp


@bp.post("/lists/<number>")
def refresh_lists(number):
    cfg = ms().configs.read(number)
    lists = ms().admin.lists(number, cfg, refresh=True)
    lists["loaded"] = True
    return render_template("admin/_order_lists.html", lists=lists, cfg=cfg, errors={},
                           ent=ms().configs.enterprise(number))


@bp.post("/resume/<number>")
def resume(number):
    """«Возобновить»: end the refused-key pause now; the next request tells whether the key works."""
    ms().configs.enterprise(number)
    db.session.commit()  # no transaction of ours open while the breaker writes (SQLite: one writer at a time)
    closed = ms().breakers.close(number, why="resumed by an admin", kind="auth")
    message = "Обмен с МойСклад возобновлён" if closed else "Обмен и так не был приостановлен"
    return _toast(make_response(""), message)


@bp.post("/employees-select/<number>")
def refresh_employee_select(number):
    """The missed-call fallback employee select, with MoySklad's employees loaded now."""
    cfg = ms().configs.read(number)
    return render_template("admin/_employee_select.html", cfg=cfg, ent=ms().configs.enterprise(number),
                           staff=ms().admin.employee_choices(number, cfg, refresh=True), errors={}, values={})


@bp.post("/test/<number>")
def test_connection(number):
    cfg = ms().configs.read(number)
    return render_template("admin/_test_result.html", result=ms().admin.test_connection(number, cfg), ent_number=number)


@bp.post("/test-popup/<number>")
def test_popup(number):
    cfg = ms().configs.read(number)
    extension = request.form.get("extension", "")
    try:
        ms().admin.test_popup(number, cfg, extension)
        message, kind = f"Тестовая карточка показана сотруднику с добавочным {extension}", "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is shown to the operator, not raised
        from msapp.services.admin import explain

        message, kind = explain(exc), "error"
    return _toast(make_response(render_template("admin/_popup_result.html", message=message, kind=kind)), message, kind)


def render_read(template: str, **context) -> str:
    """render_template for a page that only reads: it began with `read_only()`, and the enterprise's row
    that the services' commits expired reloads in a reader's transaction too (db/reader.py), so on
    SQLite no part of the page holds the event path's writer lock."""
    read_only()
    return render_template(template, **context)


@bp.get("/journal")
def journal():
    number = request.args.get("enterprise_number") or abort(404)
    read_only()
    ent = ms().configs.enterprise(number)
    cfg = ms().configs.of(ent)
    event = (request.args.get("event") or "")[:64]
    status = request.args.get("status") or ""
    call = (request.args.get("call") or "").strip()[:128]
    text = (request.args.get("q") or "").strip()[:100]
    before = (request.args.get("before") or "")[:64]
    try:
        data, error = ms().admin.journal(number, event, status, before, call, text), None
    except ValidationFailed as exc:
        data = {"rows": [], "total": 0, "capped": False, "next": None, "dead": [], "breakers": []}
        error = forms.in_russian(exc.errors)
    template = "admin/_journal_rows.html" if is_htmx() else "admin/journal.html"
    return render_read(template, ent=ent, cfg=cfg, data=data, event=event, status=status, call=call, q=text,
                       before=before, error=error)


@bp.get("/calls")
def calls_page():
    """Calls of one enterprise: search by number, unique_id or MoySklad id; paged (htmx partial)."""
    from msapp.web.admin.api import _call_filters

    number = request.args.get("enterprise_number") or abort(404)
    read_only()
    ent = ms().configs.enterprise(number)
    cfg = ms().configs.of(ent)
    filters = _call_filters()
    try:
        found, error = ms().support.search(number, **filters), None
    except ValidationFailed as exc:
        found, error = {"calls": [], "total": 0, "capped": False, "next": None, "timezone": ""}, \
            forms.in_russian(exc.errors)
    template = "admin/_calls_rows.html" if is_htmx() else "admin/calls.html"
    return render_read(template, ent=ent, cfg=cfg, found=found, f=filters, error=error)


ANALYTICS_ARGS = ("period", "from", "to", "grain")


@bp.get("/analytics")
def analytics_page():
    """Charts and figures of one enterprise for a period (htmx partial on a period switch)."""
    from msapp.services.analytics import sort_employees
    from msapp.web.admin import charts

    number = request.args.get("enterprise_number") or abort(404)
    read_only()
    ent = ms().configs.enterprise(number)
    cfg = ms().configs.of(ent)
    args = {k: request.args[k][:16] for k in ANALYTICS_ARGS if request.args.get(k)}
    sort = request.args.get("sort") or "rung"
    report, error, drawn, employees = None, None, None, []
    try:
        report = ms().analytics.for_request(number, cfg, args)
    except ValidationFailed as exc:
        error = forms.in_russian(exc.errors)
    if report is not None:
        drawn = {"calls": charts.calls(report["series"]), "quality": charts.quality(report["series"]),
                 "callbacks": charts.callbacks(report["callbacks"]), "heatmap": charts.heatmap(report["heatmap"])}
        employees = sort_employees(report["employees"], sort)
    template = "admin/_analytics.html" if is_htmx() else "admin/analytics.html"
    return render_read(template, ent=ent, cfg=cfg, report=report, error=error, charts=drawn, args=args,
                           args_no_sort=args, sort=sort, employees=employees)


@bp.get("/calls/<number>/<path:unique_id>")
def call_page(number, unique_id):
    read_only()
    ent = ms().configs.enterprise(number)
    cfg = ms().configs.of(ent)
    return render_read("admin/call.html", ent=ent, cfg=cfg, call=ms().support.timeline(number, unique_id))


@bp.post("/jobs/<int:job_id>/retry")
def retry_job(job_id):
    number = request.form.get("enterprise_number", "")
    ok = ms().queue.retry_dead(job_id, enterprise_number=number)
    resp = make_response(render_template("admin/_popup_result.html",
                                         message="Задача поставлена в очередь" if ok else "Задача уже не в ошибке",
                                         kind="ok" if ok else "error"))
    return resp


def logo():
    """GET /ms.png (registered on the app, outside /ms-admin)."""
    return send_from_directory(STATIC, "ms.png", mimetype="image/png", max_age=86400)


def ms_root():
    """/ms/ -> /ms-admin/."""
    return redirect(url_for("admin.index"))


def pretty(value) -> str:
    """JSON as people read it: Cyrillic as text, indented (autoescaped by the template)."""
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False, default=str)


def isotime(value: str, tz_name: str = "Europe/Minsk") -> str:
    """An API timestamp ("...Z") in the enterprise's zone, for the pages that reuse the JSON answers."""
    from datetime import datetime

    if not value:
        return "—"
    return localtime(datetime.fromisoformat(value.rstrip("Z")), tz_name)


def localtime(value, tz_name: str = "Europe/Minsk", fmt: str = "%d.%m.%Y %H:%M:%S") -> str:
    """A stored naive-UTC time in the enterprise's time zone (the zone is named by the page)."""
    from zoneinfo import ZoneInfo

    if value is None:
        return "—"
    try:
        zone = ZoneInfo(tz_name or "UTC")
    except (ValueError, KeyError):
        zone = UTC
    return value.replace(tzinfo=UTC).astimezone(zone).strftime(fmt)


def register(app) -> None:
    from msapp.web.admin import charts
    from msapp.web.admin.api import bp as api_bp

    app.add_template_filter(localtime, "localtime")
    app.add_template_filter(pretty, "pretty")
    app.add_template_filter(isotime, "isotime")
    app.add_template_filter(charts.duration, "duration")

    # Checked explicitly (auth.protect) for cookie-authenticated changes only; set before init_app,
    # which would otherwise default to checking every POST of every blueprint.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config["WTF_CSRF_TIME_LIMIT"] = None
    app.config["WTF_CSRF_HEADERS"] = ["X-CSRFToken"]
    auth.csrf.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(api_bp)
    app.add_url_rule("/ms.png", "logo", logo)
    app.add_url_rule("/ms/", "ms_root", ms_root)
    app.add_url_rule("/ms", "ms_root_bare", ms_root)

    app.after_request(security_headers)

    @app.errorhandler(auth.LockedOut)
    def _locked_out(exc):
        if request.path.startswith("/ms-admin/api/") or (request.endpoint != "admin.login_post"
                                                         and not request.accept_mimetypes.accept_html):
            resp = make_response(exc.body(), 429)
        else:
            message = f"Слишком много неверных попыток входа с этого адреса. Повторите через {exc.retry_after} с."
            resp = make_response(render_template("admin/login.html", error=message, next=""), 429)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    from flask_wtf.csrf import CSRFError

    @app.errorhandler(CSRFError)
    def _csrf_error(exc):
        if request.path.startswith("/ms-admin/api/") or (request.endpoint != "admin.login_post"
                                                         and not request.accept_mimetypes.accept_html):
            return {"error": "CSRF token missing or invalid"}, 403
        return render_template("admin/login.html", error="Сессия устарела: войдите снова", next=""), 403
