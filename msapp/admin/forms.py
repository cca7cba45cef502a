"""The enterprise form: posted fields -> a config update, and back."""
from __future__ import annotations

CHECKBOXES = ("enabled", "notifications.notify_incoming", "notifications.notify_outgoing",
              "incoming_call_actions.create_customers", "outgoing_call_actions.create_customers")
FIELDS = ("integration_code", "api_token", "timezone", "default_region", "signature_mode",
          "notifications.call_notify_mode", "incoming_call_actions.create_orders",
          "incoming_call_actions.organization", "incoming_call_actions.order_state",
          "incoming_call_actions.order_source", "outgoing_call_actions.create_orders")


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
    for name in FIELDS:
        if name in form:
            value = form.get(name, "").strip()
            put(name, value or None if name.endswith(("organization", "order_state", "order_source")) else value)
    return update
