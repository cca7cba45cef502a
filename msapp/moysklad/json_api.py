"""MoySklad JSON API 1.2: the counterparty, employee, organization and customer-order subset."""
from __future__ import annotations

from typing import Optional

from msapp.moysklad.formats import national_digits, phone_matches
from msapp.moysklad.http import ApiClient, meta


class JsonApi(ApiClient):
    api = "json"

    def __init__(self, base_url: str, token: str, **kw):
        super().__init__(base_url, **kw)
        self._token = token

    def auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self._token}"}

    def href(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def meta_of(self, entity: str, entity_id: str, type_: Optional[str] = None) -> dict:
        """`{"meta": {...}}` reference to an entity, as the JSON API wants it in bodies."""
        return {"meta": meta(self.href(f"entity/{entity}/{entity_id}"), type_ or entity)}

    def _rows(self, path: str, params: Optional[dict] = None, event: str = "") -> list[dict]:
        body = self.request("GET", path, params=params, event=event) or {}
        return list(body.get("rows") or [])

    # -- counterparties ---------------------------------------------------------------------------
    def search_counterparties(self, text: str, limit: int = 50) -> list[dict]:
        """Context search (name, phone, contact persons' phones...) with contact persons expanded."""
        return self._rows("/entity/counterparty",
                          {"search": text, "limit": min(limit, 100), "expand": "contactpersons"},
                          event="counterparty.search")

    def find_counterparty_by_phone(self, e164: str, region: str) -> Optional[dict]:
        """The counterparty whose phone (or a contact person's) is `e164`, compared after normalising.

        Returns {"id", "name", "phone", "href", "owner_href", "contact_persons": [...], "matched_by"}.
        """
        for row in self.search_counterparties(national_digits(e164)):
            persons = [p for p in ((row.get("contactpersons") or {}).get("rows") or []) if isinstance(p, dict)]
            if phone_matches(row.get("phone"), e164, region):
                return _counterparty(row, persons, "phone")
            for person in persons:
                if phone_matches(person.get("phone"), e164, region):
                    return _counterparty(row, persons, "contact_person")
        return None

    def create_counterparty(self, name: str, phone: str, owner_id: Optional[str] = None,
                            description: str = "", company_type: str = "individual",
                            external_code: Optional[str] = None) -> dict:
        body = {"name": name[:255], "phone": phone, "companyType": company_type}
        if external_code:
            body["externalCode"] = external_code[:255]
        if description:
            body["description"] = description[:4096]
        if owner_id:
            body["owner"] = self.meta_of("employee", owner_id)
        return self.request("POST", "/entity/counterparty", body=body, event="counterparty.create") or {}

    def find_by_external_code(self, entity: str, code: str) -> Optional[dict]:
        """The entity created with this externalCode (the idempotency probe after a lost answer)."""
        rows = self._rows(f"/entity/{entity}", {"filter": f"externalCode={code.replace(';', chr(92) + ';')}"},
                          event=f"{entity}.by_external_code")
        return rows[0] if rows else None

    def get_counterparty(self, counterparty_id: str) -> dict:
        return self.request("GET", f"/entity/counterparty/{counterparty_id}", event="counterparty.get") or {}

    # -- employees and the account --------------------------------------------------------------
    def employees(self) -> list[dict]:
        return self._rows("/entity/employee", {"limit": 1000}, event="employees")

    def employee_by_uid(self, uid: str) -> Optional[dict]:
        rows = self._rows("/entity/employee", {"filter": f"uid={uid.replace(';', chr(92) + ';')}"},
                          event="employee.by_uid")
        return rows[0] if rows else None

    def get_employee(self, employee_id: str) -> dict:
        return self.request("GET", f"/entity/employee/{employee_id}", event="employee.get") or {}

    def current_employee(self) -> dict:
        """Who the token belongs to (a cheap authenticated request for "test connection")."""
        return self.request("GET", "/context/employee", event="context.employee") or {}

    def organizations(self) -> list[dict]:
        return self._rows("/entity/organization", {"limit": 100}, event="organizations")

    def order_states(self) -> list[dict]:
        body = self.request("GET", "/entity/customerorder/metadata", event="customerorder.metadata") or {}
        return list(body.get("states") or [])

    def sales_channels(self) -> list[dict]:
        return self._rows("/entity/saleschannel", {"limit": 1000}, event="saleschannels")

    # -- orders -----------------------------------------------------------------------------------
    def create_customer_order(self, organization_id: str, agent_id: str, *, state_id: Optional[str] = None,
                              sales_channel_id: Optional[str] = None, owner_id: Optional[str] = None,
                              description: str = "", external_code: Optional[str] = None) -> dict:
        body = {"organization": self.meta_of("organization", organization_id),
                "agent": self.meta_of("counterparty", agent_id)}
        if external_code:
            body["externalCode"] = external_code[:255]
        if state_id:
            body["state"] = {"meta": meta(self.href(f"entity/customerorder/metadata/states/{state_id}"), "state")}
        if sales_channel_id:
            body["salesChannel"] = self.meta_of("saleschannel", sales_channel_id)
        if owner_id:
            body["owner"] = self.meta_of("employee", owner_id)
        if description:
            body["description"] = description[:4096]
        return self.request("POST", "/entity/customerorder", body=body, event="customerorder.create") or {}


    # -- tasks (docs/moysklad.md 2.11) ------------------------------------------------------------------
    def create_task(self, description: str, assignee_id: str, *, agent_id: Optional[str] = None,
                    due: Optional[str] = None) -> dict:
        """POST /entity/task (`description` and `assignee` are required; `due` in MoySklad time)."""
        body = {"description": description[:4096], "assignee": self.meta_of("employee", assignee_id)}
        if agent_id:
            body["agent"] = self.meta_of("counterparty", agent_id)
        if due:
            body["dueToDate"] = due
        return self.request("POST", "/entity/task", body=body, event="task.create") or {}

    def get_task(self, task_id: str) -> dict:
        return self.request("GET", f"/entity/task/{task_id}", event="task.get") or {}

    def update_task(self, task_id: str, changes: dict) -> dict:
        return self.request("PUT", f"/entity/task/{task_id}", body=changes, event="task.update") or {}

    def find_open_task(self, marker: str) -> Optional[dict]:
        """The open task whose description carries `marker` (the probe after a lost create answer)."""
        rows = self._rows("/entity/task", {"filter": f"done=false;description~{marker.replace(';', chr(92) + ';')}"},
                          event="task.by_marker")
        return rows[0] if rows else None

    def add_task_note(self, task_id: str, text: str) -> dict:
        return self.request("POST", f"/entity/task/{task_id}/notes", body={"description": text[:4096]},
                            event="task.note") or {}


def _counterparty(row: dict, persons: list, matched_by: str) -> dict:
    owner = ((row.get("owner") or {}).get("meta") or {}).get("href")
    return {
        "id": row.get("id"),
        "name": row.get("name"),
        "phone": row.get("phone"),
        "href": ((row.get("meta") or {}).get("href")),
        "company_type": row.get("companyType"),
        "owner_href": owner,
        "contact_persons": [{"name": p.get("name"), "phone": p.get("phone")} for p in persons],
        "matched_by": matched_by,
    }
