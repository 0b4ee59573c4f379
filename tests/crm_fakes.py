"""One fake HTTP server playing three CRMs the way their documentation describes them.

- Attio ``/attio/v2``: Bearer auth; ``POST objects/people/records/query`` (filter on
  ``email_addresses``), ``PUT objects/people/records?matching_attribute=email_addresses``
  (assert: find or create, with attribute values: an unknown slug is 400 ``value_not_found``
  "Cannot find attribute with slug/ID", a value of the wrong type 400 ``validation_type``),
  ``GET``/``POST objects/people/attributes`` (the create body's eight required keys checked;
  a taken slug is 400 ``slug_conflict``: Attio's code for it is not documented), ``POST
  notes`` / ``GET notes`` (``limit`` ≤ 50, ``offset``), ``GET self``; ``attio_limited``
  answers 429 with an HTTP-date ``Retry-After`` and Attio's error body.
- Pipedrive ``/pipedrive/api/v1``: the ``x-api-token`` header; ``GET persons/search``
  (exact email), ``POST persons``, ``PUT persons/{id}`` (custom fields by their 40-character
  key; an unknown key is refused here, which Pipedrive does not document), ``GET``/``POST
  personFields`` (``start``/``limit`` ≤ 500), ``POST notes``, ``GET notes?person_id``
  (pagination in ``additional_data``), ``GET users/me``; every answer in ``{"success",
  "data"}``.
- Salesforce ``/salesforce``: ``POST services/oauth2/token`` (client credentials; tokens
  can be revoked with ``revoke_tokens``), ``GET services/data/v60.0/query?q=`` for the SOQL
  this service sends (Contact/Lead by Email, Note by ParentId and Title), ``POST
  sobjects/{Lead,Contact,Note}`` (ids with the real key prefixes 00Q, 003, 002), ``GET
  sobjects/{Contact,Lead}/describe`` (``keyPrefix`` and the fields this user may see),
  ``PATCH sobjects/{Contact,Lead}/{id}`` (204; 400 ``INVALID_FIELD`` for a field it cannot
  see), ``POST tooling/sobjects/CustomField`` (a created field stays hidden, as without
  field-level security, until ``grant_salesforce_fields``; a second create is 400
  ``DUPLICATE_DEVELOPER_NAME``), ``GET limits``; 401 ``INVALID_SESSION_ID`` with a stale token.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from loopback import LoopbackServer
from werkzeug.wrappers import Request, Response

from worker.integrations.attio import attio_slug
from worker.integrations.pipedrive import pipedrive_field_name
from worker.integrations.salesforce import salesforce_field_name
from worker.journey_fields import JOURNEY_FIELDS, JourneyField

ATTIO_KEY = "attio-test-key-0123"
PIPEDRIVE_TOKEN = "pipedrive-test-token-0123"
SALESFORCE_ID = "sf-client-id"
SALESFORCE_SECRET = "sf-client-secret-0123"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _attio_error(code: str, message: str, status: int = 400) -> Response:
    kind = "invalid_request_error" if status == 400 else "not_found_error"
    return _json({"status_code": status, "type": kind, "code": code, "message": message}, status)


def _sf_error(code: str, message: str, status: int = 400) -> Response:
    return _json([{"message": message, "errorCode": code, "fields": []}], status)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_timestamp(value: Any) -> bool:
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


ATTIO_TYPES = {
    "text", "number", "checkbox", "currency", "date", "timestamp", "rating", "status",
    "select", "record-reference", "actor-reference", "location", "domain", "email-address",
    "phone-number", "personal-name",
}  # fmt: skip
# Attio's journey field kinds, as attio-setup creates them.
ATTIO_KINDS = {"text": "text", "number": "number", "datetime": "timestamp", "boolean": "checkbox"}
PIPEDRIVE_TYPES = {
    "varchar", "varchar_auto", "text", "double", "monetary", "date", "set", "enum", "user",
    "org", "people", "phone", "time", "timerange", "daterange", "address",
}  # fmt: skip
PIPEDRIVE_KINDS = {"text": "varchar", "number": "double", "datetime": "date", "boolean": "varchar"}
SF_PREFIXES = {"Contact": "003", "Lead": "00Q", "Note": "002"}
SF_KINDS = {"text": "string", "number": "double", "datetime": "datetime", "boolean": "boolean"}
SF_METADATA_TYPES = {"Text": "string", "Number": "double", "DateTime": "datetime",
                     "Checkbox": "boolean", "Url": "url"}  # fmt: skip


class CrmFake(LoopbackServer):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(5001)
        self.people: dict[str, dict[str, Any]] = {}  # system -> {email: id}
        self.notes: dict[str, list[dict[str, Any]]] = {"attio": [], "pipedrive": [], "sf": []}
        self.attio_people: dict[str, str] = {}
        self.pipedrive_people: dict[str, int] = {}
        self.sf_records: dict[str, dict[str, Any]] = {}  # id -> {"type", "Email", ...}
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.attio_limited = 0
        self.requests: list[tuple[str, str]] = []
        # Schemas: what each CRM has before anyone adds a field.
        self.attio_attributes: dict[str, dict[str, Any]] = {
            slug: self._attio_attribute(slug, title, kind, system=True)
            for slug, title, kind in (
                ("email_addresses", "Email addresses", "email-address"),
                ("name", "Name", "personal-name"),
            )
        }
        self.attio_values: dict[str, dict[str, Any]] = {}  # record id -> {slug: value}
        self.pipedrive_fields: list[dict[str, Any]] = [
            {"id": i, "key": key, "name": name, "field_type": kind, "edit_flag": False}
            for i, (key, name, kind) in enumerate(
                (("name", "Name", "varchar"), ("email", "Email", "varchar"),
                 ("phone", "Phone", "phone"), ("org_id", "Organization", "org")),
                start=1,
            )
        ]  # fmt: skip
        self.pipedrive_values: dict[int, dict[str, Any]] = {}  # person id -> {key: value}
        self.sf_fields: dict[str, dict[str, dict[str, Any]]] = {
            sobject: {
                name.lower(): {"name": name, "type": kind, "updateable": name != "Id",
                               "label": name, "custom": False}
                for name, kind in fields
            }
            for sobject, fields in (
                ("Contact", [("Id", "id"), ("Email", "email"), ("FirstName", "string"),
                             ("LastName", "string")]),
                ("Lead", [("Id", "id"), ("Email", "email"), ("FirstName", "string"),
                          ("LastName", "string"), ("Company", "string"),
                          ("LeadSource", "picklist")]),
            )
        }  # fmt: skip
        # "Contact.VE_X__c": created, but no field-level security for the API user yet.
        self.sf_hidden: set[str] = set()

    def env(self) -> dict[str, str]:
        return {
            "ATTIO_API_KEY": ATTIO_KEY,
            "ATTIO_BASE_URL": f"{self.url}/attio",
            "PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
            "PIPEDRIVE_BASE_URL": f"{self.url}/pipedrive",
            "SALESFORCE_INSTANCE_URL": f"{self.url}/salesforce",
            "SALESFORCE_CLIENT_ID": SALESFORCE_ID,
            "SALESFORCE_CLIENT_SECRET": SALESFORCE_SECRET,
        }

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def notes_with(self, system: str, text: str) -> list[dict[str, Any]]:
        with self._lock:
            return [n for n in self.notes[system] if text in json.dumps(n)]

    def _id(self) -> int:
        return next(self._ids)

    # Schemas, as the set-up commands (or an admin) leave them --------------------------------

    @staticmethod
    def _attio_attribute(slug: str, title: str, kind: str, system: bool = False) -> dict[str, Any]:
        return {
            "id": {"workspace_id": "w", "object_id": "people", "attribute_id": f"att-{slug}"},
            "title": title,
            "description": None,
            "api_slug": slug,
            "type": kind,
            "is_system_attribute": system,
            "is_writable": True,
            "is_required": False,
            "is_unique": slug == "email_addresses",
            "is_multiselect": slug == "email_addresses",
            "is_default_value_enabled": False,
            "is_archived": False,
            "default_value": None,
            "relationship": None,
            "config": {},
        }

    def _add_pipedrive_field(self, name: str, kind: str) -> dict[str, Any]:
        key = hashlib.sha1(f"{name}-{self._id()}".encode()).hexdigest()  # 40 characters
        found = {
            "id": self._id(),
            "key": key,
            "name": name,
            "field_type": kind,
            "edit_flag": True,
            "active_flag": True,
        }
        self.pipedrive_fields.append(found)
        return found

    def _add_sf_field(self, sobject: str, name: str, kind: str, label: str) -> None:
        self.sf_fields[sobject][name.lower()] = {
            "name": name,
            "type": kind,
            "updateable": True,
            "label": label,
            "custom": True,
        }

    def define_journey_fields(
        self,
        fields: Iterable[JourneyField] = JOURNEY_FIELDS,
        *,
        crms: Iterable[str] = ("attio", "pipedrive", "salesforce"),
    ) -> None:
        """As if ``attio-setup``, ``pipedrive-setup`` and ``salesforce-setup`` had been run
        (and Salesforce's field-level security granted)."""
        wanted = set(crms)
        with self._lock:
            for f in fields:
                if "attio" in wanted:
                    slug = attio_slug(f)
                    self.attio_attributes[slug] = self._attio_attribute(
                        slug, f"VE {f.label}", ATTIO_KINDS[f.kind]
                    )
                if "pipedrive" in wanted:
                    self._add_pipedrive_field(pipedrive_field_name(f), PIPEDRIVE_KINDS[f.kind])
                if "salesforce" in wanted:
                    for sobject in ("Contact", "Lead"):
                        self._add_sf_field(
                            sobject, salesforce_field_name(f), SF_KINDS[f.kind], f"VE {f.label}"
                        )

    def grant_salesforce_fields(self) -> None:
        """The admin grants field-level security on every field created through the API."""
        with self._lock:
            self.sf_hidden.clear()

    def attio_person(self, email_: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.attio_values.get(self.attio_people.get(email_.lower(), ""), {}))

    def pipedrive_person(self, email_: str) -> dict[str, Any]:
        """The person's custom field values by field name."""
        with self._lock:
            values = self.pipedrive_values.get(self.pipedrive_people.get(email_.lower(), -1), {})
            names = {f["key"]: f["name"] for f in self.pipedrive_fields}
            return {names.get(key, key): value for key, value in values.items()}

    def sf_person(self, email_: str) -> dict[str, Any]:
        with self._lock:
            for record in self.sf_records.values():
                if str(record.get("Email", "")).lower() == email_.lower():
                    return dict(record)
            return {}

    # Serving --------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.requests.append((request.method, request.full_path))
            if request.path.startswith("/attio/v2/"):
                response = self._attio(request, request.path.removeprefix("/attio/v2/"))
            elif request.path.startswith("/pipedrive/api/v1/"):
                response = self._pipedrive(request, request.path.removeprefix("/pipedrive/api/v1/"))
            elif request.path.startswith("/salesforce/"):
                response = self._salesforce(request, request.path.removeprefix("/salesforce/"))
            else:
                response = Response("not found", status=404)
        return response(environ, start_response)

    # Attio ----------------------------------------------------------------------------------

    def _attio(self, request: Request, route: str) -> Response:
        if request.headers.get("Authorization") != f"Bearer {ATTIO_KEY}":
            return _json(
                {
                    "status_code": 401,
                    "type": "auth_error",
                    "code": "unauthorized",
                    "message": "Invalid API key",
                },
                401,
            )
        if self.attio_limited > 0:
            self.attio_limited -= 1
            when = email.utils.formatdate(time.time() + 1, usegmt=True)
            return _json(
                {
                    "status_code": 429,
                    "type": "rate_limit_error",
                    "code": "rate_limit_exceeded",
                    "message": "Rate limit exceeded",
                },
                429,
                {"Retry-After": when},
            )
        body = request.get_json(silent=True) or {}
        if route == "self":
            return _json({"active": True, "workspace_name": "Acme"})
        if route == "objects/people/records/query" and request.method == "POST":
            email_ = (body.get("filter") or {}).get("email_addresses")
            rid = self.attio_people.get(str(email_).lower())
            data = [{"id": {"workspace_id": "w", "object_id": "people", "record_id": rid}}]
            return _json({"data": data if rid else []})
        if route == "objects/people/records" and request.method == "PUT":
            if request.args.get("matching_attribute") != "email_addresses":
                return _json({"status_code": 400, "message": "matching_attribute required"}, 400)
            values = dict(body["data"]["values"])
            (email_,) = values.pop("email_addresses")
            values.pop("name", None)
            refused = self._attio_refused(values)
            if refused is not None:
                return refused  # nothing is written
            rid = self.attio_people.setdefault(email_.lower(), f"rec-{self._id()}")
            self.attio_values.setdefault(rid, {}).update(values)
            return _json(
                {"data": {"id": {"workspace_id": "w", "object_id": "people", "record_id": rid}}}
            )
        if route == "objects/people/attributes" and request.method == "GET":
            shown = [
                a
                for a in self.attio_attributes.values()
                if request.args.get("show_archived") == "true" or not a["is_archived"]
            ]
            return _json({"data": shown})
        if route == "objects/people/attributes" and request.method == "POST":
            return self._attio_create_attribute(body)
        if route == "notes" and request.method == "POST":
            data = body["data"]
            if data.get("format") not in ("plaintext", "markdown") or not data.get("title"):
                return _json({"status_code": 400, "message": "format and title required"}, 400)
            note = {
                "id": {"workspace_id": "w", "note_id": f"note-{self._id()}"},
                "parent_object": data["parent_object"],
                "parent_record_id": data["parent_record_id"],
                "title": data["title"],
                "content_markdown": data["content"],
                # Attio renders the Markdown; the plain text keeps a code span's text.
                "content_plaintext": re.sub(r"[*_`]", "", data["content"]),
            }
            self.notes["attio"].append(note)
            return _json({"data": note})
        if route == "notes" and request.method == "GET":
            limit = int(request.args.get("limit", 10))
            if limit > 50:
                return _json({"status_code": 400, "message": "limit must be ≤ 50"}, 400)
            offset = int(request.args.get("offset", 0))
            mine = [
                n
                for n in self.notes["attio"]
                if n["parent_record_id"] == request.args.get("parent_record_id")
            ]
            return _json({"data": mine[offset : offset + limit]})
        return _json({"status_code": 404, "message": "Not found"}, 404)

    def _attio_refused(self, values: dict[str, Any]) -> Response | None:
        """Attio's 400 for a value it cannot write: an unknown slug, or the wrong type."""
        for slug, value in values.items():
            attribute = self.attio_attributes.get(slug)
            if attribute is None or attribute["is_archived"]:
                return _attio_error(
                    "value_not_found", f'Cannot find attribute with slug/ID "{slug}".'
                )
            raw = value[0]["value"] if isinstance(value, list) and value else value
            fits = {
                "text": isinstance(raw, str),
                "number": _is_number(raw),
                "checkbox": isinstance(raw, bool) or raw in ("true", "false"),
                "timestamp": isinstance(raw, str) and _is_timestamp(raw),
            }.get(attribute["type"], True)
            if not fits:
                return _attio_error(
                    "validation_type",
                    f'Invalid value for attribute "{slug}" ({attribute["type"]}).',
                )
        return None

    def _attio_create_attribute(self, body: dict[str, Any]) -> Response:
        data = body.get("data")
        required = ("title", "description", "api_slug", "type", "is_required", "is_unique",
                    "is_multiselect", "config")  # fmt: skip
        if not isinstance(data, dict) or any(k not in data for k in required):
            return _attio_error("validation_type", "Body payload validation error: data.* required")
        flags_ok = all(isinstance(data[k], bool) for k in required[4:7])
        if (
            data["type"] not in ATTIO_TYPES
            or not flags_ok
            or not isinstance(data["config"], dict)
            or not re.fullmatch(r"[a-z][a-z0-9_]*", str(data["api_slug"]))
        ):
            return _attio_error("validation_type", "Body payload validation error")
        slug = data["api_slug"]
        if slug in self.attio_attributes:
            return _attio_error("slug_conflict", f'An attribute with slug "{slug}" already exists.')
        attribute = self._attio_attribute(slug, data["title"], data["type"])
        attribute.update(description=data["description"], is_multiselect=data["is_multiselect"])
        self.attio_attributes[slug] = attribute
        return _json({"data": attribute})

    # Pipedrive -------------------------------------------------------------------------------

    def _pipedrive(self, request: Request, route: str) -> Response:
        if request.headers.get("x-api-token") != PIPEDRIVE_TOKEN:
            return _json({"success": False, "error": "unauthorized access", "errorCode": 401}, 401)
        body = request.get_json(silent=True) or {}
        if route == "users/me":
            return _json({"success": True, "data": {"id": 1, "company_domain": "acme"}})
        if route == "persons/search":
            if request.args.get("exact_match") != "true" or request.args.get("fields") != "email":
                return _json({"success": True, "data": {"items": []}})
            pid = self.pipedrive_people.get(request.args.get("term", "").lower())
            items = [{"result_score": 1, "item": {"id": pid, "type": "person"}}] if pid else []
            return _json({"success": True, "data": {"items": items}})
        if route == "persons" and request.method == "POST":
            email_ = body["email"][0]["value"].lower()
            pid = self.pipedrive_people.setdefault(email_, self._id())
            return _json({"success": True, "data": {"id": pid, "name": body.get("name")}}, 201)
        if route.startswith("persons/") and request.method == "PUT":
            return self._pipedrive_update_person(route.removeprefix("persons/"), body)
        if route == "personFields" and request.method == "GET":
            start, limit = int(request.args.get("start", 0)), int(request.args.get("limit", 100))
            if limit > 500:
                return _json({"success": False, "error": "limit must be 500 or less"}, 400)
            page = self.pipedrive_fields[start : start + limit]
            more = start + limit < len(self.pipedrive_fields)
            pagination = {"start": start, "limit": limit, "more_items_in_collection": more}
            if more:
                pagination["next_start"] = start + limit
            return _json(
                {"success": True, "data": page, "additional_data": {"pagination": pagination}}
            )
        if route == "personFields" and request.method == "POST":
            if not body.get("name") or body.get("field_type") not in PIPEDRIVE_TYPES:
                return _json(
                    {"success": False, "error": "name and a valid field_type required"}, 400
                )
            return _json(
                {
                    "success": True,
                    "data": self._add_pipedrive_field(body["name"], body["field_type"]),
                }
            )
        if route == "notes" and request.method == "POST":
            if not body.get("person_id") or not body.get("content"):
                return _json({"success": False, "error": "content and person_id required"}, 400)
            note = {"id": self._id(), "content": body["content"], "person_id": body["person_id"]}
            self.notes["pipedrive"].append(note)
            return _json({"success": True, "data": note}, 201)
        if route == "notes" and request.method == "GET":
            start, limit = int(request.args.get("start", 0)), int(request.args.get("limit", 100))
            mine = [
                n
                for n in reversed(self.notes["pipedrive"])
                if str(n["person_id"]) == request.args.get("person_id")
            ]
            page = mine[start : start + limit]
            more = start + limit < len(mine)
            return _json(
                {
                    "success": True,
                    "data": page or None,
                    "additional_data": {
                        "pagination": {
                            "start": start,
                            "limit": limit,
                            "more_items_in_collection": more,
                            "next_start": start + limit,
                        }
                    },
                }
            )
        return _json({"success": False, "error": "Unknown method"}, 404)

    def _pipedrive_update_person(self, ident: str, body: dict[str, Any]) -> Response:
        if not ident.isdigit() or int(ident) not in self.pipedrive_people.values():
            return _json({"success": False, "error": "Person not found", "errorCode": 404}, 404)
        fields = {f["key"]: f for f in self.pipedrive_fields}
        for key, value in body.items():
            found = fields.get(key)
            if found is None:
                return _json({"success": False, "error": f"Unknown field: {key}"}, 400)
            kind = found["field_type"]
            fits = {
                "double": _is_number(value),
                "date": isinstance(value, str) and bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)),
                "varchar": isinstance(value, str) and len(value) <= 255,
            }.get(kind, True)
            if not fits:
                return _json({"success": False, "error": f"Invalid value for {kind} field"}, 400)
        self.pipedrive_values.setdefault(int(ident), {}).update(body)
        return _json({"success": True, "data": {"id": int(ident), **body}})

    # Salesforce -------------------------------------------------------------------------------

    def _salesforce(self, request: Request, route: str) -> Response:
        if route == "services/oauth2/token":
            self.token_requests += 1
            form = request.form
            if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
                "client_credentials",
                SALESFORCE_ID,
                SALESFORCE_SECRET,
            ):
                return _json(
                    {"error": "invalid_client", "error_description": "invalid client credentials"},
                    400,
                )
            token = f"00D-token-{self._id()}"
            self.tokens.add(token)
            return _json(
                {
                    "access_token": token,
                    "instance_url": self.url + "/salesforce",
                    "token_type": "Bearer",
                    "issued_at": str(int(time.time() * 1000)),
                }
            )
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if auth not in self.tokens:
            return _json(
                [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], 401
            )
        route = route.removeprefix("services/data/v60.0/")
        if route == "limits":
            return _json({"DailyApiRequests": {"Max": 15000, "Remaining": 14990}})
        if route == "query":
            return _json(self._soql(request.args.get("q", "")))
        describe = re.fullmatch(r"sobjects/(\w+)/describe/?", route)
        if describe and request.method == "GET":
            return self._sf_describe(describe.group(1))
        record = re.fullmatch(r"sobjects/(\w+)/(\w+)", route)
        if record and request.method == "PATCH":
            return self._sf_update(record.group(1), record.group(2), request.get_json() or {})
        if route == "tooling/sobjects/CustomField" and request.method == "POST":
            return self._sf_create_field(request.get_json(silent=True) or {})
        if route.startswith("sobjects/") and request.method == "POST":
            kind = route.removeprefix("sobjects/")
            body = request.get_json(silent=True) or {}
            if kind == "Lead" and not (body.get("LastName") and body.get("Company")):
                return _json(
                    [
                        {
                            "message": "Required fields are missing: [LastName, Company]",
                            "errorCode": "REQUIRED_FIELD_MISSING",
                        }
                    ],
                    400,
                )
            if kind == "Note" and (len(body.get("Title", "")) > 80 or not body.get("ParentId")):
                return _json(
                    [{"message": "Title: data value too large", "errorCode": "STRING_TOO_LONG"}],
                    400,
                )
            rid = f"{SF_PREFIXES.get(kind, kind[:3])}{self._id():012d}"
            self.sf_records[rid] = {"type": kind, **body}
            if kind == "Note":
                self.notes["sf"].append({"Id": rid, **body})
            return _json({"id": rid, "success": True, "errors": []}, 201)
        return _json(
            [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}], 404
        )

    def _sf_visible(self, sobject: str) -> dict[str, dict[str, Any]]:
        return {
            key: f
            for key, f in self.sf_fields.get(sobject, {}).items()
            if f"{sobject}.{f['name']}".lower() not in self.sf_hidden
        }

    def _sf_describe(self, sobject: str) -> Response:
        if sobject not in self.sf_fields:
            return _sf_error("NOT_FOUND", f"The requested resource does not exist: {sobject}", 404)
        fields = list(self._sf_visible(sobject).values())
        return _json(
            {"name": sobject, "keyPrefix": SF_PREFIXES[sobject], "updateable": True,
             "fields": fields}
        )  # fmt: skip

    def _sf_update(self, sobject: str, rid: str, body: dict[str, Any]) -> Response:
        found = self.sf_records.get(rid)
        if sobject not in self.sf_fields or found is None or found["type"] != sobject:
            return _sf_error("NOT_FOUND", "The requested resource does not exist", 404)
        visible = self._sf_visible(sobject)
        for name, value in body.items():
            field_ = visible.get(name.lower())
            if field_ is None:
                return _sf_error(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}"
                )
            if not field_["updateable"]:
                return _sf_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {name}."
                )
            fits = {
                "double": _is_number(value),
                "boolean": isinstance(value, bool),
                "datetime": isinstance(value, str) and _is_timestamp(value),
                "string": isinstance(value, str) and len(value) <= 255,
            }.get(field_["type"], True)
            if not fits:
                return _sf_error("JSON_PARSER_ERROR", f"Cannot deserialize value for {name}")
        found.update(body)
        return Response(status=204)

    def _sf_create_field(self, body: dict[str, Any]) -> Response:
        full_name, metadata = str(body.get("FullName", "")), body.get("Metadata")
        match = re.fullmatch(r"(Contact|Lead)\.([A-Za-z][A-Za-z0-9_]*__c)", full_name)
        if not match or not isinstance(metadata, dict) or not metadata.get("label"):
            return _sf_error("FIELD_INTEGRITY_EXCEPTION", "FullName and Metadata.label required")
        kind = SF_METADATA_TYPES.get(str(metadata.get("type")))
        missing = {
            "Text": "length" not in metadata,
            "Number": "precision" not in metadata or "scale" not in metadata,
            "Checkbox": "defaultValue" not in metadata,
        }.get(str(metadata.get("type")), False)
        if kind is None or missing:
            return _sf_error("FIELD_INTEGRITY_EXCEPTION", "Invalid field type or attributes")
        sobject, name = match.groups()
        if name.lower() in self.sf_fields[sobject]:
            return _sf_error(
                "DUPLICATE_DEVELOPER_NAME",
                "duplicate value found: <unknown> duplicates value on record with id: <unknown>",
            )
        self._add_sf_field(sobject, name, kind, metadata["label"])
        # No profile may see a field created through the API until the admin grants it.
        self.sf_hidden.add(f"{sobject}.{name}".lower())
        return _json({"id": f"00N{self._id():012d}", "success": True, "errors": []}, 201)

    def _soql(self, soql: str) -> dict[str, Any]:
        def literal(name: str) -> str | None:
            match = re.search(rf"{name} = '((?:[^'\\]|\\.)*)'", soql)
            return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None

        kind = re.search(r"FROM (\w+)", soql)
        sobject = kind.group(1) if kind else ""
        if sobject in ("Contact", "Lead"):
            wanted = (literal("Email") or "").lower()
            found = [
                {"Id": rid}
                for rid, r in self.sf_records.items()
                if r["type"] == sobject and str(r.get("Email", "")).lower() == wanted
            ]
        elif sobject == "Note":
            parent, title = literal("ParentId"), literal("Title")
            found = [
                {"Id": n["Id"], "Title": n["Title"]}
                for n in self.notes["sf"]
                if n["ParentId"] == parent and n["Title"] == title
            ]
        else:
            found = []
        found = found[:1] if "LIMIT 1" in soql else found
        return {"totalSize": len(found), "done": True, "records": found}
