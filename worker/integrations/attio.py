"""Attio: the person asserted by email, and one Markdown note on them per event.

Set-up (README "Attio"): Workspace settings → Developers → New access token, with the scopes
``record_permission:read-write``, ``object_configuration:read`` and ``note:read-write``; put it
in ``ATTIO_API_KEY``.

- Person: ``PUT /v2/objects/people/records?matching_attribute=email_addresses`` asserts the
  person (creates them, or finds the one with that email: ``email_addresses`` is the people
  object's unique attribute), so there is no search-then-create race.
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
from worker.errors import BadResponse
from worker.events import Event
from worker.http import ServiceClient, bearer_headers
from worker.integration import Integration
from worker.note import who
from worker.ratelimit import SharedRateLimiter
from worker.sink import Note, marker_in_pages
from worker.text import cut

NOTES_PAGE = 50
# How many pages of a person's notes are searched for the marker (newest notes are few).
NOTES_PAGES = 10
TITLE_MAX = 200


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

    def create_person(self, event: Event) -> str:
        first, last = split_name(event)
        values: dict[str, Any] = {"email_addresses": [event.email]}
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

    def person_for(self, event: Event) -> str:
        # The assert call finds or creates in one step.
        return self.create_person(event)

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
        return f"{self.label} answered (workspace {workspace or 'unknown'})"


INTEGRATION = Integration(name="attio", label="Attio", sink=AttioSink)
