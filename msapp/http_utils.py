"""Request helpers shared by the blueprints."""
from __future__ import annotations

import json
from typing import Any

from flask import request

from .errors import ApiError


def json_body() -> Any:
    """The request's JSON body; 400 (never 500) for anything that is not JSON or nests absurdly deep."""
    if request.mimetype not in ("application/json", "") and not request.mimetype.endswith("+json"):
        raise ApiError(415 if request.mimetype else 400, "body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)
    if not raw:
        raise ApiError(400, "body must be a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None
