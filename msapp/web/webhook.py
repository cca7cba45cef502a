"""Webhook face: MoySklad's click-to-call (docs/design.md 5.2). Verify, guard against toll fraud, store, answer."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from msapp.errors import ApiError
from msapp.services.click_guard import Refused
from msapp.services.click_to_call import accept_click
from msapp.state import ms
from msapp.web.http_utils import json_body
from msapp.web.security import client_of

bp = Blueprint("webhook", __name__, url_prefix="/ms/webhook")
NOT_FOUND = "unknown webhook"


@bp.post("/<path:webhook_uuid>")
def click(webhook_uuid: str):
    """One click in MoySklad: 404 for unknown and malformed alike, 403 when disabled, else 200 at once."""
    found = ms().configs.find_by_webhook(webhook_uuid)
    if found is None:
        raise ApiError(404, NOT_FOUND)
    ent, cfg = found
    if not cfg.get("enabled"):
        raise ApiError(403, "the integration is disabled for this enterprise")
    raw = request.get_data(cache=True)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        body = request.form.to_dict()
    else:
        body = json_body()
    try:
        answer = accept_click(ms().queue, ms().directory, ent, cfg, body, raw,
                              request.headers.get("Lognex-Content-MD5"), client_of(request), webhook_uuid)
    except Refused as refusal:
        resp = jsonify(refusal.body())
        if refusal.retry_after:
            resp.headers["Retry-After"] = str(refusal.retry_after)
        return resp, refusal.status
    return jsonify(answer)
