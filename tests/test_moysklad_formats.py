from datetime import datetime

import pytest

from msapp.moysklad.formats import (
    from_moysklad_time,
    is_extension,
    national_digits,
    parse_pbx_time,
    phone_matches,
    phones_in_text,
    to_e164,
    to_moysklad_time,
)


@pytest.mark.parametrize("raw,region,expected", [
    ("80297111222", "BY", "+375297111222"),
    ("+375 (29) 711-12-22", "BY", "+375297111222"),
    ("375297111222", "BY", "+375297111222"),
    ("8 (029) 711-12-22", "BY", "+375297111222"),
    ("+375445613954", "RU", "+375445613954"),
    ("89997776655", "RU", "+79997776655"),
    ("+7 999 777 6655", "BY", "+79997776655"),
    ("79991234567", "BY", "+79991234567"),
    ("+74959999999", "BY", "+74959999999"),
])
def test_to_e164(raw, region, expected):
    assert to_e164(raw, region) == expected


@pytest.mark.parametrize("raw", ["", "   ", "151", "abc", "1;DROP TABLE", "+375297111222$(reboot)",
                                 "+375 29 711`id`", None, 375297111222, "9" * 70, "%2B375297111222"])
def test_to_e164_rejects(raw):
    assert to_e164(raw, "BY") is None


def test_free_text_phone_fields():
    text = "8 (029) 711-12-22; +375 29 711-12-22"
    assert phones_in_text(text, "BY") == ("+375297111222",)
    assert phone_matches(text, "+375297111222", "BY")
    assert phone_matches("тел. 80297111222, факс 80291234567", "+375291234567", "BY")
    assert not phone_matches(text, "+375297111223", "BY")
    assert not phone_matches(None, "+375297111222", "BY")
    assert national_digits("+375297111222") == "297111222"
    assert national_digits("+79991234567") == "9991234567"


@pytest.mark.parametrize("value,ok", [("151", True), ("0", True), ("15a", False), ("", False), ("1" * 11, False),
                                      (151, False), ("+151", False)])
def test_is_extension(value, ok):
    assert is_extension(value) is ok


def test_pbx_local_time_to_moscow():
    utc = parse_pbx_time("2025-09-13 17:12:22", "Europe/Minsk")  # Minsk = UTC+3 = Moscow
    assert utc == datetime(2025, 9, 13, 14, 12, 22)
    assert to_moysklad_time(utc) == "2025-09-13 17:12:22.000"
    vlad = parse_pbx_time("2025-09-13 17:12:22", "Asia/Vladivostok")  # UTC+10
    assert to_moysklad_time(vlad) == "2025-09-13 10:12:22.000"
    assert parse_pbx_time("2025-09-13T17:12:22.5+02:00", "Europe/Minsk") == datetime(2025, 9, 13, 15, 12, 22, 500000)
    assert parse_pbx_time("2025-09-13T14:12:22Z", "Europe/Minsk") == datetime(2025, 9, 13, 14, 12, 22)
    assert parse_pbx_time("2025-09-13 17:12:22.25", "Europe/Minsk") == datetime(2025, 9, 13, 14, 12, 22, 250000)
    assert parse_pbx_time("2025-09-13T17:12:22-0330", "Europe/Minsk") == datetime(2025, 9, 13, 20, 42, 22)
    assert to_moysklad_time(datetime(2025, 1, 1, 0, 0, 0, 123456)) == "2025-01-01 03:00:00.123"
    assert from_moysklad_time("2025-09-13 17:12:22.000") == datetime(2025, 9, 13, 14, 12, 22)
    assert parse_pbx_time(None, "Europe/Minsk") is None and parse_pbx_time("", "Europe/Minsk") is None


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01 00:00:00", "2025-09-13T17:12:22junk", 1757772742, "2025-09-13",
                                 "2025-09-13 25:00:00", "2025-09-13T17:12:22+24:00", "2025-02-30 10:00:00"])
def test_bad_times(bad):
    with pytest.raises(ValueError):
        parse_pbx_time(bad, "Europe/Minsk")
