import os
import stat

import pytest

from msapp import settings
from msapp.settings import SettingsError


def base_env(tmp_path, **extra):
    env = {"MS_INSTANCE_DIR": str(tmp_path / "inst"), "MS_LOG_DIR": str(tmp_path / "logs")}
    env.update(extra)
    return env


def test_defaults_match_design(tmp_path):
    s = settings.load(base_env(tmp_path))
    assert (s.host, s.port, s.workers, s.lookup_timeout) == ("127.0.0.1", 8023, 4, 1.5)
    assert s.public_url == "http://localhost:8023"

    assert s.phone_api_url == "https://api.moysklad.ru/api/phone/1.0"
    assert s.json_api_url == "https://api.moysklad.ru/api/remap/1.2"
    assert s.originate_url == "http://127.0.0.1:8018/api/makecallexternal"
    assert s.database_url == "sqlite:///" + str(tmp_path / "inst" / "ms.db")
    assert s.internal_token is None and s.log_level == "INFO"


def test_default_public_url_follows_the_port(tmp_path):
    s = settings.load(base_env(tmp_path, MS_PORT="9100"))
    assert s.public_url == "http://localhost:9100"


def test_admin_token_generated_once_with_mode_0600(tmp_path):
    first = settings.load(base_env(tmp_path))
    path = tmp_path / "inst" / "admin_token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert settings.load(base_env(tmp_path)).admin_token == first.admin_token
    assert len(first.admin_token) >= 32


def test_env_overrides(tmp_path):
    s = settings.load(base_env(
        tmp_path, MS_PORT="9000", MS_HOST="0.0.0.0", MS_WORKERS="2", MS_ADMIN_TOKEN="tok-0123456789abcdefghijklm",
        MS_INTERNAL_TOKEN="int", MS_PUBLIC_URL="https://bot.example.by/", MS_LOOKUP_TIMEOUT="0.5",
        DATABASE_URL="postgresql://u@db/x", MS_LOG_LEVEL="debug"))
    assert (s.port, s.host, s.workers, s.admin_token, s.internal_token) == (9000, "0.0.0.0", 2,
                                                                           "tok-0123456789abcdefghijklm", "int")
    assert s.public_url == "https://bot.example.by"
    assert s.database_url == "postgresql+psycopg2://u@db/x"
    assert s.lookup_timeout == 0.5 and s.log_level == "DEBUG"


def test_ms_database_url_wins_over_database_url(tmp_path):
    s = settings.load(base_env(tmp_path, MS_DATABASE_URL="sqlite:////tmp/a.db", DATABASE_URL="postgresql://x/y"))
    assert s.database_url == "sqlite:////tmp/a.db"


@pytest.mark.parametrize("name,value,fragment", [
    ("MS_PORT", "abc", "MS_PORT"),
    ("MS_PORT", "70000", "out of range"),
    ("MS_PORT", "0", "out of range"),
    ("MS_WORKERS", "-1", "MS_WORKERS"),
    ("MS_LOOKUP_TIMEOUT", "soon", "MS_LOOKUP_TIMEOUT"),
    ("MS_DATABASE_URL", "not a url", "MS_DATABASE_URL"),
    ("MS_DATABASE_URL", "mysql://u@h/db", "unsupported database"),
    ("MS_PUBLIC_URL", "ftp://x", "MS_PUBLIC_URL"),
    ("MS_PHONE_API_URL", "api.moysklad.ru", "MS_PHONE_API_URL"),
    ("MS_LOG_LEVEL", "LOUD", "MS_LOG_LEVEL"),
    ("MS_PG_PREPARE", "yes", "MS_PG_PREPARE"),
    ("MS_PG_PREPARE", "2", "out of range"),
    ("MS_FACES", "events", "MS_FACES"),
    ("MS_FACES", "internal,webhook,metrics", "MS_FACES"),
    ("MS_FACES", ",", "MS_FACES"),
])
def test_invalid_settings_are_one_line_errors(tmp_path, name, value, fragment):
    with pytest.raises(SettingsError) as info:
        settings.load(base_env(tmp_path, **{name: value}))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("token", ["short", "x" * 23, " " + "x" * 30, "x" * 30 + "\n"])
def test_a_short_or_padded_admin_token_is_refused(tmp_path, token):
    with pytest.raises(settings.SettingsError, match="MS_ADMIN_TOKEN must be at least 24"):
        settings.load(base_env(tmp_path, MS_ADMIN_TOKEN=token))
    assert settings.load(base_env(tmp_path, MS_ADMIN_TOKEN="x" * 24)).admin_token == "x" * 24


def test_the_scheme_of_a_url_is_compared_in_any_case(tmp_path):
    s = settings.load(base_env(tmp_path, MS_PUBLIC_URL="HTTPS://Bot.Example.by"))
    assert s.public_url == "https://Bot.Example.by"


def test_click_max_age(tmp_path):
    assert settings.load(base_env(tmp_path)).click_max_age == 30.0
    assert settings.load(base_env(tmp_path, MS_CLICK_MAX_AGE="5")).click_max_age == 5.0
    with pytest.raises(settings.SettingsError, match="MS_CLICK_MAX_AGE"):
        settings.load(base_env(tmp_path, MS_CLICK_MAX_AGE="0"))


def test_credentials_in_the_originate_url_never_reach_an_error(tmp_path):
    with pytest.raises(settings.SettingsError) as err:
        settings.load(base_env(tmp_path, MS_ORIGINATE_URL="ftp://user:s3cret@pbx/x?key=k3y"))
    assert "s3cret" not in str(err.value) and "k3y" not in str(err.value)


def test_faces_default_to_all_and_may_be_some(tmp_path):
    assert settings.load(base_env(tmp_path)).faces == ("internal", "webhook", "admin")
    chosen = settings.load(base_env(tmp_path, MS_FACES=" webhook, internal,"))
    assert chosen.faces == ("internal", "webhook")
    alone = settings.load(base_env(tmp_path, MS_FACES="admin", MS_PUBLIC_URL="https://bot.example.by"))
    assert alone.faces == ("admin",)


def test_the_admin_face_without_the_webhook_needs_its_address(tmp_path):
    """The process's own port would otherwise be the base of every webhook URL the admin shows."""
    for faces in ("admin", "internal,admin"):
        with pytest.raises(SettingsError, match="needs MS_PUBLIC_URL"):
            settings.load(base_env(tmp_path, MS_FACES=faces, MS_PORT="8024"))
