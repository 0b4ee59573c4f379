"""The journey as custom fields on a CRM's person: which fields there are, and their values.

One definition list (``JOURNEY_FIELDS``) and one pure mapping (``journey_field_values``) for
every CRM: HubSpot builds its ``ve_*`` contact properties from them, Attio its ``ve_*``
attributes, Pipedrive its person fields, Salesforce its ``VE_*__c`` fields. Each integration
only says how its API names, creates and writes a field (``worker/crm.py``); no integration is
imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from worker.journey import JourneyContext

__all__ = [
    "JOURNEY_FIELDS",
    "FieldKind",
    "FieldValue",
    "JourneyField",
    "journey_field_values",
]

# What a field holds; each CRM picks its own type for it (text: HubSpot string, Attio text,
# Pipedrive varchar, Salesforce Text(255)).
FieldKind = Literal["text", "number", "datetime", "boolean"]
FieldValue = str | int | float | bool | datetime


@dataclass(frozen=True)
class JourneyField:
    """One journey field: ``name`` is ours (each CRM derives its key from it, e.g. HubSpot's
    ``ve_first_touch``, Salesforce's ``VE_First_Touch__c``), ``label`` and ``description``
    are what a CRM user sees."""

    name: str
    label: str
    description: str
    kind: FieldKind = "text"


JOURNEY_FIELDS: tuple[JourneyField, ...] = (
    JourneyField("visitor_id", "Visitor ID", "Analytics visitor id (datafast_visitor_id cookie)."),
    JourneyField(
        "first_touch",
        "First touch",
        "Where the visitor first came from (UTM, ref, referrer or 'direct').",
    ),
    JourneyField("referrer", "First-touch referrer", "Referrer of the first session."),
    JourneyField("utm_source", "First-touch UTM source", "utm_source of the first session."),
    JourneyField("utm_medium", "First-touch UTM medium", "utm_medium of the first session."),
    JourneyField("utm_campaign", "First-touch UTM campaign", "utm_campaign of the first session."),
    JourneyField("first_visit_at", "First visit", "First known visit (UTC).", "datetime"),
    JourneyField("last_visit_at", "Last visit", "Latest known visit (UTC).", "datetime"),
    JourneyField("visit_count", "Visits", "Number of visits.", "number"),
    JourneyField("pageview_count", "Pageviews", "Number of pageviews.", "number"),
    JourneyField("lead_score", "Lead score", "0-100 likelihood to convert.", "number"),
    JourneyField(
        "lead_score_estimated",
        "Lead score estimated",
        "Yes when visitor-enrich estimated the score because the analytics provider gave none.",
        "boolean",
    ),
    JourneyField(
        "expected_value", "Expected value (USD)", "Predicted revenue value in USD.", "number"
    ),
    JourneyField("country", "Country", "Country of the latest pageview."),
    JourneyField("last_page", "Last page", "Latest page URL seen for the visitor."),
)


def journey_field_values(context: JourneyContext) -> dict[str, FieldValue]:
    """The known journey values by field name; unknown ones (None, "") are left out, so a
    CRM never blanks a value it holds. Without a journey only the visitor id is known."""
    if not context.found:
        return {"visitor_id": context.visitor_id}
    touch, prediction = context.first_touch, context.prediction
    values: dict[str, FieldValue | None] = {
        "visitor_id": context.visitor_id,
        "first_touch": touch.label,
        "referrer": touch.referrer,
        "utm_source": touch.utm_source,
        "utm_medium": touch.utm_medium,
        "utm_campaign": touch.utm_campaign,
        "first_visit_at": context.first_visit_at,
        "last_visit_at": context.last_visit_at,
        "visit_count": context.visit_count,
        "pageview_count": context.pageview_count,
        "lead_score": prediction.score if prediction else None,
        "lead_score_estimated": prediction.estimated if prediction else None,
        "expected_value": prediction.expected_value if prediction else None,
        "country": context.location.country or context.location.country_code,
        "last_page": context.current_url
        or (context.recent_pages[0].url if context.recent_pages else None),
    }
    return {name: value for name, value in values.items() if value is not None and value != ""}
