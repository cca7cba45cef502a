"""Phone numbers (phonenumbers, E.164) and times (MoySklad wants Moscow time, `YYYY-MM-DD HH:MM:SS.mmm`)."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Optional
from zoneinfo import ZoneInfo

import phonenumbers

MOSCOW = ZoneInfo("Europe/Moscow")
# Parsed by hand, not datetime.fromisoformat: before Python 3.11 that refuses fractions other than 3 or 6
# digits ("17:12:22.5") and a "Z", which the PBX may send.
_PBX_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]{1,9}))?"
                       r"(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?")
_EXTENSION = re.compile(r"[0-9]{1,10}")


def to_e164(raw: object, region: str = "BY") -> Optional[str]:
    """The number in E.164 (`+375297111222`), or None if `raw` is not a plausible phone number."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        return None
    return _to_e164(raw.strip(), region)


@lru_cache(maxsize=4096)
def _to_e164(text: str, region: str) -> Optional[str]:
    """Cached: a call's events repeat its number."""
    digits = re.sub(r"[^0-9]", "", text)
    if not text.startswith("+") and len(digits) >= 11 and not text.startswith(("8", "0")):
        text = "+" + digits  # "375297111222", "79991234567": international without the plus
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    # Valid for its country; or at least possible when written internationally (new number ranges).
    if not phonenumbers.is_valid_number(number):
        if not (text.startswith("+") and phonenumbers.is_possible_number(number)):
            return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_extension(value: object) -> bool:
    return isinstance(value, str) and bool(_EXTENSION.fullmatch(value))


def national_digits(e164: str) -> str:
    """The national significant number: what MoySklad's free-text `search` is given."""
    try:
        return str(phonenumbers.parse(e164, None).national_number)
    except phonenumbers.NumberParseException:
        return re.sub(r"[^0-9]", "", e164)


@lru_cache(maxsize=4096)
def phones_in_text(text: str, region: str) -> tuple[str, ...]:
    """Every phone number in a free-text field such as "8 (029) 711-12-22; +375 29 711-12-22"."""
    if not text:
        return ()
    found = []
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
        found.append(phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164))
    if not found:
        for part in re.split(r"[;,/]|\s{2,}", text):
            e164 = to_e164(part, region)
            if e164:
                found.append(e164)
    return tuple(dict.fromkeys(found))


def phone_matches(stored: Optional[str], e164: str, region: str) -> bool:
    """Whether a stored free-text phone field holds the number `e164`."""
    return bool(stored) and e164 in phones_in_text(stored, region)


def parse_pbx_time(value: object, tz_name: str) -> Optional[datetime]:
    """PBX time -> naive UTC. Local `YYYY-MM-DD HH:MM:SS` (in tz_name) or ISO 8601 with offset; None if empty.

    Raises ValueError on anything else. Parses the same on every supported Python.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("time must be 'YYYY-MM-DD HH:MM:SS' or ISO 8601")
    match = _PBX_TIME.fullmatch(value.strip())
    error = "time must be 'YYYY-MM-DD HH:MM:SS' or ISO 8601 with offset"
    if match is None:
        raise ValueError(error)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        raise ValueError(error) from None
    if offset is None:  # PBX local time, in the enterprise's zone
        aware = moment.replace(tzinfo=ZoneInfo(tz_name))
    elif offset == "Z":
        aware = moment.replace(tzinfo=UTC)
    else:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(error)
        aware = moment.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return aware.astimezone(UTC).replace(tzinfo=None)


def to_moysklad_time(utc_naive: datetime) -> str:
    """Naive UTC -> MoySklad's `YYYY-MM-DD HH:MM:SS.mmm` in Moscow time."""
    moscow = utc_naive.replace(tzinfo=UTC).astimezone(MOSCOW).replace(tzinfo=None)
    return moscow.isoformat(" ", "milliseconds")  # strftime's format is twice the CPU


def from_moysklad_time(text: str) -> datetime:
    """MoySklad's Moscow `YYYY-MM-DD HH:MM:SS[.mmm]` -> naive UTC."""
    local = datetime.fromisoformat(text.strip().replace(" ", "T"))
    return local.replace(tzinfo=MOSCOW).astimezone(UTC).replace(tzinfo=None)
