"""MoySklad Phone API 1.0: employees with extensions, calls, and popup card events."""
from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from msapp.moysklad.http import ApiClient, id_from_href


class PhoneApi(ApiClient):
    api = "phone"

    def __init__(self, base_url: str, key: str, **kw):
        super().__init__(base_url, **kw)
        self._key = key

    def auth_headers(self) -> dict:
        return {"Lognex-Phone-Auth-Token": self._key}

    def employees(self, extension: Optional[str] = None) -> list[dict]:
        """Employees that have an extension: [{"id", "href", "extension"}]. The API spells it `extention`."""
        params = {"filter": f"extention={extension}"} if extension else None
        body = self.request("GET", "/employee", params=params, event="employees") or {}
        out = []
        for row in body.get("employees") or []:
            href = ((row.get("meta") or {}).get("href")) or ""
            ext = row.get("extention") or row.get("extension")
            if href and ext:
                out.append({"id": id_from_href(href), "href": href, "extension": str(ext)})
        return out

    def create_call(self, call: dict) -> dict:
        """POST /call (answers 200 with the call); `events` in the body show cards at once."""
        return self.request("POST", "/call", body=call, event="call.create") or {}

    def get_call(self, call_id: str) -> dict:
        return self.request("GET", f"/call/{quote(call_id, safe='')}", event="call.get") or {}

    def update_call(self, call_id: str, changes: dict) -> dict:
        """PUT /call/{id}: only the given fields; filled fields stay, comment replaces, recordUrl appends."""
        return self.request("PUT", f"/call/{quote(call_id, safe='')}", body=changes, event="call.update") or {}

    def update_call_by_extid(self, external_id: str, changes: dict) -> dict:
        return self.request("PUT", f"/call/extid/{quote(external_id, safe='')}", body=changes,
                            event="call.update_extid") or {}

    def send_event(self, call_id: str, event: dict) -> None:
        """POST /call/{id}/event (answers 204)."""
        self.request("POST", f"/call/{quote(call_id, safe='')}/event", body=event, event="call.event")

    def send_event_by_extid(self, external_id: str, event: dict) -> None:
        self.request("POST", f"/call/extid/{quote(external_id, safe='')}/event", body=event,
                     event="call.event_extid")
