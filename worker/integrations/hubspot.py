"""HubSpot: find the contact by email (or create it), set the journey properties on it, and
add one note associated with it. The note is HTML within HubSpot's 65,536 characters; the
contact properties (``HUBSPOT_PROPERTIES``: the shared journey fields of
``worker/journey_fields.py`` as ``ve_*`` properties) live in their own property group.

``visitor-enrich hubspot-setup`` creates the custom properties once (``ensure_properties``).

**The webhook** (``POST /v1/webhooks/hubspot``): a public or private app's ``contact.creation``
subscription (``object.creation`` of object type ``0-1`` on the new developer platform) posts
a JSON array of events (how many at most is not documented) ``{eventId, subscriptionId,
portalId, appId, occurredAt, subscriptionType, attemptNumber, objectId, changeSource,
changeFlag}``, signed with
``X-HubSpot-Signature-v3`` = base64(HMAC-SHA256(app client secret, method + URI + body +
``X-HubSpot-Request-Timestamp``)), refused when the timestamp (milliseconds) is more than five
minutes old. The URI is the full URL HubSpot called (``https://host/path?query``), which a
proxy in front of this service hides: every URL the request could have been sent to
(``X-Forwarded-Proto``/``X-Forwarded-Host``, ``Host``, https and http, raw and URL-decoded,
as HubSpot's docs say it decodes some characters) is tried, each in constant time.

Each contact becomes one ``signup`` event ``hubspot:<eventId>`` (HubSpot's retries carry the
same eventId: duplicates) with ``external={"contact_id": objectId}`` and ``lookup="hubspot"``:
the events carry no email, so the worker reads the contact's ``email``, name and the
``HUBSPOT_VISITOR_PROPERTY`` property (``HubSpotSink.complete_event``) before fetching the
journey, and the note goes on THAT contact (no search by email, no second contact).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from config import Settings
from worker.errors import AuthFailed, BadResponse, Rejected
from worker.events import MAX_ID_LENGTH, Event
from worker.formats import escape_html
from worker.http import ServiceClient, bearer_headers
from worker.inbound import (
    Ignored,
    WebhookAdapter,
    WebhookRequest,
    date_field,
    email_field,
    reject,
    require_fresh_timestamp,
    require_signature,
    signed_by_any,
    text_field,
)
from worker.integration import Integration
from worker.journey import JourneyContext
from worker.journey_fields import (
    JOURNEY_FIELDS,
    FieldKind,
    FieldValue,
    JourneyField,
    journey_field_values,
)
from worker.note import fit, title
from worker.ratelimit import SharedRateLimiter
from worker.sink import Completion, DeliveryResult, Note, Sink
from worker.templates import render_html
from worker.text import cut, iso_utc, joined, number

NOTE_MAX_CHARS = 65_536  # hs_note_body limit

HUBSPOT_PROPERTY_GROUP: dict[str, Any] = {
    "name": "visitor_enrich",
    "label": "Visitor journey (visitor-enrich)",
    "displayOrder": -1,
}


# Each journey field kind as a HubSpot property (type, fieldType).
_HUBSPOT_TYPES: dict[FieldKind, tuple[str, str]] = {
    "text": ("string", "text"),
    "number": ("number", "number"),
    "datetime": ("datetime", "date"),
    "boolean": ("enumeration", "booleancheckbox"),
}


def hubspot_property_name(field: JourneyField) -> str:
    return f"ve_{field.name}"


def _property(field: JourneyField) -> dict[str, Any]:
    kind, field_type = _HUBSPOT_TYPES[field.kind]
    definition: dict[str, Any] = {
        "name": hubspot_property_name(field),
        "label": field.label,
        "type": kind,
        "fieldType": field_type,
        "groupName": HUBSPOT_PROPERTY_GROUP["name"],
        "description": field.description,
    }
    if field.kind == "boolean":
        definition["options"] = [
            {"label": "Yes", "value": "true", "displayOrder": 0},
            {"label": "No", "value": "false", "displayOrder": 1},
        ]
    return definition


# The shared journey fields (worker/journey_fields.py) as HubSpot contact properties.
HUBSPOT_PROPERTIES: list[dict[str, Any]] = [_property(field) for field in JOURNEY_FIELDS]


def _hubspot_value(value: FieldValue) -> str:
    """A journey value as HubSpot takes every property value: a string."""
    if isinstance(value, bool):  # before numbers: a bool is an int
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, int | float):
        return number(value)
    return cut(value, NOTE_MAX_CHARS)


def hubspot_contact_properties(event: Event, ctx: JourneyContext) -> dict[str, str]:
    """Values for ``HUBSPOT_PROPERTIES`` as HubSpot takes them; unknown values are left out."""
    known = journey_field_values(ctx)
    return {
        hubspot_property_name(field): _hubspot_value(known[field.name])
        for field in JOURNEY_FIELDS
        if field.name in known
    }


def render_hubspot_note_html(event: Event, ctx: JourneyContext) -> str:
    """``hs_note_body`` of a HubSpot note, within HubSpot's 65,536 characters.

    Long page lists, metadata and values are cut first; the marker footer is never cut.
    """
    fallback = (
        f"<p><strong>{escape_html(cut(title(event, ctx), 500))}</strong></p>"
        "<p>The journey is too large for a note; see the contact's visitor journey "
        f"properties.</p><p><small>{escape_html(event.marker)}</small></p>"
    )
    return fit(lambda limits: render_html(event, ctx, limits), NOTE_MAX_CHARS, fallback)


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
        if not event.email and own_contact(event) is None:
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

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        properties = hubspot_contact_properties(event, context)
        contact_id = own_contact(event)
        if contact_id is None:
            contact_id = self.upsert_contact(event, properties)
        else:
            # The contact whose creation sent the event: annotate it, never one found by email.
            self.http.request(
                "PATCH",
                f"crm/v3/objects/contacts/{contact_id}",
                json_body={"properties": properties},
            )
        body = {
            "properties": {
                "hs_timestamp": (event.occurred_at or datetime.now(UTC)).isoformat(),
                "hs_note_body": note.body,
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
            self.http.request("POST", "crm/v3/objects/notes", json_body=body).json(), self.name
        )
        return DeliveryResult(external_id=note_id, detail=f"note on contact {contact_id}")

    def default_note(self, event: Event, context: JourneyContext) -> str:
        return render_hubspot_note_html(event, context)

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

    def complete_event(self, event: Event) -> Completion:
        """The email, name and visitor id of the contact a ``contact.creation`` named."""
        contact_id = own_contact(event)
        prop = self.settings.hubspot_visitor_property
        if contact_id is None:
            return Completion(event, "the HubSpot event names no contact to look up")
        wanted = ",".join(("email", "firstname", "lastname", prop))
        try:
            body = self.http.request(
                "GET", f"crm/v3/objects/contacts/{contact_id}", params={"properties": wanted}
            ).json()
        except AuthFailed as exc:
            raise exc.with_hint("check HUBSPOT_TOKEN (scope crm.objects.contacts.read)") from None
        except Rejected as exc:
            if exc.status_code != 404:
                raise
            return Completion(event, f"HubSpot has no contact {contact_id} (deleted or merged?)")
        found = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(found, dict):
            raise BadResponse("answered a contact without properties", service=self.name)
        completed = event.model_copy(
            update={
                "email": email_field(found.get("email")) or event.email,
                "name": joined(
                    text_field(found.get("firstname")), text_field(found.get("lastname"))
                )
                or event.name,
                "visitor_id": text_field(found.get(prop), MAX_ID_LENGTH),
            }
        )
        if not completed.visitor_id:
            return Completion(
                completed,
                f"no {prop} on HubSpot contact {contact_id}; have the sign-up form fill that "
                "contact property from the datafast_visitor_id cookie (a hidden field)",
            )
        return Completion(completed, None, f"contact {contact_id}")

    def check(self) -> str:
        self.http.request("GET", "crm/v3/properties/contacts/email")
        return f"{self.label} answered at {self.http.base_url}"


def own_contact(event: Event) -> str | None:
    """The contact id of an event that HubSpot's own webhook sent; None for any other."""
    return event.external.get("contact_id") if event.inbound == "hubspot" else None


# The webhook ------------------------------------------------------------------------------

EVENT_ID_PREFIX = "hubspot:"
SIGNATURE_TOLERANCE_SECONDS = 5 * 60
CONTACT_OBJECT_TYPE = "0-1"


def candidate_uris(request: WebhookRequest) -> list[str]:
    """Every full URL HubSpot may have signed this request under (see the module docstring)."""
    headers = request.headers
    hosts = [
        h.split(",")[0].strip()
        for h in (headers.get("x-forwarded-host"), headers.get("host"))
        if h and h.strip()
    ]
    forwarded = (headers.get("x-forwarded-proto") or "").split(",")[0].strip()
    schemes = [s for s in (forwarded, "https", "http") if s]
    paths = [request.url, urllib.parse.unquote(request.url)]
    uris: list[str] = []
    for scheme in schemes:
        for host in hosts:
            for path in paths:
                uri = f"{scheme}://{host}{path}"
                if uri not in uris:
                    uris.append(uri)
    return uris


def verify_hubspot_v3(
    request: WebhookRequest, secrets: Sequence[str], *, now: float | None = None
) -> None:
    """Return when ``X-HubSpot-Signature-v3`` matches; ``SignatureError`` otherwise.

    The timestamp is milliseconds in HubSpot's examples (its prose does not say): seconds are
    taken too (``require_fresh_timestamp``); the signature covers the text as sent."""
    given = request.headers.get("x-hubspot-signature-v3")
    timestamp = request.headers.get("x-hubspot-request-timestamp", "").strip()
    require_signature(bool(given), "no X-HubSpot-Signature-v3 header")
    require_signature(timestamp.isdigit(), "no X-HubSpot-Request-Timestamp header")
    assert given is not None
    require_fresh_timestamp(timestamp, SIGNATURE_TOLERANCE_SECONDS, now=now)
    method, tail = request.method.encode(), request.body + timestamp.encode()
    require_signature(
        any(
            signed_by_any(secrets, method + uri.encode() + tail, given, encoding="base64")
            for uri in candidate_uris(request)
        ),
        "no matching signature for this URL and secret",
    )


def _is_contact_creation(item: dict[str, Any]) -> bool:
    kind = item.get("subscriptionType")
    return kind == "contact.creation" or (
        kind == "object.creation" and str(item.get("objectTypeId")) == CONTACT_OBJECT_TYPE
    )


def parse_hubspot_webhook(payload: Any) -> list[Event]:
    """One ``signup`` event per contact created in a HubSpot webhook batch."""
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise reject("body", "a HubSpot webhook is a JSON array of events")
    events: list[Event] = []
    for index, item in enumerate(payload):
        if not isinstance(item, dict) or not _is_contact_creation(item):
            continue
        event_id = text_field(item.get("eventId"), MAX_ID_LENGTH - len(EVENT_ID_PREFIX))
        contact_id = text_field(item.get("objectId"), MAX_ID_LENGTH)
        if not event_id:
            raise reject(f"[{index}].eventId", "missing")
        if not contact_id:
            raise reject(f"[{index}].objectId", "missing; HubSpot sends the contact id there")
        portal = text_field(item.get("portalId"), MAX_ID_LENGTH)
        events.append(
            Event(
                id=f"{EVENT_ID_PREFIX}{event_id}",
                type="signup",
                occurred_at=date_field(item.get("occurredAt")),
                inbound="hubspot",
                lookup="hubspot",
                external={"contact_id": contact_id, **({"portal_id": portal} if portal else {})},
            )
        )
    if not events:
        raise Ignored("no contact.creation event in the batch")
    return events


class HubSpotWebhook(WebhookAdapter):
    """``POST /v1/webhooks/hubspot``: a HubSpot app's ``contact.creation`` batch, signed v3."""

    system = "hubspot"
    label = "HubSpot"
    secret_setting = "hubspot_app_secret"

    def verify(self, request: WebhookRequest) -> None:
        verify_hubspot_v3(request, self.secrets(self.settings))

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return parse_hubspot_webhook(payload)

    def check(self) -> str:
        if self.settings.hubspot_token is None:
            raise ValueError(
                "HUBSPOT_TOKEN is not set: the worker cannot read the created contacts"
            )
        return super().check()


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


INTEGRATION = Integration(name="hubspot", label="HubSpot", sink=HubSpotSink, webhook=HubSpotWebhook)
