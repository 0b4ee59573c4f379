"""Settings for every process (web, worker, beat, CLI), read once from the environment.

Variable names are part of the contract (see DESIGN.md). A bad value fails at start-up with a
message naming the variable, never later inside a task. Secrets are ``SecretStr`` so that they
never show up in a repr, a log line or a Sentry event.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AnyHttpUrl,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.redis_target import SentinelTarget, parse_redis_url


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


class Rate:
    """A request rate: ``amount`` requests per ``seconds`` seconds.

    Written in the environment either as a number of requests per second (``5``, ``0.5``) or
    as ``N/second``, ``N/minute`` or ``N/hour`` (``100/minute``).
    """

    __slots__ = ("amount", "seconds")

    _UNITS = {
        "s": 1,
        "sec": 1,
        "second": 1,
        "m": 60,
        "min": 60,
        "minute": 60,
        "h": 3600,
        "hour": 3600,
    }

    def __init__(self, amount: int, seconds: int) -> None:
        if amount < 1 or seconds < 1:
            raise ValueError("a rate needs at least 1 request per period")
        self.amount = amount
        self.seconds = seconds

    @classmethod
    def parse(cls, value: object) -> Rate:
        if isinstance(value, Rate):
            return value
        text = str(value).strip().lower()
        match = re.fullmatch(r"(\d+)\s*/\s*([a-z]+)", text)
        if match:
            unit = cls._UNITS.get(match.group(2).rstrip("s") or "s")
            if unit is None:
                raise ValueError(f"unknown unit in {value!r}; use second, minute or hour")
            return cls(int(match.group(1)), unit)
        try:
            per_second = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate; use e.g. 5 or 100/minute") from None
        if not math.isfinite(per_second) or per_second <= 0:
            raise ValueError("a rate must be a positive number")
        if per_second >= 1 and per_second == int(per_second):
            return cls(int(per_second), 1)
        # Fractional rates become whole requests over a minute, e.g. 0.5/s -> 30 per 60 s.
        return cls(max(1, math.floor(per_second * 60)), 60)

    @property
    def per_second(self) -> float:
        return self.amount / self.seconds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and (self.amount, self.seconds) == (
            other.amount,
            other.seconds,
        )

    def __hash__(self) -> int:
        return hash((self.amount, self.seconds))

    def __repr__(self) -> str:
        return f"Rate({self.amount}/{self.seconds}s)"

    def __str__(self) -> str:
        return f"{self.amount} per {self.seconds} second{'s' if self.seconds != 1 else ''}"


RateSetting = Annotated[Rate, BeforeValidator(Rate.parse)]


def _empty_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]
OptionalUrl = Annotated[AnyHttpUrl | None, BeforeValidator(_empty_to_none)]
OptionalStr = Annotated[str | None, BeforeValidator(_empty_to_none)]


class Settings(BaseSettings):
    """Every environment variable of the contract, plus a few operational knobs."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        arbitrary_types_allowed=True,
    )

    # Broker, rate limiter, idempotency and status store.
    redis_url: str = "redis://localhost:6379/0"
    # How many replicas must hold an accepted event before the intake answers 202 (Redis
    # WAIT), and how long it waits for them (then 503). Unset: 1 with a redis+sentinel://
    # REDIS_URL (a failover must not lose an accepted event), else 0 (no WAIT).
    redis_min_replicas: int | None = Field(default=None, ge=0)
    redis_replica_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    # Prefix of every key this service writes, and the Celery queue; lets several deployments
    # (or test runs) share one Redis.
    redis_key_prefix: str = "ve:"
    celery_queue: str = "visitor-enrich"

    # Inbound. WEBHOOK_SECRET and ROCKETCHAT_WEBHOOK_TOKEN may list several values,
    # comma-separated, so a secret can be rotated without refusing events (README "Privacy").
    webhook_secret: OptionalSecret = None
    allow_unsigned: bool = False
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    rocketchat_webhook_token: OptionalSecret = None

    # Access and privacy. API_TOKEN guards GET /v1/events/{id} and every other read or admin
    # endpoint that is not a sender's webhook; unset, they answer 401 (open only with SANDBOX).
    api_token: OptionalSecret = None
    # Local trial mode: the status API stays open without API_TOKEN (and says so).
    sandbox: bool = False
    # The journey, the inbound event's personal fields and step details are kept this long
    # (7 days); after that the event keeps its state and step names only (worker/privacy.py).
    journey_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # Dead letters (with the inbound event, what a replay needs) are dropped after this long.
    dead_letter_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)

    # Sources.
    source: Literal["datafast", "postmetric"] = "datafast"
    datafast_api_key: OptionalSecret = None
    datafast_website_id: OptionalStr = None
    datafast_base_url: AnyHttpUrl = AnyHttpUrl("https://datafa.st")
    # DataFast documents no limit; 5 requests/s shared by all workers is deliberately modest.
    datafast_rate_limit: RateSetting = Rate(5, 1)
    postmetric_api_key: OptionalSecret = None
    postmetric_base_url: OptionalUrl = None
    postmetric_rate_limit: RateSetting = Rate(100, 60)
    # A fetched journey is kept this long and shared by every event of the same visitor
    # (worker/profiles.py): one provider call per visitor per minute. 0 turns it off.
    profile_cache_seconds: int = Field(default=60, ge=0, le=86400)

    # Sinks.
    hubspot_token: OptionalSecret = None
    hubspot_base_url: AnyHttpUrl = AnyHttpUrl("https://api.hubapi.com")
    # HubSpot: 190 requests / 10 s burst; search is about 4/s, so stay under that.
    hubspot_rate_limit: RateSetting = Rate(4, 1)
    zendesk_base_url: OptionalUrl = None
    zendesk_email: OptionalStr = None
    zendesk_api_token: OptionalSecret = None
    # Zendesk Update Ticket: 100 requests/min per account.
    zendesk_rate_limit: RateSetting = Rate(100, 60)
    slack_webhook_url: OptionalSecret = None
    # Slack incoming webhooks: about 1 message/s per channel.
    slack_rate_limit: RateSetting = Rate(1, 1)
    lead_alert_min_score: float = Field(default=70, ge=0, le=100)
    rocketchat_base_url: OptionalUrl = None
    rocketchat_user_id: OptionalStr = None
    rocketchat_auth_token: OptionalSecret = None
    rocketchat_visitor_field: str = "datafast_visitor_id"
    rocketchat_rate_limit: RateSetting = Rate(5, 1)

    # Inbound webhooks and notes of the helpdesks and chat tools (worker/integrations/).
    # Several secrets may be given comma-separated while one is rotated.
    zendesk_webhook_secret: OptionalSecret = None
    # The id of the ticket field that holds the DataFast visitor id.
    zendesk_visitor_field: OptionalStr = None
    # Zendesk documents no tolerance for X-Zendesk-Webhook-Signature-Timestamp, nor whether a
    # retry is signed anew: a wide window by default; 0 turns the check off.
    zendesk_timestamp_tolerance: int = Field(default=3600, ge=0)
    intercom_base_url: AnyHttpUrl = AnyHttpUrl("https://api.intercom.io")
    intercom_access_token: OptionalSecret = None
    intercom_client_secret: OptionalSecret = None
    intercom_admin_id: OptionalStr = None
    intercom_visitor_attribute: str = "datafast_visitor_id"
    # Intercom: 10,000 calls a minute per app, spread over 10-second windows.
    intercom_rate_limit: RateSetting = Rate(1666, 10)
    helpscout_base_url: AnyHttpUrl = AnyHttpUrl("https://api.helpscout.net")
    helpscout_app_id: OptionalStr = None
    helpscout_app_secret: OptionalSecret = None
    helpscout_webhook_secret: OptionalSecret = None
    helpscout_visitor_field: str = "datafast_visitor_id"
    # Help Scout: the limit depends on the plan, 200/min on the lowest, and a write counts
    # twice; a note is a write, so 100 calls a minute stay under it whatever the mix.
    helpscout_rate_limit: RateSetting = Rate(100, 60)
    # https://<your-domain>.freshdesk.com: each account has its own, so there is no default.
    freshdesk_base_url: OptionalUrl = None
    freshdesk_api_key: OptionalSecret = None
    # Freshdesk signs nothing: the automation rule sends this in X-Visitor-Enrich-Token.
    freshdesk_webhook_token: OptionalSecret = None
    freshdesk_visitor_field: str = "cf_datafast_visitor_id"
    # Freshdesk: 200/min on the Growth plan (trials 50/min: lower it there).
    freshdesk_rate_limit: RateSetting = Rate(200, 60)
    crisp_base_url: AnyHttpUrl = AnyHttpUrl("https://api.crisp.chat")
    crisp_website_id: OptionalStr = None
    crisp_identifier: OptionalStr = None
    crisp_key: OptionalSecret = None
    # The website hook's ?key= value and/or the plugin's hook signing secret.
    crisp_webhook_key: OptionalSecret = None
    crisp_visitor_field: str = "datafast_visitor_id"
    # The tier of the CRISP_IDENTIFIER/CRISP_KEY token (X-Crisp-Tier): plugin or website.
    crisp_token_tier: Literal["plugin", "website"] = "plugin"
    # Seconds a signed plugin hook's X-Crisp-Request-Timestamp may be off (0: not checked).
    # Crisp documents no tolerance, and its retries may keep the first timestamp.
    crisp_timestamp_tolerance: int = Field(default=3600, ge=0)
    # Crisp documents layered limits without numbers; stay modest.
    crisp_rate_limit: RateSetting = Rate(5, 1)
    plain_base_url: AnyHttpUrl = AnyHttpUrl("https://core-api.uk.plain.com")
    plain_api_key: OptionalSecret = None
    plain_webhook_secret: OptionalSecret = None
    plain_visitor_field: str = "datafast_visitor_id"
    # Where the DataFast visitor id is on a Plain thread: the thread field PLAIN_VISITOR_FIELD
    # (its key), the customer's external id, or the thread's external id.
    plain_visitor_source: Literal["thread_field", "customer_external_id", "thread_external_id"] = (
        "thread_field"
    )
    # Seconds a Plain delivery attempt's timestamp may be off (Plain's SDK: 300; 0: off).
    plain_timestamp_tolerance: int = Field(default=300, ge=0)
    # Plain documents no number; stay modest.
    plain_rate_limit: RateSetting = Rate(5, 1)

    # Webhooks of the billing and sign-up tools, and the CRMs and alert channels for sales.
    stripe_webhook_secret: OptionalSecret = None
    stripe_visitor_metadata_key: str = "datafast_visitor_id"
    clerk_webhook_secret: OptionalSecret = None
    clerk_visitor_metadata_key: str = "datafast_visitor_id"
    hubspot_app_secret: OptionalSecret = None
    hubspot_visitor_property: str = "datafast_visitor_id"
    attio_base_url: AnyHttpUrl = AnyHttpUrl("https://api.attio.com")
    attio_api_key: OptionalSecret = None
    # Attio: 25 writes/s (100 reads/s).
    attio_rate_limit: RateSetting = Rate(25, 1)
    # The company domain, e.g. https://acme.pipedrive.com.
    pipedrive_base_url: OptionalUrl = None
    pipedrive_api_token: OptionalSecret = None
    # Pipedrive: the search API allows 10 requests per 2 seconds.
    pipedrive_rate_limit: RateSetting = Rate(5, 1)
    salesforce_instance_url: OptionalUrl = None
    salesforce_client_id: OptionalStr = None
    salesforce_client_secret: OptionalSecret = None
    salesforce_api_version: str = Field(default="v60.0", pattern=r"^v\d+\.\d$")
    # Where a person with no Contact is found or created: a Lead (sales' inbox) or a Contact.
    salesforce_person_object: Literal["Lead", "Contact"] = "Lead"
    salesforce_rate_limit: RateSetting = Rate(5, 1)
    # Attio, Pipedrive, Salesforce: set the journey fields that exist on the person (README
    # "Attio" ...); false: the note only, the CRM's field list is never read.
    crm_journey_fields: bool = True
    discord_webhook_url: OptionalSecret = None
    # Discord: a webhook's own bucket allows about 5 requests per 2 seconds.
    discord_rate_limit: RateSetting = Rate(5, 2)
    teams_webhook_url: OptionalSecret = None
    # Teams: more than 4 requests a second are throttled.
    teams_rate_limit: RateSetting = Rate(4, 1)
    telegram_base_url: AnyHttpUrl = AnyHttpUrl("https://api.telegram.org")
    telegram_bot_token: OptionalSecret = None
    telegram_chat_id: OptionalStr = None
    # Telegram: at most 20 messages a minute to one group.
    telegram_rate_limit: RateSetting = Rate(20, 60)
    outbound_webhook_url: OptionalUrl = None
    outbound_webhook_secret: OptionalSecret = None
    outbound_webhook_rate_limit: RateSetting = Rate(10, 1)

    # Routing rules and note templates (worker/routing.py, worker/templates.py).
    routes_file: OptionalStr = None
    templates_dir: OptionalStr = None
    # Several DataFast websites: ``name=df_key`` or ``name=dft_token:websiteId``, comma-separated.
    datafast_websites: OptionalSecret = None

    # Realtime hot-visitor alerts.
    realtime_poll_seconds: float = Field(default=60, gt=0)
    hot_paths: str = "/pricing,/checkout"
    hot_visitor_cooldown: int = Field(default=86400, ge=0)
    alert_on_payments: bool = False
    # Explainable lead score (worker/score.py), computed only when the provider gives none.
    # Points per journey fact, the total capped at 100: each view of a HOT_PATHS page among
    # the recent pages (at most 3 counted), each visit after the first (at most 5), each
    # completed non-payment goal (at most 2), the last visit's recency (full weight now, half
    # after a day, a quarter after two...), each pageview (at most 20). A payment means 100.
    score_weight_hot_page: float = Field(default=12, ge=0)
    score_weight_visit: float = Field(default=4, ge=0)
    score_weight_goal: float = Field(default=15, ge=0)
    score_weight_recency: float = Field(default=20, ge=0)
    score_weight_pageviews: float = Field(default=0.5, ge=0)

    # Delivery policy.
    max_retries: int = Field(default=5, ge=0, le=50)
    retry_backoff_base: float = Field(default=1.0, gt=0)
    retry_backoff_max: float = Field(default=25.0, gt=0)
    http_connect_timeout: float = Field(default=5.0, gt=0)
    http_read_timeout: float = Field(default=10.0, gt=0)
    response_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Redis redelivers a task that was taken but not acknowledged after this many seconds
    # (a worker killed mid-task). Every retry countdown is kept below half of it.
    broker_visibility_timeout: int = Field(default=60, ge=10)
    # Circuit breaker per upstream: this many 5xx/timeouts within the window open it for the
    # cool-down; tasks meanwhile are re-scheduled without using up attempts.
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_window_seconds: float = Field(default=30.0, gt=0)
    circuit_cooldown_seconds: float = Field(default=15.0, gt=0)
    # How long a worker's hold on an event or on a sink lock outlives its last renewal
    # (worker/lease.py): each worker renews what it holds every quarter of it, and an event
    # that no live worker holds and that made no progress for this long (a worker killed, a
    # task lost with a broker outage) is queued again. The tasks are idempotent, so a second
    # run only finishes it.
    worker_lease_seconds: float = Field(default=8.0, ge=2, le=60)
    # Beat also runs the sweep, every half of this (at most 60 s): a second opinion, should
    # every worker's sweep thread have stopped; what it re-queues is judged by the leases.
    stuck_event_seconds: float = Field(default=300.0, ge=30)
    # Beat (celery-redbeat): every beat process wants one Redis lock; the holder schedules and
    # renews it every fifth of this many seconds, the others wait. A standby takes over at most
    # this long (plus a fifth) after the active beat dies.
    beat_lock_timeout: int = Field(default=60, ge=5)
    # How long event ids are remembered for dedupe and status (7 days).
    event_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)

    sentry_dsn: OptionalSecret = None
    log_level: str = "INFO"

    # Operator surfaces (SANDBOX, above, also turns on DataFast answered in-process with
    # sample journeys and the ``console`` sink, and is refused with any real provider key).
    # The console at /console is off (404) until this is set.
    console_password: OptionalSecret = None
    # Bearer token /metrics asks for when set.
    metrics_token: OptionalSecret = None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parse_redis_url(value)
        return value

    # Standard Webhooks (and Svix) secrets, several comma-separated during a rotation.
    @field_validator("webhook_secret", "clerk_webhook_secret", "outbound_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secrets = split_secrets(value)
        if not secrets:
            raise ValueError("lists no secret; give whsec_<base64>, or several comma-separated")
        for position, secret in enumerate(secrets, start=1):
            # The message names the position, never the value.
            where = f"secret {position}" if len(secrets) > 1 else "the secret"
            raw = secret.get_secret_value()
            if not raw.startswith("whsec_"):
                raise ValueError(f"{where} must start with whsec_ followed by base64")
            try:
                decoded = base64.b64decode(raw[len("whsec_") :] + "==", validate=False)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: the part after whsec_ is not base64") from None
            if not decoded:
                raise ValueError(f"{where}: the part after whsec_ is empty")
        return value

    @field_validator("rocketchat_webhook_token")
    @classmethod
    def _check_secret_list(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not split_secrets(value):
            raise ValueError("lists no secret")
        return value

    @field_validator("datafast_api_key")
    @classmethod
    def _check_datafast_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("df_", "dft_")):
            raise ValueError("must be a df_ website key or a dft_ account token")
        return value

    @field_validator("datafast_websites")
    @classmethod
    def _check_websites(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_websites(value.get_secret_value())
        return value

    @field_validator("slack_webhook_url", "discord_webhook_url", "teams_webhook_url")
    @classmethod
    def _check_slack_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("helpscout_webhook_secret")
    @classmethod
    def _check_helpscout_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Help Scout takes a webhook secret of at most 40 characters (POST /v2/webhooks).
        if any(len(part.get_secret_value()) > 40 for part in split_secrets(value)):
            raise ValueError("each secret must be at most 40 characters (Help Scout's limit)")
        return value

    @field_validator("hot_paths")
    @classmethod
    def _check_hot_paths(cls, value: str) -> str:
        for path in (p.strip() for p in value.split(",")):
            if path and not path.startswith("/"):
                raise ValueError(f"{path!r} must start with /")
        return value

    @model_validator(mode="after")
    def _check_groups(self) -> Settings:
        key = self.datafast_api_key
        if (
            key is not None
            and key.get_secret_value().startswith("dft_")
            and not self.datafast_website_id
        ):
            raise ValueError("DATAFAST_WEBSITE_ID: required with a dft_ account token")
        _all_or_none(
            self,
            ("zendesk_base_url", "zendesk_email", "zendesk_api_token"),
        )
        _all_or_none(
            self,
            ("rocketchat_base_url", "rocketchat_user_id", "rocketchat_auth_token"),
        )
        _all_or_none(self, ("telegram_bot_token", "telegram_chat_id"))
        _all_or_none(self, ("pipedrive_base_url", "pipedrive_api_token"))
        _all_or_none(
            self,
            ("salesforce_instance_url", "salesforce_client_id", "salesforce_client_secret"),
        )
        _all_or_none(self, ("freshdesk_base_url", "freshdesk_api_key"))
        _all_or_none(self, ("crisp_identifier", "crisp_key"))
        if self.crisp_key is not None and not self.crisp_website_id:
            raise ValueError("CRISP_WEBSITE_ID: required with CRISP_IDENTIFIER and CRISP_KEY")
        _all_or_none(self, ("intercom_access_token", "intercom_admin_id"))
        _all_or_none(self, ("helpscout_app_id", "helpscout_app_secret"))
        _all_or_none(self, ("outbound_webhook_url", "outbound_webhook_secret"))
        if self.source == "postmetric" and (
            self.postmetric_api_key is None or self.postmetric_base_url is None
        ):
            raise ValueError(
                "POSTMETRIC_API_KEY, POSTMETRIC_BASE_URL: both required with SOURCE=postmetric"
            )
        if self.sandbox:
            real = [n.upper() for n in SANDBOX_REFUSES if getattr(self, n) is not None]
            if real:
                raise ValueError(
                    f"SANDBOX: refused together with real provider keys ({', '.join(real)}); "
                    "sandbox mode must never reach a real provider"
                )
        if self.retry_backoff_max >= self.broker_visibility_timeout / 2:
            raise ValueError(
                "RETRY_BACKOFF_MAX: must stay below half of BROKER_VISIBILITY_TIMEOUT, or Redis "
                "would hand a waiting task to a second worker"
            )
        return self

    # Derived values ---------------------------------------------------------------------

    @property
    def redis_target(self) -> str | SentinelTarget:
        """``REDIS_URL`` parsed (validated at start-up): a plain URL or a Sentinel target."""
        return parse_redis_url(self.redis_url)

    @property
    def replicas_to_wait_for(self) -> int:
        """``REDIS_MIN_REPLICAS``, or its default for the kind of ``REDIS_URL``."""
        if self.redis_min_replicas is not None:
            return self.redis_min_replicas
        return 1 if isinstance(self.redis_target, SentinelTarget) else 0

    @property
    def hot_path_list(self) -> list[str]:
        return [p.strip() for p in self.hot_paths.split(",") if p.strip()]

    @property
    def websites(self) -> dict[str, DataFastWebsite]:
        """``DATAFAST_WEBSITES`` by name (validated at start-up)."""
        if self.datafast_websites is None:
            return {}
        return parse_websites(self.datafast_websites.get_secret_value())

    @property
    def max_countdown(self) -> float:
        """The longest countdown a task may be re-scheduled with (see visibility timeout)."""
        return self.broker_visibility_timeout / 2

    @property
    def webhook_secrets(self) -> list[SecretStr]:
        """Every inbound signature secret in force (WEBHOOK_SECRET, comma-separated)."""
        return split_secrets(self.webhook_secret)

    @property
    def rocketchat_webhook_tokens(self) -> list[SecretStr]:
        """Every accepted X-RocketChat-Livechat-Token (ROCKETCHAT_WEBHOOK_TOKEN)."""
        return split_secrets(self.rocketchat_webhook_token)

    def secret_values(self) -> list[str]:
        """Every secret in force, for scrubbing logs and error reports: each setting's whole
        value and, for a comma-separated list, each secret in it (a log line would show one
        of them, not the list)."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
                if "," in value.get_secret_value():
                    values += [s.get_secret_value() for s in split_secrets(value)]
        # Each website's key on its own: a log line would show one, not the whole setting.
        values += [w.api_key.get_secret_value() for w in self.websites.values()]
        # REDIS_URL's password (a plain str setting: the URL itself is worth logging).
        redis_password = urlsplit(self.redis_url).password
        if redis_password:
            values.append(unquote(redis_password))
        return values


class DataFastWebsite:
    """One of ``DATAFAST_WEBSITES``: its API key and, for a ``dft_`` account token, its id."""

    __slots__ = ("api_key", "name", "website_id")

    def __init__(self, name: str, api_key: SecretStr, website_id: str | None) -> None:
        self.name = name
        self.api_key = api_key
        self.website_id = website_id

    def __repr__(self) -> str:
        return f"DataFastWebsite({self.name!r}, website_id={self.website_id!r})"


_WEBSITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def parse_websites(text: str) -> dict[str, DataFastWebsite]:
    """``shop=df_abc,blog=dft_xyz:website-id`` by name; ``ValueError`` says what is wrong
    without repeating a key."""
    websites: dict[str, DataFastWebsite] = {}
    for index, entry in enumerate(e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, credentials = entry.partition("=")
        name = name.strip()
        if not sep or not _WEBSITE_NAME.fullmatch(name):
            raise ValueError(
                f"entry {index + 1} must be name=df_key or name=dft_token:websiteId "
                "(names: letters, digits, . _ -)"
            )
        key, _, website_id = credentials.strip().partition(":")
        if not key.startswith(("df_", "dft_")):
            raise ValueError(f"{name}: the key must be a df_ website key or a dft_ account token")
        if key.startswith("dft_") and not website_id.strip():
            raise ValueError(f"{name}: a dft_ account token needs :websiteId after it")
        if name in websites:
            raise ValueError(f"{name}: named twice")
        websites[name] = DataFastWebsite(name, SecretStr(key), website_id.strip() or None)
    return websites


def split_secrets(value: SecretStr | None) -> list[SecretStr]:
    """The secrets of a comma-separated list (blank entries dropped), each still a SecretStr.

    Used by every inbound secret that may hold an old and a new value during a rotation."""
    if value is None:
        return []
    parts = (part.strip() for part in value.get_secret_value().split(","))
    return [SecretStr(part) for part in parts if part]


# The settings that would let a process reach a real provider or destination (inbound
# secrets, which only check what others send, are not among them).
SANDBOX_REFUSES = (
    "datafast_api_key",
    "datafast_websites",
    "postmetric_api_key",
    "hubspot_token",
    "zendesk_api_token",
    "slack_webhook_url",
    "rocketchat_auth_token",
    "intercom_access_token",
    "helpscout_app_secret",
    "freshdesk_api_key",
    "crisp_key",
    "plain_api_key",
    "attio_api_key",
    "pipedrive_api_token",
    "salesforce_client_secret",
    "discord_webhook_url",
    "teams_webhook_url",
    "telegram_bot_token",
    "outbound_webhook_url",
)


def _all_or_none(settings: Settings, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(settings, n) is not None]
    if given and len(given) != len(names):
        missing = [n.upper() for n in names if n not in given]
        raise ValueError(
            f"{', '.join(missing)}: required together with {', '.join(n.upper() for n in given)}"
        )


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise ``ConfigError`` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            location = ".".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{location}: {message}" if location else message)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
