"""Ops face: /healthz (alive), /readyz (dependencies), /metrics (Prometheus; loopback or admin token)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from .. import metrics
from ..errors import ApiError
from ..extensions import db
from ..security import bearer_token, is_internal, secrets_equal
from ..state import ms

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers: nothing else is checked."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Database reachable, workers running, and how much work waits."""
    state = ms()
    body = {"database": "ok", "workers": state.pool.alive(), "workers_expected": state.settings.workers}
    ready = True
    try:
        db.session.execute(text("SELECT 1"))
        body.update(state.queue.stats())
    except Exception as exc:  # any database failure means not ready
        db.session.rollback()
        body["database"] = f"error: {type(exc).__name__}"
        ready = False
    if ready:  # MoySklad being down is not the service being unready: shown, not failed
        body["breakers"] = [{**b, "since": b["since"].isoformat() + "Z", "next_probe_at": b["next_probe_at"]
                             .isoformat() + "Z"} for b in _breakers(state)]
    if body["workers"] < state.settings.workers:
        ready = False
    body["status"] = "ready" if ready else "not ready"
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format; only from loopback or with the admin token."""
    state = ms()
    if not (is_internal(request, None) or secrets_equal(bearer_token(request), state.settings.admin_token)):
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
