"""Salesforce: the Contact found by email (else a Lead, found or created), its journey fields,
one Note per event.

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
- Journey fields: custom fields ``VE_First_Touch__c`` ... on Contact (and Lead, with
  ``SALESFORCE_PERSON_OBJECT=Lead``), made by the admin in Object Manager or by
  ``visitor-enrich salesforce-setup``. The sink reads ``GET sobjects/<Object>/describe`` once
  per process: the fields this user can update (a field without field-level security for the
  run-as user is left out of the describe, or not ``updateable``), and the object's id
  prefix (``keyPrefix``), which tells a Contact id from a Lead id. Then one
  ``PATCH sobjects/<Object>/<id>`` with those fields (204); a field not sent is never an
  ``INVALID_FIELD`` error. Types: Text(255), Number(18, 2), DateTime, Checkbox.
- Set-up: the Tooling API, ``POST tooling/sobjects/CustomField`` ``{"FullName":
  "Contact.VE_First_Touch__c", "Metadata": {label, type, length/precision/scale,
  defaultValue, description, inlineHelpText}}`` for each field the describe lacks; it needs
  "Customize Application". A field created that way is visible to no profile until the
  admin grants field-level security (README "Salesforce"), so a field that exists but is
  hidden answers ``DUPLICATE_DEVELOPER_NAME`` (the error code seen in third-party code
  only; any "duplicate" error is taken so) and is reported as not writable.
- Limits: Salesforce counts API calls per 24 hours and concurrent long requests;
  ``SALESFORCE_RATE_LIMIT`` keeps a steady pace, and ``REQUEST_LIMIT_EXCEEDED`` (403) fails the
  delivery with that reason.
"""

from __future__ import annotations

from typing import Any

from config import Settings
from worker.crm import CrmSink, split_name
from worker.errors import AuthFailed, BadResponse, Rejected
from worker.events import Event
from worker.http import ServiceClient, secret_text
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.journey_fields import JOURNEY_FIELDS, FieldKind, JourneyField
from worker.note import fit
from worker.oauth import ClientCredentialsAuth
from worker.ratelimit import SharedRateLimiter
from worker.sink import Note
from worker.templates import builtin_templates

TITLE_MAX = 80
BODY_MAX = 32_000
TEXT_LENGTH = 255
# Each journey field kind as Salesforce custom field metadata.
FIELD_METADATA: dict[FieldKind, dict[str, Any]] = {
    "text": {"type": "Text", "length": TEXT_LENGTH},
    "number": {"type": "Number", "precision": 18, "scale": 2},
    "datetime": {"type": "DateTime"},
    "boolean": {"type": "Checkbox", "defaultValue": "false"},
}


def salesforce_field_name(field: JourneyField) -> str:
    """``VE_First_Touch__c`` for ``first_touch``: the custom field's API name."""
    return "VE_" + "_".join(part.capitalize() for part in field.name.split("_")) + "__c"


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
    field_text_max = TEXT_LENGTH
    person_label = "record"
    setup_command = "salesforce-setup"
    after_setup = (
        "now grant field-level security on the new fields to the run-as user "
        '(README "Salesforce"): until then the sink cannot see them'
    )

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        super().__init__(settings, limiter)
        # sobject -> the first three characters of its record ids, from its describe.
        self._id_prefixes: dict[str, str] = {}

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

    # Journey fields ---------------------------------------------------------------------

    def field_scopes(self) -> tuple[str, ...]:
        # A Contact is found first; a Lead only when the person object is Lead.
        if self.settings.salesforce_person_object == "Contact":
            return ("Contact",)
        return ("Contact", "Lead")

    def field_scope(self, person_id: str | None) -> str | None:
        for sobject in self.field_scopes():
            self.field_keys(sobject)  # its describe (once per process) names its id prefix
            prefix = self._id_prefixes.get(sobject)
            if person_id and prefix and person_id.startswith(prefix):
                return sobject
        return None

    def field_api_name(self, field: JourneyField) -> str:
        return salesforce_field_name(field)

    def read_field_keys(self, scope: str) -> dict[str, str]:
        body = self.http.request("GET", f"sobjects/{scope}/describe").json()
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, list):
            raise BadResponse(f"{scope} describe without a fields list", service=self.name)
        if isinstance(body.get("keyPrefix"), str):
            self._id_prefixes[scope] = body["keyPrefix"]
        # API names are case-insensitive; the describe spells them as they were created.
        updateable = {
            str(f["name"]).lower(): str(f["name"])
            for f in fields
            if isinstance(f, dict) and f.get("name") and f.get("updateable")
        }
        wanted = {f.name: self.field_api_name(f).lower() for f in JOURNEY_FIELDS}
        return {name: updateable[api] for name, api in wanted.items() if api in updateable}

    def write_fields(self, person_id: str, scope: str, values: dict[str, Any]) -> None:
        self.http.request("PATCH", f"sobjects/{scope}/{person_id}", json_body=values)

    def create_field(self, field: JourneyField, scope: str) -> bool:
        metadata = {
            "label": f"VE {field.label}",
            "description": field.description,
            "inlineHelpText": field.description,
            **FIELD_METADATA[field.kind],
        }
        payload = {"FullName": f"{scope}.{self.field_api_name(field)}", "Metadata": metadata}
        try:
            self.http.request("POST", "tooling/sobjects/CustomField", json_body=payload)
        except Rejected as exc:
            if isinstance(exc, AuthFailed) or "DUPLICATE" not in exc.message.upper():
                raise
            return False  # it exists, hidden from this user by field-level security
        return True

    def check(self) -> str:
        body = self.http.request("GET", "limits").json()
        daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
        left = daily.get("Remaining") if isinstance(daily, dict) else None
        calls = f"{left if left is not None else '?'} API calls left today"
        return f"{self.label} answered ({calls}); {self.fields_status()}"


INTEGRATION = Integration(name="salesforce", label="Salesforce", sink=SalesforceSink)
