"""Unit tests of the toll-fraud guard's pure checks (destination, caller) and the country list."""
from datetime import datetime

import pytest

from msapp.services.click_guard import Refused, check_caller, check_destination, country_choices
from msapp.services.directory import Listing

CFG = {"default_region": "BY", "click_to_call": {"allowed_countries": None, "block_premium": True}}
LISTING = Listing([{"id": "a", "extension": "150", "uid": "ivanov@demo", "name": "Иванов"},
                   {"id": "b", "extension": "151", "uid": None, "name": None}], True, datetime(2026, 1, 1))


@pytest.mark.parametrize("number", ["+375297111222", "+375445613954", "+375172345678", "+375800123456"])
def test_ordinary_numbers_of_the_default_region_pass(number):
    check_destination(number, CFG)


@pytest.mark.parametrize("number,reason", [
    ("+79991234567", "country"), ("+5352123456", "country"), ("+881631234567", "country"),
    ("+375902123456", "invalid_number"), ("not a number", "invalid_number"),
])
def test_destinations_refused(number, reason):
    with pytest.raises(Refused) as info:
        check_destination(number, CFG)
    assert info.value.reason == reason and info.value.status == 403 and info.value.field == "destNumber"


def test_premium_types_only_when_blocked():
    cfg = {"default_region": "BY", "click_to_call": {"allowed_countries": ["GB"], "block_premium": True}}
    with pytest.raises(Refused) as info:
        check_destination("+447031234567", cfg)
    assert info.value.reason == "number_type"
    check_destination("+447031234567", {**cfg, "click_to_call": {"allowed_countries": ["GB"], "block_premium": False}})


def test_caller_checks():
    assert check_caller(LISTING, "150", "IVANOV@demo")["id"] == "a"  # logins compare without case
    assert check_caller(LISTING, "151", "petrova@demo") is None  # login unknown: the caller decides
    with pytest.raises(Refused) as info:
        check_caller(LISTING, "150", "petrova@demo")
    assert info.value.reason == "uid_mismatch" and info.value.field == "uid"
    with pytest.raises(Refused) as info:
        check_caller(LISTING, "999", "")
    assert info.value.reason == "unknown_extension" and info.value.field == "srcNumber"


def test_a_click_without_a_login_is_refused_once_logins_are_known():
    """MoySklad always sends the clicking user's login: without one the click is not MoySklad's."""
    with pytest.raises(Refused) as info:
        check_caller(LISTING, "150", "")
    assert info.value.reason == "uid_missing" and info.value.status == 403
    assert info.value.body() == {"error": "click refused"}  # the caller learns nothing of the reason
    unknown = Listing(LISTING.employees, False, LISTING.fetched_at)
    assert check_caller(unknown, "151", "") is None  # no logins stored (no JSON API token): the caller decides


@pytest.mark.parametrize("reason", ["unknown_extension", "uid_mismatch", "country", "number_type"])
def test_every_refusal_answers_the_same_body(reason):
    assert Refused(403, reason, "the precise reason", "srcNumber").body() == {"error": "click refused"}
    assert Refused(429, "rate_extension", "at most 10", "srcNumber", 5).body()["error"] == "at most 10"


def test_country_names_are_russian_and_complete():
    choices = dict(country_choices())
    assert choices["BY"] == "Беларусь" and choices["RU"] == "Россия" and choices["CU"] == "Куба"
    assert len(choices) >= 240 and not any(name.startswith("*") for name in choices.values())
