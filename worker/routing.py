"""Routing rules: which sinks an event goes to, from a YAML file named by ``ROUTES_FILE``.

    rules:
      - name: hot-producthunt-signups
        when:
          type: signup
          score_at_least: 70
          utm_source: producthunt
        send_to:
          - hubspot
          - sink: slack
            template: slack-producthunt.mrkdwn.j2

Every rule whose ``when`` holds adds its ``send_to`` sinks (a sink named by several rules
goes once, with the first rule's template); the event status records which rule sent each
sink. Without a routes file every enabled sink gets every event it can take, and alert sinks
only hot signups and payments (``LEAD_ALERT_MIN_SCORE``): today's behaviour.

Conditions (all must hold; a list means any of its values):
``type``, ``inbound`` (the system that sent the event: ``api``, ``intercom``...),
``website``, ``score_at_least``, ``score_below``, ``country`` (name or ISO code),
``utm_source``, ``utm_medium``, ``referrer_domain`` (the domain or a subdomain of it),
``path_prefix`` (any visited page), ``has_payment``, ``email_domain_in``,
``email_domain_not_in``, ``free_mail`` (true: only free-mail addresses such as gmail.com;
false: only the others), ``journey_found``. Text compares ignore case.

The file is read and checked once at start-up (web, worker, ``visitor-enrich check``); an
error names the line and the key. Matching is pure: ``Routes.route(event, context)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config import ConfigError
from worker.events import Event, EventType
from worker.journey import JourneyContext

__all__ = ["FREE_MAIL_DOMAINS", "Route", "Routes", "RoutesError", "load_routes"]

# The free-mail providers most signups come from; ``free_mail: false`` keeps business email.
FREE_MAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "fastmail.com",
        "gmail.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "googlemail.com",
        "hey.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "icloud.com",
        "live.com",
        "mac.com",
        "mail.com",
        "mail.ru",
        "me.com",
        "msn.com",
        "outlook.com",
        "pm.me",
        "proton.me",
        "protonmail.com",
        "qq.com",
        "t-online.de",
        "tutanota.com",
        "web.de",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "yandex.com",
        "yandex.ru",
        "zoho.com",
    }
)


class RoutesError(ConfigError):
    """The routes file cannot be used; the message names the file, the line and the key."""


def _as_list(value: Any) -> Any:
    return (
        [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TextList = list[str]


class When(_Strict):
    """The conditions of one rule; every given one must hold."""

    type: list[EventType] | None = None
    inbound: TextList | None = None
    website: TextList | None = None
    score_at_least: float | None = Field(default=None, ge=0, le=100)
    score_below: float | None = Field(default=None, ge=0, le=100)
    country: TextList | None = None
    utm_source: TextList | None = None
    utm_medium: TextList | None = None
    referrer_domain: TextList | None = None
    path_prefix: TextList | None = None
    has_payment: bool | None = None
    email_domain_in: TextList | None = None
    email_domain_not_in: TextList | None = None
    free_mail: bool | None = None
    journey_found: bool | None = None

    @field_validator(
        "type",
        "inbound",
        "website",
        "country",
        "utm_source",
        "utm_medium",
        "referrer_domain",
        "path_prefix",
        "email_domain_in",
        "email_domain_not_in",
        mode="before",
    )
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("path_prefix")
    @classmethod
    def _paths(cls, value: TextList | None) -> TextList | None:
        for path in value or []:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with /")
        return value


class Target(_Strict):
    """One sink a rule sends to, with an optional template (a file name)."""

    sink: str
    template: str | None = None


class Route(_Strict):
    name: str = Field(min_length=1)
    when: When = Field(default_factory=When)
    send_to: list[Target] = Field(min_length=1)

    @field_validator("send_to", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        # "- hubspot" is short for "- sink: hubspot".
        if isinstance(value, list):
            return [{"sink": v} if isinstance(v, str) else v for v in value]
        return value


class RoutesFile(_Strict):
    rules: list[Route] = Field(default_factory=list)


@dataclass(frozen=True)
class Routed:
    """Where an event goes: the sink, the rule that sent it, and the template to use."""

    sink: str
    rule: str
    template: str | None = None


# Matching --------------------------------------------------------------------------------


def _lower(values: Iterable[str]) -> set[str]:
    return {v.strip().lower() for v in values}


def _domain_of(url: str | None) -> str | None:
    if not url:
        return None
    host = urlsplit(url if "//" in url else f"//{url}").hostname
    return host.lower().removeprefix("www.") if host else None


def _path_of(url: str) -> str:
    return urlsplit(url).path or "/"


def _email_domain(event: Event) -> str | None:
    return event.email.rpartition("@")[2].lower() if event.email else None


def _failed_condition(when: When, event: Event, ctx: JourneyContext) -> str | None:
    """The first condition of ``when`` that does not hold, or None when all hold."""
    touch = ctx.first_touch
    score = ctx.score
    domain = _email_domain(event)
    checks: list[tuple[str, bool]] = []
    if when.type is not None:
        checks.append(("type", event.type in when.type))
    if when.inbound is not None:
        checks.append(("inbound", event.inbound.lower() in _lower(when.inbound)))
    if when.website is not None:
        checks.append(("website", (event.website or "").lower() in _lower(when.website)))
    if when.score_at_least is not None:
        checks.append(("score_at_least", score is not None and score >= when.score_at_least))
    if when.score_below is not None:
        checks.append(("score_below", score is not None and score < when.score_below))
    if when.country is not None:
        where = _lower(v for v in (ctx.location.country, ctx.location.country_code) if v)
        checks.append(("country", bool(where & _lower(when.country))))
    if when.utm_source is not None:
        checks.append(("utm_source", (touch.utm_source or "").lower() in _lower(when.utm_source)))
    if when.utm_medium is not None:
        checks.append(("utm_medium", (touch.utm_medium or "").lower() in _lower(when.utm_medium)))
    if when.referrer_domain is not None:
        ref = _domain_of(touch.referrer) or ""
        wanted = {d.removeprefix("www.") for d in _lower(when.referrer_domain)}
        checks.append(("referrer_domain", any(ref == d or ref.endswith(f".{d}") for d in wanted)))
    if when.path_prefix is not None:
        paths = [_path_of(p.url) for p in ctx.recent_pages]
        if ctx.current_url:
            paths.append(_path_of(ctx.current_url))
        checks.append(
            (
                "path_prefix",
                any(p.startswith(prefix) for p in paths for prefix in when.path_prefix),
            )
        )
    if when.has_payment is not None:
        paid = bool(ctx.payments) or event.type == "payment"
        checks.append(("has_payment", paid == when.has_payment))
    if when.email_domain_in is not None:
        checks.append(("email_domain_in", domain in _lower(when.email_domain_in)))
    if when.email_domain_not_in is not None:
        checks.append(
            (
                "email_domain_not_in",
                domain is not None and domain not in _lower(when.email_domain_not_in),
            )
        )
    if when.free_mail is not None:
        checks.append(
            ("free_mail", domain is not None and (domain in FREE_MAIL_DOMAINS) == when.free_mail)
        )
    if when.journey_found is not None:
        checks.append(("journey_found", ctx.found == when.journey_found))
    return next((name for name, ok in checks if not ok), None)


@dataclass(frozen=True)
class Routes:
    """The rules of a routes file, checked; ``route`` is pure."""

    rules: tuple[Route, ...]
    path: str | None = None

    def route(self, event: Event, context: JourneyContext) -> list[Routed]:
        """The sinks every matching rule sends to, each once (the first rule naming it wins)."""
        routed: dict[str, Routed] = {}
        for rule in self.rules:
            if _failed_condition(rule.when, event, context) is not None:
                continue
            for target in rule.send_to:
                routed.setdefault(target.sink, Routed(target.sink, rule.name, target.template))
        return list(routed.values())

    def explain(self, event: Event, context: JourneyContext) -> dict[str, str | None]:
        """For each rule, the condition that failed (None: it matched); for the CLI."""
        return {r.name: _failed_condition(r.when, event, context) for r in self.rules}

    def templates(self) -> set[str]:
        return {t.template for r in self.rules for t in r.send_to if t.template}

    def check_sinks(self, known: Sequence[str], enabled: Sequence[str]) -> None:
        """Every named sink exists and is configured; else ``RoutesError``."""
        for index, rule in enumerate(self.rules):
            for target in rule.send_to:
                where = f"rule {rule.name!r} (rules[{index}]) send_to"
                if target.sink not in known:
                    raise RoutesError(
                        f"{self.path}: {where}: unknown sink {target.sink!r}; "
                        f"known sinks: {', '.join(known)}"
                    )
                if target.sink not in enabled:
                    raise RoutesError(
                        f"{self.path}: {where}: sink {target.sink!r} is not configured "
                        "(set its credentials, or remove it from the rule)"
                    )


# Loading ---------------------------------------------------------------------------------


def _lines(
    node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    """The line of every mapping key and sequence item, by its path in the document."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            out[child] = key.start_mark.line + 1
            _lines(value, child, out)
            out[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


def _line_of(loc: Sequence[str | int], lines: dict[tuple[str | int, ...], int]) -> int | None:
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def parse_routes(text: str, path: str = "<routes>") -> Routes:
    """Parse and check the YAML text of a routes file; ``RoutesError`` names line and key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RoutesError(f"{path}:{where} not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RoutesError(f"{path}: line 1: the file must be a mapping with a 'rules' list")
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        parsed = RoutesFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = [p for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper())]
            key = ".".join(str(p) for p in loc) or "(top level)"
            at = _line_of(loc, lines)
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{path}: line {at}: {key}: {message}")
        raise RoutesError("\n".join(problems)) from None
    names = [r.name for r in parsed.rules]
    for index, name in enumerate(names):
        if name in names[:index]:
            at = _line_of(["rules", index, "name"], lines)
            raise RoutesError(f"{path}: line {at}: rules.{index}.name: {name!r} is used twice")
    return Routes(tuple(parsed.rules), path)


def load_routes(path: str | None) -> Routes | None:
    """The routes of ``ROUTES_FILE``, or None when it is not set (the default routing)."""
    if not path:
        return None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"ROUTES_FILE: cannot read {path}: {exc.strerror}") from None
    return parse_routes(text, path)
