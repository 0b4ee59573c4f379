"""Stripe: a paying customer's journey from Stripe's own webhook, with no code of the user's.

DataFast's revenue attribution has the user pass ``metadata: {datafast_visitor_id: <cookie>}``
to ``stripe.checkout.sessions.create`` (or to a PaymentIntent). Stripe then sends that
metadata back on its events, so ``POST /v1/webhooks/stripe`` can map:

- ``checkout.session.completed``: the Checkout Session in ``data.object``: visitor id from
  ``metadata.<STRIPE_VISITOR_METADATA_KEY>``, email and name from ``customer_details``
  (else ``customer_email``), the amount from ``amount_total`` and ``currency``; when it is
  still ``unpaid`` (a delayed payment method) it is ignored and
  ``checkout.session.async_payment_succeeded`` (the same session, paid) stands for it;
- ``payment_intent.succeeded``: only when the intent itself carries the visitor id in its
  metadata (a Checkout payment's intent usually does not, and the session's event already
  stands for it: one note per purchase); ``amount_received``, ``receipt_email``;

onto one ``payment`` event whose id is ``stripe:<evt_...>``: Stripe's retries (for up to
three days) and a resend from the Dashboard are duplicates. Every other event type is
answered 200 ``ignored``. A session without the visitor id still makes a payment event,
with a missing reason that says how to set it, so the CRM note says why there is no journey.

**The signature** (``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...][,v0=...]``): HMAC-SHA256
keyed with the whole ``whsec_...`` signing secret over ``"<t>.<raw body>"``, hex; only ``v1``
counts (``v0`` is a test-mode decoy); a ``t`` more than 300 s old is refused (replay).
Written here rather than calling ``stripe.Webhook.construct_event``: the ``stripe`` package
is a full API client (dozens of modules loaded into the web process) for a few lines over
the shared HMAC helpers (``signed_by_any``, ``require_fresh_timestamp``);
``tests/test_sales_webhooks.py`` checks this verdict against the package's own on the
same inputs. Comma-separated secrets (a rotation, or one endpoint for live and test mode):
any of them may match.

Stripe makes no call here: nothing is looked up, so there is no sink or client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.events import MAX_ID_LENGTH, Event, Payment, is_uuid
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

EVENT_ID_PREFIX = "stripe:"
TOLERANCE_SECONDS = 300  # Stripe's libraries' default
# A Checkout Session paid now, or later by a delayed method (bank debits): the session event
# whose payment_status is "paid" (or "no_payment_required": a free trial) is the purchase.
SESSION_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
HANDLED = (*SESSION_EVENTS, "payment_intent.succeeded")

# Stripe amounts are in the currency's smallest unit; these have none smaller than the unit
# (docs.stripe.com/currencies#zero-decimal), and these three decimals.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


# The signature ----------------------------------------------------------------------------


def parse_signature_header(header: str) -> tuple[int | None, list[str]]:
    """``t`` and the ``v1`` signatures of a ``Stripe-Signature`` header."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    return timestamp, signatures


def verify_stripe_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Return when one ``v1`` signature matches one of ``secrets``; ``SignatureError`` else."""
    require_signature(bool(header), "no Stripe-Signature header")
    assert header is not None
    timestamp, signatures = parse_signature_header(header)
    require_signature(timestamp is not None, "no t= timestamp in Stripe-Signature")
    require_signature(bool(signatures), "no v1= signature in Stripe-Signature")
    # Too old: a replay. Stripe's libraries accept any future time; one further off than the
    # tolerance is no clock skew but a replayable signature made to last: refused too.
    require_fresh_timestamp(str(timestamp), tolerance, now=now)
    signed = f"{timestamp}.".encode() + body
    require_signature(
        any(signed_by_any(secrets, signed, given) for given in signatures),
        "no matching v1 signature",
    )


# The event --------------------------------------------------------------------------------


def major_units(amount: Any, currency: str | None) -> float | None:
    """A Stripe amount (smallest currency unit, an integer) in the currency's major units."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        return None
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return float(amount)
    return amount / (1000 if code in THREE_DECIMAL else 100)


def _line_items(session: dict[str, Any]) -> str | None:
    # Only present when the session was expanded (a Dashboard resend of an expanded event).
    items = session.get("line_items")
    data = items.get("data") if isinstance(items, dict) else None
    if not isinstance(data, list):
        return None
    names = [text_field(i.get("description"), 200) for i in data if isinstance(i, dict)]
    return ", ".join(n for n in names if n) or None


def _description(kind: str, obj: dict[str, Any]) -> str:
    """What was bought: the line items (when expanded), the description, a ``product`` or
    ``plan`` metadata entry, else the kind of payment (the session event names no product)."""
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    described = (
        _line_items(obj)
        or text_field(obj.get("description"), 300)
        or text_field(metadata.get("product"), 300)
        or text_field(metadata.get("plan"), 300)
    )
    if described:
        return described
    if kind in SESSION_EVENTS:
        if obj.get("mode") == "subscription":
            return "a subscription (Stripe Checkout)"
        return "a one-time purchase (Stripe Checkout)"
    return "a payment (Stripe PaymentIntent)"


def parse_stripe_event(payload: Any, settings: Settings, *, require_uuid: bool = True) -> Event:
    """Map a Stripe event onto a ``payment`` event; ``Ignored`` for other types and for an
    intent without the visitor id; ``EventRejected`` naming the field for a malformed one."""
    if not isinstance(payload, dict):
        raise reject("body", "a Stripe event must be a JSON object")
    kind = text_field(payload.get("type"), 100)
    if kind not in HANDLED:
        raise Ignored(f"Stripe event type {kind!r} is not handled (only {', '.join(HANDLED)})")
    event_id = text_field(payload.get("id"), MAX_ID_LENGTH - len(EVENT_ID_PREFIX))
    if not event_id:
        raise reject("id", "missing; Stripe sends the event id (evt_...) there")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise reject("data.object", "missing; Stripe sends the session or intent there")
    if kind in SESSION_EVENTS and obj.get("mode") == "setup":
        raise Ignored("a Checkout Session in setup mode takes no payment")
    if kind in SESSION_EVENTS and obj.get("payment_status") == "unpaid":
        raise Ignored(
            "the Checkout Session is not paid yet (a delayed payment method); "
            "checkout.session.async_payment_succeeded follows when it is"
        )

    key = settings.stripe_visitor_metadata_key
    metadata = obj.get("metadata")
    visitor_id = (
        text_field(metadata.get(key), MAX_ID_LENGTH) if isinstance(metadata, dict) else None
    )
    missing = None
    if kind == "payment_intent.succeeded" and not visitor_id:
        raise Ignored(
            f"the PaymentIntent has no metadata.{key}; the Checkout Session's event stands "
            "for a Checkout payment"
        )
    if not visitor_id:
        missing = (
            f"no metadata.{key} on the Checkout Session; pass metadata: {{{key}: <the "
            f"{key} cookie>}} to stripe.checkout.sessions.create"
        )
    elif require_uuid and not is_uuid(visitor_id):
        # A 4xx would have Stripe retry for three days; the note says what is wrong instead.
        missing = f"metadata.{key} {visitor_id[:60]!r} on the Stripe payment is not a UUID"
        visitor_id = None

    currency = text_field(obj.get("currency"), 10)
    if kind in SESSION_EVENTS:
        details = obj.get("customer_details")
        details = details if isinstance(details, dict) else {}
        email = email_field(details.get("email")) or email_field(obj.get("customer_email"))
        name = text_field(details.get("name"))
        amount = major_units(obj.get("amount_total"), currency)
    else:
        email = email_field(obj.get("receipt_email"))
        name = None
        amount = major_units(obj.get("amount_received", obj.get("amount")), currency)

    external = {
        field: value
        for field, value in (
            ("stripe_object_id", text_field(obj.get("id"), MAX_ID_LENGTH)),
            ("stripe_customer_id", text_field(obj.get("customer"), MAX_ID_LENGTH)),
            ("stripe_event_type", kind),
        )
        if value
    }
    return Event(
        id=f"{EVENT_ID_PREFIX}{event_id}",
        type="payment",
        visitor_id=visitor_id,
        email=email,
        name=name,
        user_id=text_field(obj.get("client_reference_id"), MAX_ID_LENGTH),
        occurred_at=date_field(payload.get("created")),
        inbound="stripe",
        external=external,
        missing_reason=missing,
        payment=Payment(
            amount=amount,
            currency=currency.upper() if currency else None,
            description=_description(kind, obj),
        ),
    )


class StripeWebhook(WebhookAdapter):
    """``POST /v1/webhooks/stripe``: Stripe's own event, verified by ``Stripe-Signature``."""

    system = "stripe"
    label = "Stripe"
    secret_setting = "stripe_webhook_secret"

    def verify(self, request: WebhookRequest) -> None:
        verify_stripe_signature(
            request.body,
            request.headers.get("stripe-signature"),
            self.secrets(self.settings),
        )

    def map_events(self, request: WebhookRequest, payload: Any) -> Sequence[Event]:
        return [parse_stripe_event(payload, self.settings, require_uuid=self.require_uuid)]


INTEGRATION = Integration(name="stripe", label="Stripe", webhook=StripeWebhook)
