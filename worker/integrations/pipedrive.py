"""Pipedrive: the person found by exact email (created when absent), their journey fields, one
HTML note per event.

Set-up (README "Pipedrive"): Personal preferences → API → copy your personal API token into
``PIPEDRIVE_API_TOKEN``, and set ``PIPEDRIVE_BASE_URL`` to your company domain
(``https://acme.pipedrive.com``). ``visitor-enrich pipedrive-setup`` creates the journey
fields once (the token's user must be allowed to add custom fields: an admin).

- Person: ``GET /api/v1/persons/search?term=…&fields=email&exact_match=true``, else
  ``POST /api/v1/persons`` with the email (and name).
- Journey fields: person custom fields named ``VE First touch`` ... Pipedrive keys a custom
  field by a 40-character hash that differs per company, so the sink reads
  ``GET /api/v1/personFields`` once per process (500 a page), maps our field names to those
  keys by name, and sends ``PUT /api/v1/persons/{id}`` ``{<key>: value}`` for the fields that
  exist. Types: ``varchar`` (text, at most 255 characters; the score-estimated flag as
  ``yes``/``no``), ``double`` (numbers), ``date`` (first/last visit: the UTC day, as
  ``YYYY-MM-DD``). What Pipedrive does with an unknown key is not documented: none is sent.
- Set-up: ``POST /api/v1/personFields`` ``{"name", "field_type"}`` for each missing name.
- Note: ``POST /api/v1/notes`` ``{"content": <HTML>, "person_id": …}``.
- Exactly once: ``GET /api/v1/notes?person_id=…`` (newest first, 100 a page) and the event's
  marker in ``content``; Pipedrive has no note search.
- Auth: the ``x-api-token`` header (never in the URL, so it is never logged). Limits: the
  search API allows 10 requests per 2 seconds (``PIPEDRIVE_RATE_LIMIT``); 429s carry
  ``x-ratelimit-*`` headers, which the shared client obeys.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from config import Settings
from worker.crm import CrmSink
from worker.errors import BadResponse, Rejected
from worker.events import Event
from worker.http import ServiceClient, UpstreamResponse, secret_text
from worker.integration import Integration
from worker.journey_fields import JOURNEY_FIELDS, FieldKind, FieldValue, JourneyField
from worker.ratelimit import SharedRateLimiter
from worker.sink import Note, marker_in_pages
from worker.text import iso_utc

NOTES_PAGE = 100
NOTES_PAGES = 5
FIELDS_PAGE = 500
FIELDS_PAGES = 10
VARCHAR_MAX = 255
# Each journey field kind as a Pipedrive field type (Pipedrive has no yes/no type).
FIELD_TYPES: dict[FieldKind, str] = {
    "text": "varchar",
    "number": "double",
    "datetime": "date",
    "boolean": "varchar",
}


def pipedrive_field_name(field: JourneyField) -> str:
    """``VE First touch``: the name of a journey field's person field (Pipedrive keys fields by
    hash; the name is what the sink finds them by)."""
    return f"VE {field.label}"


def _data(response: UpstreamResponse) -> Any:
    """``data`` of Pipedrive's ``{"success": true, "data": …}`` envelope."""
    body = response.json()
    if not isinstance(body, dict) or body.get("success") is not True:
        error = body.get("error") if isinstance(body, dict) else None
        raise Rejected(
            f"{response.status_code} success: false: {error or 'no reason given'}",
            service=response.service,
            status_code=response.status_code,
        )
    return body.get("data"), body.get("additional_data")


class PipedriveSink(CrmSink):
    name = "pipedrive"
    label = "Pipedrive"
    note_format = "html"
    field_text_max = VARCHAR_MAX
    setup_command = "pipedrive-setup"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.pipedrive_api_token is not None and settings.pipedrive_base_url is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "pipedrive",
            f"{str(settings.pipedrive_base_url or '').rstrip('/')}/api/v1",
            settings=settings,
            limiter=limiter,
            rate=settings.pipedrive_rate_limit,
            headers={"x-api-token": secret_text(settings.pipedrive_api_token)},
        )

    def find_person(self, email: str) -> str | None:
        data, _ = _data(
            self.http.request(
                "GET",
                "persons/search",
                params={"term": email, "fields": "email", "exact_match": "true", "limit": "1"},
            )
        )
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            return None
        item = items[0].get("item") if isinstance(items[0], dict) else None
        return str(item["id"]) if isinstance(item, dict) and item.get("id") else None

    def create_person(self, event: Event) -> str:
        payload = {
            "name": event.name or event.email,
            "email": [{"value": event.email, "primary": True, "label": "work"}],
        }
        data, _ = _data(self.http.request("POST", "persons", json_body=payload))
        if not isinstance(data, dict) or not data.get("id"):
            raise BadResponse("answered without the person's id", service=self.name)
        return str(data["id"])

    def add_note(self, person_id: str, event: Event, note: Note) -> str | None:
        payload = {"content": note.body, "person_id": int(person_id)}
        data, _ = _data(self.http.request("POST", "notes", json_body=payload))
        return str(data["id"]) if isinstance(data, dict) and data.get("id") else None

    def _pages(
        self, path: str, params: dict[str, str], page_size: int, max_pages: int
    ) -> Iterator[list[Any]]:
        """A list endpoint's items, a page at a time, while Pipedrive says it has more
        (``additional_data.pagination``), at most ``max_pages``."""
        start = 0
        for _ in range(max_pages):
            query = {**params, "start": str(start), "limit": str(page_size)}
            data, extra = _data(self.http.request("GET", path, params=query))
            yield data if isinstance(data, list) else []
            pagination = extra.get("pagination") if isinstance(extra, dict) else None
            if not isinstance(pagination, dict) or not pagination.get("more_items_in_collection"):
                return
            start = int(pagination.get("next_start") or start + page_size)

    def _note_pages(self, person_id: str) -> Iterator[list[Any]]:
        """The person's notes, newest first, a page at a time."""
        params = {"person_id": person_id, "sort": "add_time DESC"}
        return self._pages("notes", params, NOTES_PAGE, NOTES_PAGES)

    def has_note(self, person_id: str, event: Event) -> bool:
        return marker_in_pages(
            self._note_pages(person_id), event.marker, ("content",), max_pages=NOTES_PAGES
        )

    # Journey fields ---------------------------------------------------------------------

    def field_api_name(self, field: JourneyField) -> str:
        return pipedrive_field_name(field)

    def read_field_keys(self, scope: str) -> dict[str, str]:
        keys: dict[str, str] = {}
        for page in self._pages("personFields", {}, FIELDS_PAGE, FIELDS_PAGES):
            for found in page:
                if isinstance(found, dict) and found.get("key") and found.get("name"):
                    # Names are matched as a person reads them: case and spaces aside.
                    keys.setdefault(" ".join(str(found["name"]).split()).lower(), str(found["key"]))
        wanted = {f.name: self.field_api_name(f).lower() for f in JOURNEY_FIELDS}
        return {name: keys[label] for name, label in wanted.items() if label in keys}

    def field_value(self, field: JourneyField, value: FieldValue) -> Any:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, datetime):
            return iso_utc(value)[:10]  # a date field takes the day, YYYY-MM-DD
        return super().field_value(field, value)

    def write_fields(self, person_id: str, scope: str, values: dict[str, Any]) -> None:
        _data(self.http.request("PUT", f"persons/{person_id}", json_body=values))

    def create_field(self, field: JourneyField, scope: str) -> bool:
        definition = {"name": self.field_api_name(field), "field_type": FIELD_TYPES[field.kind]}
        _data(self.http.request("POST", "personFields", json_body=definition))
        return True

    def check(self) -> str:
        data, _ = _data(self.http.request("GET", "users/me"))
        company = data.get("company_domain") if isinstance(data, dict) else None
        return f"{self.label} answered (company {company or 'unknown'}); {self.fields_status()}"


INTEGRATION = Integration(name="pipedrive", label="Pipedrive", sink=PipedriveSink)
