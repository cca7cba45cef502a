"""Ops face: /healthz (alive), /readyz (dependencies), /metrics (Prometheus; loopback or admin token)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from msapp import metrics
from msapp.errors import ApiError
from msapp.extensions import db
from msapp.state import ms
from msapp.web.admin import auth
from msapp.web.security import is_internal

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers: nothing else is checked."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Database reachable, workers running, and how much work waits. Which enterprises have MoySklad
    down, and why, only for internal or admin callers; anyone else sees how many."""
    state = ms()
    detailed = is_internal(request, state.settings.internal_token) or auth.method() is not None
    body = {"database": "ok", "workers": state.pool.alive(), "workers_expected": state.settings.workers}
    ready = True
    try:
        body.update(state.queue.stats())  # a read of the database: reached, or not ready
    except Exception as exc:  # any database failure means not ready
        db.session.rollback()
        body["database"] = f"error: {type(exc).__name__}"
        ready = False
    if ready:  # MoySklad being down is not the service being unready: shown, not failed
        breakers = _breakers(state)
        body["breakers_open"] = len(breakers)
        if detailed:
            body["breakers"] = [{**b, "since": b["since"].isoformat() + "Z", "next_probe_at": b["next_probe_at"]
                                 .isoformat() + "Z"} for b in breakers]
    if body["workers"] < state.settings.workers:
        ready = False
    body["status"] = "ready" if ready else "not ready"
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format; only from loopback or with the admin token (checked, and wrong ones
    counted, by the admin door's throttle)."""
    state = ms()
    if not is_internal(request, None) and auth.method() is None:
        raise ApiError(403, "metrics are served to loopback or with the admin token")
    try:
        stats = state.queue.stats()
        metrics.QUEUE_DEPTH.set(stats["depth"])
        metrics.QUEUE_OLDEST.set(stats["oldest_pending_age_seconds"])
        metrics.JOBS_DEAD_NOW.set(stats["dead"])
        metrics.BREAKER_OPEN.clear()
        metrics.BREAKER_WAITING.clear()
        for b in _breakers(state):
            metrics.BREAKER_OPEN.labels(b["enterprise"], b["api"], b["kind"]).set(1)
            metrics.BREAKER_WAITING.labels(b["enterprise"], b["api"]).set(b["waiting_calls"])
    except Exception:  # metrics still answer when the database is down
        db.session.rollback()
    metrics.WORKERS_ALIVE.set(state.pool.alive())
    # the exact content type (a mimetype would get a second "; charset=utf-8" from Flask)
    return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _breakers(state) -> list:
    return state.breakers.status() if state.breakers is not None else []
