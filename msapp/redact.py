"""Redaction of secrets from log lines and from the JSON kept in integration_logs."""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

MASK = "••••"

# Keys whose values are secrets wherever they appear (case-insensitive, "-" and "_" alike).
SECRET_KEYS = {
    "lognex-phone-auth-token", "authorization", "x-internal-token", "integration_code", "api_token",
    "token", "access_token", "password", "secret", "webhook_uuid", "clientid", "client_id",
    "admin_token", "secret_key", "x-csrftoken", "csrf_token", "lognex-content-md5", "cookie",
    "set-cookie",
}
_WEBHOOK_PATH = re.compile(r"(/ms/webhook/)[^/\s?\"'#]+", re.IGNORECASE)
_HEADER_LIKE = re.compile(
    r"(?i)\b(Lognex-Phone-Auth-Token|Authorization|X-Internal-Token|Cookie)([\"']?\s*[:=]\s*[\"']?)"
    r"(Bearer\s+|Basic\s+)?[^\s\"',}]+"
)
_KEY_VALUE = re.compile(
    r"(?i)([\"']?(?:integration_code|api_token|access_token|admin_token|webhook_uuid|password|secret|"
    r"clientId|token)[\"']?\s*[:=]\s*[\"']?)([^\s\"'&,}]+)"
)


def redact_url(url: str) -> str:
    """A URL fit for a log line, an error or the journal: user:password@ and every query value masked
    (`http://••••@pbx:8018/call?key=••••`); the scheme, host, port and path stay readable."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = "&".join(f"{pair.partition('=')[0]}={MASK}" if pair else pair for pair in parts.query.split("&")) \
        if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def mask_tail(value: str | None, keep: int = 4) -> str:
    """Masked form of a secret that still lets an admin recognise it: `••••d763`."""
    if not value:
        return ""
    if len(value) <= keep * 2:
        return MASK
    return MASK + value[-keep:]


# Every pattern above needs one of these words (case-insensitive): text without any of them has nothing
# to redact, and most journal strings (numbers, extensions, ids) are such text: one cheap test instead of
# three regex passes per string.
_TRIGGERS = ("token", "webhook", "authorization", "cookie", "integration_code", "password", "secret", "clientid")


def redact_text(text: str) -> str:
    """Remove secrets from free text (log lines, error messages, URLs)."""
    if not text:
        return text
    low = text.lower()
    if not any(word in low for word in _TRIGGERS):
        return text
    text = _WEBHOOK_PATH.sub(lambda m: m.group(1) + MASK, text)
    text = _HEADER_LIKE.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _KEY_VALUE.sub(lambda m: m.group(1) + MASK, text)


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    return key.lower().replace("_", "-") in SECRET_KEYS or key.lower() in SECRET_KEYS


_DEEPEST = 20  # the walk masks what lies deeper
# What any secret key or text pattern above holds, "_" written as "-" (`_is_secret_key` treats them alike).
_SCAN = tuple({word.replace("_", "-") for word in (*_TRIGGERS, *SECRET_KEYS)})
_SCAN_TEXT = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _clean_text(value: Any) -> Optional[str]:
    """The JSON text of `value` when no key and no string of it can hold a secret, else None: its text
    (lowered as the checks above lower it, so a key like "TO\u212aEN" is seen as "token") holds none of
    their words. A PBX event or a MoySklad exchange seldom does: one scan of its text is half the cost of
    walking it."""
    try:
        text = _SCAN_TEXT(value)
    except (TypeError, ValueError, RecursionError):  # keys that are not strings, or nested deep: walk it
        return None
    if text.count("{") + text.count("[") > _DEEPEST:  # it may be nested deeper than the walk goes
        return None
    low = text.lower().replace("_", "-")
    return None if any(word in low for word in _SCAN) else text


def redact_obj(value: Any) -> Any:
    """A copy of a JSON-like value with secret keys masked and strings scrubbed (the value itself when it
    has nothing to mask)."""
    if isinstance(value, (dict, list)) and _clean_text(value) is not None:
        return value
    return _walk(value, 0)


class JsonText(str):
    """A value already written as JSON: a JSON column stores the text as it is (see `create_app`'s
    serializer), instead of encoding the value a second time."""


def redact_for_json(value: Any) -> Any:
    """`redact_obj` for a JSON column: a dict or list with nothing to mask comes back as the JSON text the
    scan wrote (a `JsonText`), so a journal row's values are encoded once, not twice."""
    if isinstance(value, (dict, list)):
        text = _clean_text(value)
        if text is not None:
            return JsonText(text)
    return _walk(value, 0)


def _walk(value: Any, depth: int) -> Any:
    if depth > _DEEPEST:
        return MASK
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and _is_secret_key(k) and v not in (None, "")
                else _walk(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(v, depth + 1) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs the formatted message (and args) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the line
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
