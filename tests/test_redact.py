import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msapp import logging_setup, redact
from msapp.redact import mask_tail, redact_obj, redact_text

UUID = "6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a10"


@pytest.mark.parametrize("text,secret", [
    ("Lognex-Phone-Auth-Token: d03627d59c1948a0f9a6", "d03627d59c1948a0f9a6"),
    ("headers={'Authorization': 'Bearer abc123token'}", "abc123token"),
    ("Authorization: Basic YWRtaW46cGFzcw==", "YWRtaW46cGFzcw=="),
    (f"POST /ms/webhook/{UUID} 200", UUID),
    ('{"integration_code": "k3y-value", "x": 1}', "k3y-value"),
    ("GET http://127.0.0.1:8018/api/makecallexternal?code=151&phone=%2B375&clientId=s3cr3t", "s3cr3t"),
    ("api_token=tok999", "tok999"),
    ("X-Internal-Token: inttok", "inttok"),
])
def test_redact_text(text, secret):
    out = redact_text(text)
    assert secret not in out and "••••" in out


def test_redact_obj_masks_secret_keys_deeply():
    obj = {"headers": {"Lognex-Phone-Auth-Token": "k", "Content-Type": "application/json"},
           "body": {"api_token": "t", "name": "Иван", "items": [{"secret": "s"}]},
           "url": f"https://bot.example.by/ms/webhook/{UUID}"}
    out = redact_obj(obj)
    assert out["headers"]["Lognex-Phone-Auth-Token"] == "••••"
    assert out["headers"]["Content-Type"] == "application/json"
    assert out["body"]["api_token"] == "••••" and out["body"]["name"] == "Иван"
    assert out["body"]["items"][0]["secret"] == "••••"
    assert UUID not in out["url"]
    assert obj["body"]["api_token"] == "t"  # the original is untouched


def test_mask_tail():
    assert mask_tail("d03627d59c1948a0f9a6aa1e267c954bfd03d763") == "••••d763"
    assert mask_tail("short") == "••••" and mask_tail("") == "" and mask_tail(None) == ""


def test_log_file_is_redacted(tmp_path):
    logging_setup.configure(str(tmp_path), "INFO")
    log = logging.getLogger("msapp.test")
    log.info("sending Lognex-Phone-Auth-Token: %s to %s", "supersecretkey", f"/ms/webhook/{UUID}")
    try:
        raise ValueError("Authorization: Bearer leakedtoken")
    except ValueError:
        log.exception("failed")
    for handler in logging.getLogger("msapp").handlers:
        handler.flush()
    text = (tmp_path / "ms.log").read_text()
    assert "sending" in text and "failed" in text
    for secret in ("supersecretkey", UUID, "leakedtoken"):
        assert secret not in text


_FRAGMENTS = ["token", "ToKeN=abc", "Authorization: Bearer abc.def", "/MS/Webhook/5f0c", "clientId=77", "PASSWORD='x'",
              "Cookie: s=1", "integration_code: 123", "secret=9", "webhook_uuid=u", "X-Internal-Token: t", "+375296254070",
              "доб. 150", " ", "\"", "{", "}", ":", "=", "SHOW", "Lognex-Phone-Auth-Token: k"]


def _same_as_every_pattern(text):
    slow = redact._WEBHOOK_PATH.sub(lambda m: m.group(1) + redact.MASK, text)
    slow = redact._HEADER_LIKE.sub(lambda m: m.group(1) + m.group(2) + redact.MASK, slow)
    slow = redact._KEY_VALUE.sub(lambda m: m.group(1) + redact.MASK, slow)
    assert redact.redact_text(text) == (slow if text else text)


@pytest.mark.parametrize("text", _FRAGMENTS)
def test_the_fast_path_skips_no_secret_pattern(text):
    """redact_text skips the regexes for text without a trigger word: the result must be the same as
    running them on every string."""
    _same_as_every_pattern(text)


@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=8)), max_size=8))
def test_the_fast_path_on_mixed_text(parts):
    _same_as_every_pattern("".join(parts))


_KEYS = st.one_of(st.sampled_from(sorted(redact.SECRET_KEYS) + ["Client-Id", "CLIENT_ID", "Api-Token", "to\u212aen",
                                                                "name", "phone", "rows"]), st.text(max_size=6))
_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(_FRAGMENTS), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=30)


@given(_VALUES)
def test_a_value_with_nothing_to_mask_is_kept_as_the_walk_would_keep_it(value):
    """redact_obj skips the walk when the value's JSON text holds no secret word: the result must be the
    walk's, whatever the keys, strings and nesting; and redact_for_json's (a journal column's value), when
    it is the scan's JSON text, must be the text of the walk's result, as the column would encode it."""
    walked = redact._walk(value, 0)
    assert redact_obj(value) == walked
    for_json = redact.redact_for_json(value)
    if isinstance(for_json, redact.JsonText):
        assert json.loads(for_json) == walked and for_json == json.JSONEncoder(ensure_ascii=False).encode(walked)
    else:
        assert for_json == walked


def _nested(value, levels):
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    {"to\u212aen": "k"},  # the Kelvin sign lowers to "k": a secret key for the walk
    {"a": {"b": [{"Client_Id": "77"}]}},
    {"deep": _nested(["x"], 23)},  # deeper than the walk goes: masked there
    [{"url": "/MS/Webhook/5f0c"}],
])
def test_values_the_scan_must_not_pass(value):
    assert redact_obj(value) == redact._walk(value, 0) != value
    assert redact.redact_for_json(value) == redact._walk(value, 0) and not isinstance(redact.redact_for_json(value), str)
