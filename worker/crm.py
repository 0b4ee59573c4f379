"""What every CRM sink does the same way: find the person by email (create them when absent),
then add one note on them per event, exactly once.

A CRM integration (Attio, Pipedrive, Salesforce) says how to find, create and annotate a
person in its API; ``CrmSink`` does the rest once: ``deliver`` finds or creates the person and
posts the note, ``already_delivered`` finds the person again and looks through their notes
for the event's marker, so a task run again after a crash never posts a second note.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from worker.errors import Rejected
from worker.events import Event
from worker.journey import JourneyContext
from worker.sink import DeliveryResult, Note, Sink

__all__ = ["CrmSink", "split_name"]


def split_name(event: Event) -> tuple[str | None, str]:
    """(first, last) for a CRM that needs a last name: the event's name, else the email's
    local part as the last name."""
    full = (event.name or "").strip()
    if full:
        first, _, last = full.partition(" ")
        return (first, last.strip()) if last.strip() else (None, first)
    local = (event.email or "unknown").partition("@")[0]
    return None, local or "unknown"


class CrmSink(Sink):
    """A CRM: one note per event on the person with the event's email."""

    # What the CRM calls a person ("person", "contact"), for the status.
    person_label: ClassVar[str] = "person"

    def skip_reason(self, event: Event, context: JourneyContext) -> str | None:
        if not event.email:
            return f"no email on the event to find the {self.person_label} by"
        return super().skip_reason(event, context)

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
        person = self.person_for(event)
        note_id = self.add_note(person, event, note)
        return DeliveryResult(external_id=note_id, detail=f"note on {self.person_label} {person}")

    def already_delivered(self, event: Event) -> bool | None:
        if not event.email:
            return False
        person = self.find_person(event.email)
        return False if person is None else self.has_note(person, event)
