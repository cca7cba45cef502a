import pytest
from sqlalchemy import select

from msapp.db.models import Enterprise, WebhookKey
from msapp.errors import ApiError, ValidationFailed
from msapp.extensions import db
from msapp.services.config_schema import normalize, public_view, upgrade_legacy
from msapp.state import ms


@pytest.fixture
def ent(ctx):
    db.session.add(Enterprise(number="0367", name="Co", secret="s3cr3t",
                              integrations_config={"bitrix": {"keep": [1, 2]}, "retailcrm": "x"}))
    db.session.commit()
    return "0367"


def test_legacy_keys_are_read():
    cfg = normalize({"create_client": False, "create_order": "always", "order_source": "Звонок",
                     "employee_mapping": {"151": "id"}}, "https://p", "https://pub")
    assert cfg["incoming_call_actions"]["create_customers"] is False
    assert cfg["incoming_call_actions"]["create_orders"] == "always"
    assert cfg["incoming_call_actions"]["order_source"] == "Звонок"
    assert cfg["employee_mapping"] == {"151": "id"}
    assert "create_client" not in cfg and "create_order" not in cfg


@pytest.mark.parametrize("value,expected", [(True, "always"), (False, "none"), ("new_customer", "new_customer")])
def test_boolean_create_orders_from_seed_readme(value, expected):
    out = upgrade_legacy({"incoming_call_actions": {"create_orders": value}})
    assert out["incoming_call_actions"]["create_orders"] == expected


def test_save_merges_and_keeps_other_integrations(ent):
    store = ms().configs
    store.save(ent, {"enabled": True, "integration_code": "phonekey0123456789",
                     "notifications": {"notify_outgoing": True}})
    cfg = store.save(ent, {"incoming_call_actions": {"create_orders": "new_customer"}})
    row = db.session.get(Enterprise, ent)
    assert row.integrations_config["bitrix"] == {"keep": [1, 2]}
    assert row.integrations_config["retailcrm"] == "x"
    assert cfg["enabled"] is True and cfg["integration_code"] == "phonekey0123456789"
    assert cfg["notifications"] == {"call_notify_mode": "during", "notify_incoming": True, "notify_outgoing": True}
    assert cfg["incoming_call_actions"]["create_orders"] == "new_customer"
    assert cfg["incoming_call_actions"]["create_customers"] is True
    assert "webhook_url" not in row.integrations_config["ms"]


def test_legacy_config_is_rewritten_in_new_form_on_save(ent):
    row = db.session.get(Enterprise, ent)
    row.integrations_config = {**row.integrations_config, "ms": {"create_client": True, "create_order": "none"}}
    db.session.commit()
    ms().configs.save(ent, {"enabled": True})
    stored = db.session.get(Enterprise, ent).integrations_config["ms"]
    assert "create_client" not in stored and "create_order" not in stored
    assert stored["incoming_call_actions"]["create_customers"] is True


def test_secrets_masked_and_masked_write_keeps_value(ent):
    store = ms().configs
    store.save(ent, {"integration_code": "d03627d59c1948a0f9a6aa1e267c954bfd03d763", "api_token": "tok-abcdefgh1234"})
    view = public_view(store.read(ent))
    assert view["integration_code"] == "••••d763" and view["integration_code_set"] is True
    assert "d03627" not in str(view) and "tok-abcdefgh" not in str(view)
    assert "webhook_uuid" not in view and view["webhook_url"].startswith("https://bot.example.by/ms/webhook/")
    store.save(ent, {"integration_code": "••••d763", "api_token": ""})
    cfg = store.read(ent)
    assert cfg["integration_code"] == "d03627d59c1948a0f9a6aa1e267c954bfd03d763"
    assert cfg["api_token"] == "tok-abcdefgh1234"


@pytest.mark.parametrize("payload,field", [
    ({"enabled": "yes"}, "enabled"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"default_region": "XX"}, "default_region"),
    ({"signature_mode": "maybe"}, "signature_mode"),
    ({"notifications": {"call_notify_mode": "loud"}}, "notifications.call_notify_mode"),
    ({"notifications": {"notify_incoming": 1}}, "notifications.notify_incoming"),
    ({"incoming_call_actions": {"create_orders": "sometimes"}}, "incoming_call_actions.create_orders"),
    ({"incoming_call_actions": {"order_state": "'; drop table"}}, "incoming_call_actions.order_state"),
    ({"outgoing_call_actions": {"bogus": 1}}, "outgoing_call_actions.bogus"),
    ({"integration_code": "has spaces in it"}, "integration_code"),
    ({"nonsense": 1}, "nonsense"),
    ({"notifications": []}, "notifications"),
    ({"click_to_call": {"allowed_countries": []}}, "click_to_call.allowed_countries"),
    ({"click_to_call": {"allowed_countries": ["ZZ"]}}, "click_to_call.allowed_countries"),
    ({"click_to_call": {"allowed_countries": "BY"}}, None),
    ({"click_to_call": {"allowed_countries": [1]}}, "click_to_call.allowed_countries"),
    ({"click_to_call": {"block_premium": "no"}}, "click_to_call.block_premium"),
    ({"click_to_call": {"max_per_extension_per_minute": 0}}, "click_to_call.max_per_extension_per_minute"),
    ({"click_to_call": {"max_per_extension_per_minute": 121}}, "click_to_call.max_per_extension_per_minute"),
    ({"click_to_call": {"max_per_enterprise_per_minute": True}}, "click_to_call.max_per_enterprise_per_minute"),
    ({"click_to_call": {"max_per_enterprise_per_minute": "ten"}}, "click_to_call.max_per_enterprise_per_minute"),
    ({"click_to_call": {"max_per_extension_per_day": "٣٠٠"}}, "click_to_call.max_per_extension_per_day"),
    ({"click_to_call": {"cooldown_minutes": 0}}, "click_to_call.cooldown_minutes"),
    ({"missed_calls": {"fallback_employee": "0a9c1f00-aaaa\n"}}, "missed_calls.fallback_employee"),
    ({"click_to_call": {"unlimited": True}}, "click_to_call.unlimited"),
    ({"missed_calls": {"create_task": "yes"}}, "missed_calls.create_task"),
    ({"missed_calls": {"assignee": "boss"}}, "missed_calls.assignee"),
    ({"missed_calls": {"fallback_employee": "not an id!"}}, "missed_calls.fallback_employee"),
    ({"missed_calls": {"due_minutes": 0}}, "missed_calls.due_minutes"),
    ({"missed_calls": {"due_minutes": 7 * 24 * 60 + 1}}, "missed_calls.due_minutes"),
    ({"missed_calls": {"create_task": True, "assignee": "employee"}}, "missed_calls.fallback_employee"),
    ({"missed_calls": {"create_task": True, "assignee": "employee",
                       "fallback_employee": "0a9c1f00-0000-4000-8000-000000000151"}}, None),
    ({"missed_calls": {"surprise": 1}}, "missed_calls.surprise"),
])
def test_validation_names_the_field(ent, payload, field):
    if field is None:  # accepted
        ms().configs.save(ent, payload)
        return
    with pytest.raises(ValidationFailed) as info:
        ms().configs.save(ent, payload)
    assert info.value.status == 400 and info.value.field == field


def test_missed_calls_default_off_for_legacy_configs(ent):
    cfg = ms().configs.read(ent)
    assert cfg["missed_calls"] == {"create_task": False, "assignee": "owner", "fallback_employee": None,
                                   "due_minutes": 30, "close_on_callback": True, "only_known_customers": False}


def test_click_to_call_defaults_follow_the_default_region(ent):
    from msapp.services.click_guard import allowed_countries

    cfg = ms().configs.read(ent)
    assert cfg["click_to_call"] == {"allowed_countries": None, "block_premium": True,
                                    "max_per_extension_per_minute": 10, "max_per_enterprise_per_minute": 60,
                                    "max_per_extension_per_hour": 60, "max_per_enterprise_per_hour": 500,
                                    "max_per_extension_per_day": 300, "max_per_enterprise_per_day": 2000,
                                    "refusals_per_minute": 20, "cooldown_minutes": 10}
    assert allowed_countries(cfg) == ["BY"]
    cfg = ms().configs.save(ent, {"default_region": "ru"})
    assert allowed_countries(cfg) == ["RU"]
    cfg = ms().configs.save(ent, {"click_to_call": {"allowed_countries": ["kz", "RU", "KZ"],
                                                    "max_per_extension_per_minute": "5"}})
    assert cfg["click_to_call"]["allowed_countries"] == ["KZ", "RU"]
    assert cfg["click_to_call"]["max_per_extension_per_minute"] == 5 and cfg["click_to_call"]["block_premium"]


def test_body_must_be_an_object(ent):
    with pytest.raises(ApiError) as info:
        ms().configs.save(ent, ["enabled"])
    assert info.value.status == 400


def test_unknown_enterprise_is_404(ctx):
    with pytest.raises(ApiError) as info:
        ms().configs.read("9999")
    assert info.value.status == 404


def test_a_put_of_what_a_get_returned_changes_nothing(app, ent):
    """A read-modify-write client: GET, then PUT the same body (read-only fields, masked secrets)."""
    client = app.test_client()
    bearer = {"Authorization": "Bearer test-admin-token-0123456789"}
    ms().configs.save(ent, {"enabled": True, "integration_code": "key-abcdefgh1234", "api_token": "tok-abcdefgh1234"})
    before = db.session.get(Enterprise, ent).integrations_config
    db.session.commit()
    got = client.get(f"/ms-admin/api/config/{ent}", headers=bearer).get_json()
    assert got["api_token_set"] is True and got["webhook_url"]
    put = client.put(f"/ms-admin/api/config/{ent}", json=got, headers=bearer)
    assert put.status_code == 200, put.get_json()
    assert put.get_json() == got
    db.session.expire_all()
    assert db.session.get(Enterprise, ent).integrations_config == before


def test_phone_api_url_is_read_only(ent):
    cfg = ms().configs.save(ent, {"phone_api_url": "https://evil.example/api", "enabled": True})
    assert cfg["phone_api_url"] == "https://api.moysklad.ru/api/phone/1.0"
    assert db.session.get(Enterprise, ent).integrations_config["ms"]["phone_api_url"] == cfg["phone_api_url"]


def test_webhook_lookup_exact_and_regenerate(ent):
    store = ms().configs
    old = store.save(ent, {"enabled": True})["webhook_uuid"]
    found = store.find_by_webhook(old)
    assert found is not None and found[0].number == ent
    for bad in (old.upper(), old[:-1], old + "0", "%", "_", "%25", old.replace("-", ""), "", None):
        assert store.find_by_webhook(bad) is None
    new = store.regenerate_webhook(ent)["webhook_uuid"]
    assert new != old and store.find_by_webhook(old) is None
    assert store.find_by_webhook(new)[0].number == ent
    assert db.session.scalar(select(WebhookKey.uuid_sha256)) != new  # only the hash is stored


def test_delete_removes_only_ms(ent):
    store = ms().configs
    uuid_ = store.save(ent, {"enabled": True})["webhook_uuid"]
    store.delete(ent)
    row = db.session.get(Enterprise, ent)
    assert row.integrations_config == {"bitrix": {"keep": [1, 2]}, "retailcrm": "x"}
    assert store.find_by_webhook(uuid_) is None


def test_reindex_finds_configs_written_by_the_old_service(ent):
    uuid_ = "6f1b9a9e-6a55-4c8e-9d1e-2f0d7b1c9a10"
    row = db.session.get(Enterprise, ent)
    row.integrations_config = {**row.integrations_config, "ms": {"enabled": True, "webhook_uuid": uuid_}}
    db.session.commit()
    assert ms().configs.find_by_webhook(uuid_) is None
    assert ms().configs.reindex_webhooks() == 1
    assert ms().configs.find_by_webhook(uuid_)[0].number == ent
