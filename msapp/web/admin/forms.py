"""The enterprise form: posted fields -> a config update, and back; field errors in the users' language."""
from __future__ import annotations

import re

CHECKBOXES = ("enabled", "notifications.notify_incoming", "notifications.notify_outgoing",
              "incoming_call_actions.create_customers", "outgoing_call_actions.create_customers",
              "click_to_call.block_premium", "missed_calls.create_task", "missed_calls.close_on_callback",
              "missed_calls.only_known_customers")
FIELDS = ("integration_code", "api_token", "timezone", "default_region", "signature_mode",
          "notifications.call_notify_mode", "incoming_call_actions.create_orders",
          "incoming_call_actions.organization", "incoming_call_actions.order_state",
          "incoming_call_actions.order_source", "outgoing_call_actions.create_orders",
          "click_to_call.max_per_extension_per_minute", "click_to_call.max_per_enterprise_per_minute",
          "click_to_call.max_per_extension_per_hour", "click_to_call.max_per_enterprise_per_hour",
          "click_to_call.max_per_extension_per_day", "click_to_call.max_per_enterprise_per_day",
          "click_to_call.refusals_per_minute", "click_to_call.cooldown_minutes",
          "missed_calls.assignee", "missed_calls.fallback_employee", "missed_calls.due_minutes")
LISTS = ("click_to_call.allowed_countries",)


def to_update(form) -> dict:
    """Nested config update from the flat form (checkboxes that are absent are off)."""
    update: dict = {}

    def put(name, value):
        head, _, tail = name.partition(".")
        if tail:
            update.setdefault(head, {})[tail] = value
        else:
            update[head] = value

    for name in CHECKBOXES:
        put(name, form.get(name) in ("on", "true", "1"))
    for name in LISTS:  # the page sends an empty marker value too, so "none selected" is not "absent"
        if name in form:
            put(name, [v.strip() for v in form.getlist(name) if v.strip()])
    for name in FIELDS:
        if name in form:
            value = form.get(name, "").strip()
            optional = name.endswith(("organization", "order_state", "order_source", "fallback_employee"))
            put(name, value or None if optional else value)
    return update


# Validation speaks English (it is shared with the JSON API); the page speaks Russian.
_RUSSIAN = [
    (r"must be true or false", "должно быть «да» или «нет»"),
    (r"must be one of: .*", "выберите одно из предложенных значений"),
    (r"must be a MoySklad id", "выберите значение из списка МойСклад"),
    (r"unknown field", "неизвестное поле"),
    (r"must be an object", "неверный формат раздела"),
    (r"must be the key as MoySklad shows it.*", "вставьте ключ так, как его показывает МойСклад, без пробелов"),
    (r"unknown time zone.*", "неизвестный часовой пояс (пример: Europe/Minsk)"),
    (r"must be a two-letter country code.*", "двухбуквенный код страны, например BY или RU"),
    (r"must be a whole number from (\d+) to (\d+)", r"целое число от \1 до \2"),
    (r"must be a list of one or more two-letter country codes.*", "выберите хотя бы одну страну"),
    (r"unknown country code: (\S+)", r"неизвестный код страны: \1"),
    (r"choose the employee who gets every task", "выберите сотрудника, которому ставить задачи"),
    (r"must be a date YYYY-MM-DD", "дата в виде ГГГГ-ММ-ДД"),
    (r"must be in or out", "входящие или исходящие"),
    (r"must be a page's `next` as given", "неверная ссылка на страницу: начните поиск заново"),
    (r"must not be before from", "конец периода раньше начала"),
    (r"a period is at most (\d+) days", r"период не длиннее \1 дней"),
    (r"must be hour or day", "по часам или по дням"),
    (r"hours are shown for at most 7 days", "по часам — не больше 7 дней"),
    (r"must be one of today, yesterday, 7d, 30d", "сегодня, вчера, 7 или 30 дней"),
]


def in_russian(errors: dict) -> dict:
    """The same field errors, worded for the admin page."""
    out = {}
    for field, message in errors.items():
        for pattern, russian in _RUSSIAN:
            if re.fullmatch(pattern, message):
                message = re.sub(pattern, russian, message)
                break
        out[field] = message
    return out
