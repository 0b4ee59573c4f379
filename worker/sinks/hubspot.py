"""HubSpot: find the contact by email (or create it), set the journey properties on it, and
add one note associated with it.

``visitor-enrich hubspot-setup`` creates the custom properties once (``ensure_properties``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from config import Settings
from worker.errors import BadResponse, Rejected
from worker.events import Event
from worker.http import ServiceClient, bearer_headers
from worker.journey import JourneyContext
from worker.ratelimit import SharedRateLimiter
from worker.render import (
    HUBSPOT_PROPERTIES,
    HUBSPOT_PROPERTY_GROUP,
    hubspot_contact_properties,
    render_hubspot_note_html,
)
from worker.sinks.base import DeliveryResult, Sink

NOTE_TO_CONTACT = 202  # HUBSPOT_DEFINED association type: note -> contact
# A custom note property holding the event id, so a redelivered task can find its note.
NOTE_EVENT_PROPERTY = "ve_event_id"
NOTE_EVENT_PROPERTY_DEFINITION: dict[str, Any] = {
    "name": NOTE_EVENT_PROPERTY,
    "label": "visitor-enrich event id",
    "type": "string",
    "fieldType": "text",
    "groupName": HUBSPOT_PROPERTY_GROUP["name"],
    "description": "The inbound event this note was written for (used to post it only once).",
}


class HubSpotSink(Sink):
    name = "hubspot"
    label = "HubSpot"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.hubspot_token is not None

    def build_client(self, settings: Settings, limiter: SharedRateLimiter) -> ServiceClient:
        return ServiceClient(
            "hubspot",
            str(settings.hubspot_base_url),
            settings=settings,
            limiter=limiter,
            rate=settings.hubspot_rate_limit,
            headers=bearer_headers(settings.hubspot_token),
        )

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.email:
            return "no email on the event to find the contact by"
        return super().skip_reason(event, context)

    # Contacts ----------------------------------------------------------------------------

    def find_contact(self, email: str) -> str | None:
        body = {
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}
            ],
            "properties": ["email"],
            "limit": 1,
        }
        results = _results(
            self.http.request("POST", "crm/v3/objects/contacts/search", json_body=body).json()
        )
        return str(results[0]["id"]) if results else None

    def upsert_contact(self, event: Event, properties: dict[str, str]) -> str:
        assert event.email is not None
        contact_id = self.find_contact(event.email)
        if contact_id is not None:
            self.http.request(
                "PATCH",
                f"crm/v3/objects/contacts/{contact_id}",
                json_body={"properties": properties},
            )
            return contact_id
        create = {"email": event.email, **_names(event.name), **properties}
        try:
            body = self.http.request(
                "POST", "crm/v3/objects/contacts", json_body={"properties": create}
            ).json()
        except Rejected as exc:
            # 409: another worker (or a person) created it since the search.
            if exc.status_code != 409:
                raise
            contact_id = self.find_contact(event.email)
            if contact_id is None:
                raise
            return contact_id
        return _id(body, self.name)

    # Delivery ----------------------------------------------------------------------------

    def deliver(self, event: Event, context: JourneyContext) -> DeliveryResult:
        contact_id = self.upsert_contact(event, hubspot_contact_properties(event, context))
        note = {
            "properties": {
                "hs_timestamp": (event.occurred_at or datetime.now(UTC)).isoformat(),
                "hs_note_body": render_hubspot_note_html(event, context),
                NOTE_EVENT_PROPERTY: event.id,
            },
            "associations": [
                {
                    "to": {"id": contact_id},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": NOTE_TO_CONTACT,
                        }
                    ],
                }
            ],
        }
        note_id = _id(
            self.http.request("POST", "crm/v3/objects/notes", json_body=note).json(), self.name
        )
        return DeliveryResult(external_id=note_id, detail=f"note on contact {contact_id}")

    def already_delivered(self, event: Event) -> bool | None:
        # An exact match on the note's own property: full-text search (CONTAINS_TOKEN on the
        # body) splits the marker at punctuation and could miss it.
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": NOTE_EVENT_PROPERTY, "operator": "EQ", "value": event.id}
                    ]
                }
            ],
            "properties": [NOTE_EVENT_PROPERTY],
            "limit": 1,
        }
        found = self.http.request("POST", "crm/v3/objects/notes/search", json_body=body).json()
        return bool(_results(found))

    # Set-up ------------------------------------------------------------------------------

    def ensure_properties(self) -> list[str]:
        """Create the property groups and each custom property that does not exist yet."""
        wanted = [
            ("contacts", HUBSPOT_PROPERTIES),
            ("notes", [NOTE_EVENT_PROPERTY_DEFINITION]),
        ]
        created = []
        for object_type, definitions in wanted:
            group = HUBSPOT_PROPERTY_GROUP
            if self._create_once(f"crm/v3/properties/{object_type}/groups", group):
                created.append(f"{object_type} group {group['name']}")
            for definition in definitions:
                if self._create_once(f"crm/v3/properties/{object_type}", definition):
                    created.append(f"{object_type}.{definition['name']}")
        return created

    def _create_once(self, path: str, definition: dict[str, Any]) -> bool:
        """POST a definition; False when it exists already (409)."""
        try:
            self.http.request("POST", path, json_body=definition)
        except Rejected as exc:
            if exc.status_code != 409:
                raise
            return False
        return True

    def check(self) -> str:
        self.http.request("GET", "crm/v3/properties/contacts/email")
        return f"{self.label} answered at {self.http.base_url}"


def _results(body: Any) -> list[dict[str, Any]]:
    results = body.get("results") if isinstance(body, dict) else None
    return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []


def _id(body: Any, service: str) -> str:
    if isinstance(body, dict) and body.get("id") is not None:
        return str(body["id"])
    raise BadResponse("answered without the id of what it created", service=service)


def _names(full_name: str | None) -> dict[str, str]:
    if not full_name:
        return {}
    first, _, last = full_name.strip().partition(" ")
    return {"firstname": first, **({"lastname": last.strip()} if last.strip() else {})}
