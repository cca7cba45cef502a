"""Settings: the environment (docs/design.md 3) turned into one validated, immutable object."""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from msapp.redact import redact_url

DEFAULT_PHONE_API_URL = "https://api.moysklad.ru/api/phone/1.0"
DEFAULT_JSON_API_URL = "https://api.moysklad.ru/api/remap/1.2"
DEFAULT_ORIGINATE_URL = "http://127.0.0.1:8018/api/makecallexternal"


FACES = ("internal", "webhook", "admin")  # docs/design.md 1; the probes are on every process


class SettingsError(ValueError):
    """A setting is invalid; the message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8023
    public_url: str = "http://localhost:8023"
    phone_api_url: str = DEFAULT_PHONE_API_URL
    json_api_url: str = DEFAULT_JSON_API_URL
    admin_token: str = ""
    internal_token: Optional[str] = None
    secret_key: str = ""
    originate_url: str = DEFAULT_ORIGINATE_URL
    workers: int = 4
    # The faces this process answers besides the probes (docs/operations.md, "The admin face in a
    # process of its own").
    faces: tuple = FACES
    log_dir: str = "logs"
    log_level: str = "INFO"
    lookup_timeout: float = 1.5
    instance_dir: str = "instance"
    # tunes the JSON API limiter (docs/moysklad.md 2.3) without a release
    json_api_budget: int = 15
    job_lease_seconds: float = 120.0
    # The admin door: a login lasts this long; proxies whose X-Forwarded-For names the client.
    admin_session_hours: float = 12.0
    # How long a call's work may wait for an unreachable MoySklad before it is given up (dead, retryable).
    retry_horizon_seconds: float = 86400.0
    # Journal rows, finished jobs and calls older than this are deleted (0: keep everything).
    retention_days: int = 30
    trusted_proxies: tuple = ()
    click_max_age: float = 30.0  # seconds: an older click is never dialled
    # PostgreSQL: statements PREPAREd once per connection (0 behind a pooler that shares server connections
    # between clients, e.g. PgBouncer in transaction mode).
    pg_prepare: bool = True

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range {lo}..{hi}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range {lo}..{hi}")
    return value


def _duration(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    """Seconds, or a number with a unit: `90`, `90s`, `15m`, `24h`, `2d`."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(raw[-1])
    try:
        value = float(raw[:-1] if scale else raw) * (scale or 1)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a duration (e.g. 86400, 24h, 30m)") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={raw} is out of range {lo:.0f}s..{hi:.0f}s")
    return value


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name} must be an http(s) URL, got {redact_url(value)!r}")
    return parts.scheme + value[len(parts.scheme):]  # `HTTPS://` is https: the scheme in lower case


MIN_ADMIN_TOKEN = 24


def _admin_token(env: Mapping[str, str], instance_dir: str) -> str:
    """MS_ADMIN_TOKEN, or the one generated into the instance dir. A short token is refused: the admin
    door is on the network and its only lock is this token."""
    given = env.get("MS_ADMIN_TOKEN")
    if not given:
        return _generated_secret(instance_dir, "admin_token")
    if len(given) < MIN_ADMIN_TOKEN or given != given.strip():
        raise SettingsError(f"MS_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters without surrounding "
                            "spaces (leave it unset to have one generated into instance/admin_token)")
    return given


def _database_url(env: Mapping[str, str], instance_dir: str) -> str:
    raw = env.get("MS_DATABASE_URL") or env.get("DATABASE_URL")
    if not raw:
        return "sqlite:///" + os.path.join(instance_dir, "ms.db")
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SettingsError("MS_DATABASE_URL is not a database URL") from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise SettingsError(f"MS_DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)")
    if backend == "postgresql" and url.drivername not in ("postgresql", "postgresql+psycopg2"):
        raise SettingsError(f"MS_DATABASE_URL: unsupported driver {url.drivername!r} (use postgresql://)")
    if url.drivername == "postgresql":  # psycopg2 is the installed driver
        raw = url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return raw


def _faces(env: Mapping[str, str]) -> tuple:
    raw = env.get("MS_FACES") or ",".join(FACES)
    named = {part.strip() for part in raw.split(",")} - {""}
    chosen = tuple(face for face in FACES if face in named)
    if named - set(FACES) or not chosen:
        raise SettingsError(f"MS_FACES={raw!r}: give some of internal, webhook, admin (comma-separated)")
    if "admin" in chosen and "webhook" not in chosen and not env.get("MS_PUBLIC_URL"):
        raise SettingsError("MS_FACES without webhook needs MS_PUBLIC_URL for the admin: the address of the "
                            "process that answers the webhook, which the admin shows in each webhook URL")
    return chosen


def _networks(env: Mapping[str, str], name: str) -> tuple:
    """Comma- or space-separated addresses or networks (`127.0.0.1, 10.0.0.0/8`)."""
    raw = env.get(name) or ""
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in raw.replace(",", " ").split())
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _generated_secret(instance_dir: str, filename: str) -> str:
    """Read a secret kept in the instance dir, creating it (mode 0600) on first use."""
    path = os.path.join(instance_dir, filename)
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    os.makedirs(instance_dir, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return value


def load(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Build Settings from an environment mapping (os.environ by default); raise SettingsError if invalid."""
    env = os.environ if env is None else env
    instance_dir = os.path.abspath(env.get("MS_INSTANCE_DIR") or "instance")
    log_level = (env.get("MS_LOG_LEVEL") or "INFO").upper()
    if not isinstance(logging.getLevelName(log_level), int):
        raise SettingsError(f"MS_LOG_LEVEL={log_level!r} is not a log level")
    host = env.get("MS_HOST") or "127.0.0.1"
    if any(c.isspace() for c in host):
        raise SettingsError(f"MS_HOST={host!r} is not a host name")
    internal = env.get("MS_INTERNAL_TOKEN") or None
    port = _int(env, "MS_PORT", 8023, 1, 65535)
    return Settings(
        database_url=_database_url(env, instance_dir),
        host=host,
        port=port,
        public_url=_http_url(env, "MS_PUBLIC_URL", f"http://localhost:{port}"),  # the port it really listens on
        phone_api_url=_http_url(env, "MS_PHONE_API_URL", DEFAULT_PHONE_API_URL),
        json_api_url=_http_url(env, "MS_JSON_API_URL", DEFAULT_JSON_API_URL),
        admin_token=_admin_token(env, instance_dir),
        internal_token=internal,
        secret_key=env.get("MS_SECRET_KEY") or _generated_secret(instance_dir, "secret_key"),
        originate_url=_http_url(env, "MS_ORIGINATE_URL", DEFAULT_ORIGINATE_URL),
        workers=_int(env, "MS_WORKERS", 4, 0, 64),
        faces=_faces(env),
        log_dir=os.path.abspath(env.get("MS_LOG_DIR") or "logs"),
        log_level=log_level,
        lookup_timeout=_float(env, "MS_LOOKUP_TIMEOUT", 1.5, 0.05, 30.0),
        instance_dir=instance_dir,
        json_api_budget=_int(env, "MS_JSON_API_BUDGET", 15, 1, 45),
        job_lease_seconds=_float(env, "MS_JOB_LEASE", 120.0, 1.0, 86400.0),
        admin_session_hours=_float(env, "MS_ADMIN_SESSION_HOURS", 12.0, 0.01, 720.0),
        trusted_proxies=_networks(env, "MS_TRUSTED_PROXIES"),
        retry_horizon_seconds=_duration(env, "MS_RETRY_HORIZON", 86400.0, 60.0, 30 * 86400.0),
        retention_days=_int(env, "MS_RETENTION_DAYS", 30, 0, 3650),
        pg_prepare=bool(_int(env, "MS_PG_PREPARE", 1, 0, 1)),
        click_max_age=_float(env, "MS_CLICK_MAX_AGE", 30.0, 1.0, 3600.0),
    )
