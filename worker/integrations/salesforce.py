"""Salesforce: the Contact found by email (else a Lead, found or created), one Note per event.

Set-up (README "Salesforce"): Setup → App Manager → New Connected App (or External Client
App) with OAuth enabled, the scope "Manage user data via APIs (api)", "Enable Client
Credentials Flow" and a run-as user; put its consumer key and secret in
``SALESFORCE_CLIENT_ID`` / ``SALESFORCE_CLIENT_SECRET`` and your My Domain URL in
``SALESFORCE_INSTANCE_URL`` (``https://acme.my.salesforce.com``).

- Auth: the OAuth 2.0 client-credentials flow (``/services/oauth2/token``), the token cached
  for the process and fetched again on a 401 (``worker/oauth.py``).
- Person: ``SELECT Id FROM Contact WHERE Email = '…'``; without a Contact, the same on
  ``SALESFORCE_PERSON_OBJECT`` (``Lead`` by default), created when absent (a Lead needs a
  company: the email's domain).
- Note: ``POST sobjects/Note`` ``{"ParentId", "Title" (80 characters), "Body"}``: plain text,
  at most 32 KB.
- Exactly once: ``SELECT Id FROM Note WHERE ParentId = '…' AND Title LIKE '%<event id>%'``;
  the title carries the event's marker.
- Limits: Salesforce counts API calls per 24 hours and concurrent long requests;
  ``SALESFORCE_RATE_LIMIT`` keeps a steady pace, and ``REQUEST_LIMIT_EXCEEDED`` (403) fails the
  delivery with that reason.
"""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.crm import CrmSink, split_name
from worker.errors import BadResponse
from worker.events import Event
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.note import fit
from worker.oauth import ClientCredentialsAuth
from worker.ratelimit import SharedRateLimiter
from worker.sink import Note
from worker.templates import builtin_templates

TITLE_MAX = 80
BODY_MAX = 32_000


def soql_string(value: str) -> str:
    """A SOQL string literal: backslashes and quotes escaped (SOQL's documented escapes)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _records(body: Any) -> list[dict[str, Any]]:
    records = body.get("records") if isinstance(body, dict) else None
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


class SalesforceSink(CrmSink):
    name = "salesforce"
    label = "Salesforce"
    note_format = "text"
    person_label = "record"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.salesforce_client_secret is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        instance = str(settings.salesforce_instance_url or "").rstrip("/")
        auth = ClientCredentialsAuth(
            "salesforce",
            f"{instance}/services/oauth2/token",
            settings.salesforce_client_id or "",
            secret_text(settings.salesforce_client_secret),
        )
        return ServiceClient(
            "salesforce",
            f"{instance}/services/data/{settings.salesforce_api_version}",
            settings=settings,
            limiter=limiter,
            rate=settings.salesforce_rate_limit,
            headers={"Accept": "application/json"},
            auth=auth,
        )

    def _query(self, soql: str) -> list[dict[str, Any]]:
        return _records(self.http.request("GET", "query", params={"q": soql}).json())

    def _find(self, sobject: str, email: str) -> str | None:
        found = self._query(f"SELECT Id FROM {sobject} WHERE Email = {soql_string(email)} LIMIT 1")
        return str(found[0]["Id"]) if found and found[0].get("Id") else None

    def find_person(self, email: str) -> str | None:
        contact = self._find("Contact", email)
        if contact is not None or self.settings.salesforce_person_object == "Contact":
            return contact
        return self._find("Lead", email)

    def create_person(self, event: Event) -> str:
        first, last = split_name(event)
        fields: dict[str, Any] = {"LastName": last, "Email": event.email}
        if first:
            fields["FirstName"] = first
        sobject = self.settings.salesforce_person_object
        if sobject == "Lead":
            fields["Company"] = (event.email or "@unknown").rpartition("@")[2] or "unknown"
            fields["LeadSource"] = "Web"
        body = self.http.request("POST", f"sobjects/{sobject}", json_body=fields).json()
        if not isinstance(body, dict) or not body.get("id"):
            raise BadResponse("answered without the new record's id", service=self.name)
        return str(body["id"])

    def default_note(self, event: Event, context: JourneyContext) -> str:
        # Plain text within a Note body's 32 KB: less shown until it fits.
        templates = builtin_templates()
        return fit(
            lambda limits: templates.render("note.txt.j2", event, context, limits),
            BODY_MAX,
            f"Visitor journey too large for a note.\n\n{event.marker}",
        )

    def add_note(self, person_id: str, event: Event, note: Note) -> str | None:
        payload = {
            "ParentId": person_id,
            # The marker in the title: the exactly-once check can query it.
            "Title": f"Visitor journey {event.marker}"[:TITLE_MAX],
            "Body": note.body[:BODY_MAX],
        }
        body = self.http.request("POST", "sobjects/Note", json_body=payload).json()
        return str(body["id"]) if isinstance(body, dict) and body.get("id") else None

    def has_note(self, person_id: str, event: Event) -> bool:
        soql = (
            f"SELECT Id, Title FROM Note WHERE ParentId = {soql_string(person_id)} "
            f"AND Title = {soql_string(f'Visitor journey {event.marker}'[:TITLE_MAX])}"
        )
        return bool(self._query(soql))

    def check(self) -> str:
        body = self.http.request("GET", "limits").json()
        daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
        left = daily.get("Remaining") if isinstance(daily, dict) else None
        return f"{self.label} answered ({left if left is not None else '?'} API calls left today)"


INTEGRATION = Integration(name="salesforce", label="Salesforce", sink=SalesforceSink)
