"""What every CRM sink does the same way: find the person by email (create them when absent),
set the journey fields the CRM has, then add one note on them per event, exactly once.

A CRM integration (Attio, Pipedrive, Salesforce) says how to find, create and annotate a
person in its API; ``CrmSink`` does the rest once: ``deliver`` finds or creates the person,
sets their journey fields and posts the note, ``already_delivered`` finds the person again and
looks through their notes for the event's marker, so a task run again after a crash never
posts a second note.

Journey fields (``worker/journey_fields.py``): an integration says how its API names the
fields that exist (``read_field_keys``: our field name → its key), how it writes them (one
``write_fields`` call, or inside the call that saves the person: Attio's assert) and how it
creates them (``create_field``, for ``visitor-enrich <crm>-setup``). Which fields exist is
read once per process and again after ``FIELD_KEYS_SECONDS``, so a field nobody created is
never sent (a CRM refuses unknown keys). The fields are set before the note, and a refused
field update (a 4xx) does not stop the note: the delivery's detail says why the fields were
not set. A retryable failure (429, 5xx) retries the whole delivery, and as no note was
posted yet, no note is posted twice because of the fields.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from config import Settings
from worker.errors import Rejected, UpstreamError
from worker.events import Event
from worker.journey import JourneyContext
from worker.journey_fields import JOURNEY_FIELDS, FieldValue, JourneyField, journey_field_values
from worker.ratelimit import SharedRateLimiter
from worker.sink import DeliveryResult, Note, Sink
from worker.text import cut, iso_utc

__all__ = ["FIELD_KEYS_SECONDS", "CrmSink", "FieldSetup", "FieldUpdate", "split_name"]

log = logging.getLogger(__name__)

# How long the list of a CRM's journey fields is trusted before it is read again (a field
# created meanwhile with ``<crm>-setup`` is used without a restart).
FIELD_KEYS_SECONDS = 600.0


def split_name(event: Event) -> tuple[str | None, str]:
    """(first, last) for a CRM that needs a last name: the event's name, else the email's
    local part as the last name."""
    full = (event.name or "").strip()
    if full:
        first, _, last = full.partition(" ")
        return (first, last.strip()) if last.strip() else (None, first)
    local = (event.email or "unknown").partition("@")[0]
    return None, local or "unknown"


@dataclass(frozen=True)
class FieldUpdate:
    """The journey fields to write on one person: the CRM's keys and values, or why none."""

    values: dict[str, Any] = field(default_factory=dict)
    # Where the person's fields are defined (``CrmSink.field_scope``).
    scope: str = ""
    # Why nothing is written (fields off, none exist, the list could not be read).
    skipped: str | None = None

    def written(self) -> str:
        """The delivery's detail once ``values`` were written."""
        return self.skipped or f"{len(self.values)} journey fields set"


@dataclass(frozen=True)
class FieldSetup:
    """What ``ensure_fields`` did: the fields it created, and those that exist already but
    that this token cannot see or write (Salesforce field-level security, an archived
    attribute)."""

    created: list[str] = field(default_factory=list)
    unwritable: list[str] = field(default_factory=list)


class CrmSink(Sink):
    """A CRM: the journey fields and one note per event on the person with the event's email."""

    # What the CRM calls a person ("person", "contact"), for the status.
    person_label: ClassVar[str] = "person"
    # The longest text a journey field takes; a longer value is cut.
    field_text_max: ClassVar[int] = 255
    # The command that creates the journey fields, named in messages.
    setup_command: ClassVar[str] = ""
    # What the admin still has to do once the command created fields.
    after_setup: ClassVar[str] = ""

    def __init__(self, settings: Settings, limiter: SharedRateLimiter) -> None:
        super().__init__(settings, limiter)
        # scope -> (read at, our field name -> the CRM's key); one sink per worker process.
        self._field_keys: dict[str, tuple[float, dict[str, str]]] = {}

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.email:
            return f"no email on the event to find the {self.person_label} by"
        return super().skip_reason(event, context)

    # The person and the note: what each CRM says ----------------------------------------

    @abstractmethod
    def find_person(self, email: str) -> str | None:
        """The id of the person with this email, or None."""

    @abstractmethod
    def create_person(self, event: Event) -> str:
        """Create the person for the event's email (and name); their id."""

    @abstractmethod
    def add_note(self, person_id: str, event: Event, note: Note) -> str | None:
        """Post the note on the person; the note's id."""

    @abstractmethod
    def has_note(self, person_id: str, event: Event) -> bool:
        """Whether one of the person's notes carries ``event.marker``."""

    # Journey fields: what each CRM says -------------------------------------------------

    def field_scopes(self) -> tuple[str, ...]:
        """Where the journey fields are defined: one place (the people object) for most CRMs;
        Salesforce has a Contact's and a Lead's."""
        return ("",)

    def field_scope(self, person_id: str | None) -> str | None:
        """The scope of this person's fields; None when the person is of no known kind."""
        return self.field_scopes()[0]

    def field_api_name(self, field: JourneyField) -> str:
        """The field's name in the CRM, as the admin sees it (messages, README)."""
        return field.name

    def read_field_keys(self, scope: str) -> dict[str, str]:
        """Our field name → the CRM's key, for the journey fields that exist in ``scope``
        and can be written: the CRM's field list, read now."""
        return {}

    def field_value(self, field: JourneyField, value: FieldValue) -> Any:
        """A journey value as the CRM's field of that kind takes it: a time as ISO 8601 UTC,
        text cut to ``field_text_max``, numbers and yes/no as they are."""
        if isinstance(value, datetime):
            return iso_utc(value)
        if isinstance(value, str):
            return cut(value, self.field_text_max)
        return value

    def write_fields(self, person_id: str, scope: str, values: dict[str, Any]) -> None:
        """Write ``values`` (the CRM's keys) on the person in one call."""
        raise NotImplementedError(f"{self.label} writes no journey fields")

    def create_field(self, field: JourneyField, scope: str) -> bool:
        """Create the field in ``scope``; False when the CRM says it exists already."""
        raise NotImplementedError(f"{self.label} cannot create journey fields")

    # Journey fields: shared -------------------------------------------------------------

    def field_keys(self, scope: str, *, fresh: bool = False) -> dict[str, str]:
        """``read_field_keys``, read once per process and again after FIELD_KEYS_SECONDS."""
        cached = self._field_keys.get(scope)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[0] < FIELD_KEYS_SECONDS:
            return cached[1]
        keys = self.read_field_keys(scope)
        self._field_keys[scope] = (now, keys)
        return keys

    def forget_field_keys(self) -> None:
        """Read the field list again next time (a write was refused: a field may be gone)."""
        self._field_keys.clear()

    def field_update(
        self, person_id: str | None, event: Event, context: JourneyContext
    ) -> FieldUpdate:
        """The journey values for the fields that exist where this person lives.

        A refused field list (no permission to read it) skips the fields, so the note is
        still posted; a retryable failure is raised (nothing was posted yet)."""
        if not self.settings.crm_journey_fields:
            return FieldUpdate(skipped="journey fields off (CRM_JOURNEY_FIELDS)")
        try:
            scope = self.field_scope(person_id)
            if scope is None:
                unknown = f"journey fields not set: {person_id} is of no known kind"
                return FieldUpdate(skipped=unknown)
            keys = self.field_keys(scope)
        except UpstreamError as exc:
            if exc.retryable:
                raise
            return self._fields_failed(exc, event)
        if not keys:
            return FieldUpdate(
                skipped=f"no journey fields in {self.label} (visitor-enrich {self.setup_command})"
            )
        known = journey_field_values(context)
        values = {
            keys[f.name]: self.field_value(f, known[f.name])
            for f in JOURNEY_FIELDS
            if f.name in keys and f.name in known
        }
        return FieldUpdate(values, scope, None if values else "no journey values known")

    def _fields_failed(self, exc: UpstreamError, event: Event) -> FieldUpdate:
        """The fields were refused (4xx): no retry can change that, and the note goes on."""
        self.forget_field_keys()
        log.warning(
            "journey fields not set",
            extra={"event_id": event.id, "sink": self.name, "error": str(exc)},
        )
        return FieldUpdate(skipped=f"journey fields not set: {exc}")

    def set_fields(self, person_id: str, event: Event, context: JourneyContext) -> str:
        """Set the journey fields on the person in one update call; the delivery's detail."""
        update = self.field_update(person_id, event, context)
        if not update.values:
            return update.written()
        try:
            self.write_fields(person_id, update.scope, update.values)
        except UpstreamError as exc:
            if exc.retryable:
                raise
            return self._fields_failed(exc, event).written()
        return update.written()

    def save_person(self, event: Event, context: JourneyContext) -> tuple[str, str]:
        """The person's id (found or created) with their journey fields set, and what
        happened to the fields. A CRM that sets fields while saving the person overrides it."""
        person = self.person_for(event)
        return person, self.set_fields(person, event, context)

    def ensure_fields(self) -> FieldSetup:
        """Create each journey field that does not exist yet (``visitor-enrich
        <crm>-setup``): run again, it creates nothing."""
        setup = FieldSetup()
        for scope in self.field_scopes():
            existing = self.field_keys(scope, fresh=True)
            where = f"{scope}." if scope else ""
            for journey_field in JOURNEY_FIELDS:
                if journey_field.name in existing:
                    continue
                name = where + self.field_api_name(journey_field)
                if self.create_field(journey_field, scope):
                    setup.created.append(name)
                else:
                    setup.unwritable.append(name)
        self.forget_field_keys()
        return setup

    def fields_status(self) -> str:
        """How many journey fields exist, for ``visitor-enrich check``; never raises for a
        refused list (the notes work without the fields)."""
        if not self.settings.crm_journey_fields:
            return "journey fields off"
        parts = []
        total = len(JOURNEY_FIELDS)
        for scope in self.field_scopes():
            where = f" on {scope}" if scope else ""
            try:
                keys = self.field_keys(scope, fresh=True)
            except Rejected as exc:
                parts.append(f"journey fields{where} unknown: {exc}")
                continue
            missing = [self.field_api_name(f) for f in JOURNEY_FIELDS if f.name not in keys]
            if not missing:
                parts.append(f"all {total} journey fields exist{where}")
                continue
            shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
            parts.append(
                f"{total - len(missing)} of {total} journey fields exist{where}, "
                f"{len(missing)} missing ({shown}; visitor-enrich {self.setup_command})"
            )
        return "; ".join(parts)

    # Delivery ---------------------------------------------------------------------------

    def person_for(self, event: Event) -> str:
        """The person's id, created when absent; a create that lost a race finds theirs."""
        assert event.email is not None
        found = self.find_person(event.email)
        if found is not None:
            return found
        try:
            return self.create_person(event)
        except Rejected as exc:
            # 409 or a duplicate error: another worker (or a person) created it meanwhile.
            again = self.find_person(event.email)
            if again is None:
                raise exc from None
            return again

    def deliver(self, event: Event, context: JourneyContext, note: Note) -> DeliveryResult:
        person, fields = self.save_person(event, context)
        note_id = self.add_note(person, event, note)
        return DeliveryResult(
            external_id=note_id, detail=f"note on {self.person_label} {person}; {fields}"
        )

    def already_delivered(self, event: Event) -> bool | None:
        if not event.email:
            return False
        person = self.find_person(event.email)
        return False if person is None else self.has_note(person, event)
