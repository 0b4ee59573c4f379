"""Attio: the person asserted by email with their journey attributes, and one Markdown note on
them per event.

Set-up (README "Attio"): Workspace settings → Developers → New access token, with the scopes
``record_permission:read-write``, ``object_configuration:read`` and ``note:read-write``; put it
in ``ATTIO_API_KEY``. ``visitor-enrich attio-setup`` creates the journey attributes once (it
needs ``object_configuration:read-write``).

- Person: ``PUT /v2/objects/people/records?matching_attribute=email_addresses`` asserts the
  person (creates them, or finds the one with that email: ``email_addresses`` is the people
  object's unique attribute), so there is no search-then-create race.
- Journey attributes: custom attributes of the people object with the api slugs ``ve_*``
  (``ve_first_touch`` ...; text, number, timestamp, checkbox), written in that same assert
  call. Attio refuses a slug it does not have (400 ``value_not_found``, "Cannot find attribute
  with slug/ID", seen in third-party code only), so the sink lists the people attributes
  (``GET /v2/objects/people/attributes``) once per process and writes only the ``ve_*`` ones
  that exist, are writable and not archived. A value Attio still refuses (an attribute
  removed since) asserts the person again without the attributes: the note goes on.
- Set-up: ``POST /v2/objects/people/attributes`` ``{"data": {title, description, api_slug,
  type, is_required, is_unique, is_multiselect, config}}`` for each missing slug (all eight
  are required by Attio's OpenAPI). The error for a slug that is taken (e.g. by an archived
  attribute) is not documented: a 400 or 409 that names the slug is taken as "exists".
- Note: ``POST /v2/notes`` with ``format: markdown`` on the person.
- Exactly once: ``GET /v2/notes?parent_object=people&parent_record_id=…`` (50 a page) and the
  event's marker in ``content_plaintext``; Attio has no note search.
- Limits: 25 writes a second (``ATTIO_RATE_LIMIT``); a 429 carries ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from config import Settings
from worker.crm import CrmSink, split_name
from worker.errors import AuthFailed, BadResponse, Rejected, UpstreamError
from worker.events import Event
from worker.http import ServiceClient, bearer_headers
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.journey_fields import JOURNEY_FIELDS, FieldKind, JourneyField
from worker.note import who
from worker.ratelimit import SharedRateLimiter
from worker.sink import Note, marker_in_pages
from worker.text import cut

NOTES_PAGE = 50
# How many pages of a person's notes are searched for the marker (newest notes are few).
NOTES_PAGES = 10
TITLE_MAX = 200
# Attio documents no length limit for a text attribute; URLs and labels stay well below this.
TEXT_MAX = 2000
PEOPLE_ATTRIBUTES = "objects/people/attributes"
# Each journey field kind as an Attio attribute type.
ATTRIBUTE_TYPES: dict[FieldKind, str] = {
    "text": "text",
    "number": "number",
    "datetime": "timestamp",
    "boolean": "checkbox",
}


def attio_slug(field: JourneyField) -> str:
    """``ve_first_touch``: the api slug of a journey field's attribute."""
    return f"ve_{field.name}"


def _record_id(body: Any, service: str) -> str:
    data = body.get("data") if isinstance(body, dict) else None
    record = data.get("id") if isinstance(data, dict) else None
    if isinstance(record, dict) and record.get("record_id"):
        return str(record["record_id"])
    raise BadResponse("answered without the record's id", service=service)


class AttioSink(CrmSink):
    name = "attio"
    label = "Attio"
    note_format = "markdown"
    field_text_max = TEXT_MAX
    setup_command = "attio-setup"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.attio_api_key is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "attio",
            f"{str(settings.attio_base_url).rstrip('/')}/v2",
            settings=settings,
            limiter=limiter,
            rate=settings.attio_rate_limit,
            headers=bearer_headers(settings.attio_api_key),
        )

    def find_person(self, email: str) -> str | None:
        body = self.http.request(
            "POST",
            "objects/people/records/query",
            json_body={"filter": {"email_addresses": email}, "limit": 1},
        ).json()
        records = body.get("data") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return None
        return _record_id({"data": records[0]}, self.name)

    def assert_person(self, event: Event, attributes: dict[str, Any]) -> str:
        """Find or create the person by email in one call, with these attribute values."""
        first, last = split_name(event)
        values: dict[str, Any] = {"email_addresses": [event.email], **attributes}
        if event.name:
            values["name"] = [
                {"first_name": first or "", "last_name": last, "full_name": event.name}
            ]
        body = self.http.request(
            "PUT",
            "objects/people/records",
            params={"matching_attribute": "email_addresses"},
            json_body={"data": {"values": values}},
        ).json()
        return _record_id(body, self.name)

    def create_person(self, event: Event) -> str:
        return self.assert_person(event, {})

    def person_for(self, event: Event) -> str:
        # The assert call finds or creates in one step.
        return self.create_person(event)

    def save_person(self, event: Event, context: JourneyContext) -> tuple[str, str]:
        # The journey attributes go in the assert call itself: no second call.
        update = self.field_update(None, event, context)
        if not update.values:
            return self.assert_person(event, {}), update.written()
        try:
            return self.assert_person(event, update.values), update.written()
        except UpstreamError as exc:
            if exc.retryable or isinstance(exc, AuthFailed):
                raise
            # A value refused (an attribute archived since the list was read): the person
            # without the attributes, so the note still goes on.
            skipped = self._fields_failed(exc, event).written()
            return self.assert_person(event, {}), skipped

    # Journey attributes -------------------------------------------------------------------

    def field_api_name(self, field: JourneyField) -> str:
        return attio_slug(field)

    def read_field_keys(self, scope: str) -> dict[str, str]:
        body = self.http.request("GET", PEOPLE_ATTRIBUTES).json()
        attributes = body.get("data") if isinstance(body, dict) else None
        if not isinstance(attributes, list):
            raise BadResponse("attributes answer without a data list", service=self.name)
        usable = {
            str(a.get("api_slug"))
            for a in attributes
            if isinstance(a, dict) and not a.get("is_archived") and a.get("is_writable", True)
        }
        slugs = {f.name: self.field_api_name(f) for f in JOURNEY_FIELDS}
        return {name: slug for name, slug in slugs.items() if slug in usable}

    def create_field(self, field: JourneyField, scope: str) -> bool:
        slug = self.field_api_name(field)
        attribute = {
            "title": f"VE {field.label}",
            "description": field.description,
            "api_slug": slug,
            "type": ATTRIBUTE_TYPES[field.kind],
            "is_required": False,
            "is_unique": False,
            "is_multiselect": False,
            "config": {},
        }
        try:
            self.http.request("POST", PEOPLE_ATTRIBUTES, json_body={"data": attribute})
        except Rejected as exc:
            taken = exc.status_code in (400, 409) and slug in exc.message
            if isinstance(exc, AuthFailed) or not taken:
                raise
            return False
        return True

    def add_note(self, person_id: str, event: Event, note: Note) -> str | None:
        payload = {
            "data": {
                "parent_object": "people",
                "parent_record_id": person_id,
                "title": cut(f"Visitor journey ({event.type}): {who(event) or ''}", TITLE_MAX),
                "format": "markdown",
                "content": note.body,
            }
        }
        body = self.http.request("POST", "notes", json_body=payload).json()
        data = body.get("data") if isinstance(body, dict) else None
        ident = data.get("id") if isinstance(data, dict) else None
        return str(ident["note_id"]) if isinstance(ident, dict) and ident.get("note_id") else None

    def _note_pages(self, person_id: str) -> Iterator[list[Any]]:
        """The person's notes, a page at a time, until a short page."""
        for page in range(NOTES_PAGES):
            body = self.http.request(
                "GET",
                "notes",
                params={
                    "parent_object": "people",
                    "parent_record_id": person_id,
                    "limit": str(NOTES_PAGE),
                    "offset": str(page * NOTES_PAGE),
                },
            ).json()
            notes = body.get("data") if isinstance(body, dict) else None
            if not isinstance(notes, list):
                raise BadResponse("notes answer without a data list", service=self.name)
            yield notes
            if len(notes) < NOTES_PAGE:
                return

    def has_note(self, person_id: str, event: Event) -> bool:
        return marker_in_pages(
            self._note_pages(person_id),
            event.marker,
            ("content_plaintext", "content_markdown", "title"),
            max_pages=NOTES_PAGES,
        )

    def check(self) -> str:
        # The token's own details: a read that proves it.
        body = self.http.request("GET", "self").json()
        workspace = body.get("workspace_name") if isinstance(body, dict) else None
        return f"{self.label} answered (workspace {workspace or 'unknown'}); {self.fields_status()}"


INTEGRATION = Integration(name="attio", label="Attio", sink=AttioSink)
