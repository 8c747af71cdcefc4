"""`slurmgov api`: JSON over HTTP for portals (ColdFront, Open OnDemand, a site's own page).

Every route is under ``/api/v1``, described by the OpenAPI 3 document at
``/api/v1/openapi.json`` (built from the same table as the routes, ``OPS``). What it serves is
what the CLI reads, from the functions the site dashboard shows (`views`): budgets, usage, runs,
holds and the audit log; and for callers who may, what an admin changes with the CLI (a grant,
a transfer, a hold's release), through the same ledger calls, which write the same audit rows.

Who calls: every request carries ``Authorization: Bearer <token>``, one of

* a Slurm JWT (``scontrol token``, auth/jwt): HS256 with the cluster's ``jwt_key``, its user
  in the ``sun`` claim, checked for its signature and ``exp``;
* a site token (``slurmgov api token issue``): HS256 with the site key this server was given
  (a file of its own, mode 0600), ``iss: slurmgov``, its user in ``sub``, with an ``exp``.

A token for user X acts as X only (never as the user this server runs as); what X may then see
or change is decided by the site's roles (`policy.authz`, as for the CLI), asked through
``Api._require``: an admin (root, or `admins` in the site file) anything; an operator grants and
transfers up to the site's per-change limit, releases holds and reads every account; an account
manager (the site file's, or Slurm's coordinator) reads their accounts and grants only where the
site allows; a user reads the accounts Slurm associates them with (on a local site, the site
file's accounts). Refusals are 403 with authz's one line; changes are audited with the role.

Failures are JSON ``{"error": "<one line>"}`` with their status: 400 bad input (naming the
field), 401 no or bad token, 403 not allowed, 404 no such thing, 409 refused by a budget or by
the state of a hold, 503 the ledger or Slurm unavailable; a bug is 500 ``internal error`` with its
traceback in the server's log only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pwd
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from slurmgov import __version__
from slurmgov.errors import (
    BudgetRefused,
    InputError,
    LedgerError,
    PermissionDenied,
    SlurmgovError,
    UnknownAccount,
)
from slurmgov.intent import run_records
from slurmgov.interface import site_dashboard, views
from slurmgov.interface.commands.runs import run_summary
from slurmgov.ledger.seed import ensure_budget
from slurmgov.ledger.store import Ledger
from slurmgov.policy import authz
from slurmgov.site import model as site_mod
from slurmgov.site import names
from slurmgov.slurm.commands import coordinator_accounts, user_accounts
from slurmgov.slurm.governor import cap_uid

log = logging.getLogger("slurmgov.api")

PREFIX = "/api/v1"
SITE_ISSUER = "slurmgov"  # the `iss` of the tokens `slurmgov api token issue` signs
MAX_BODY = 64 * 1024
MAX_LIFESPAN_S = 366 * 86400
ASSOCIATIONS_TTL_S = 60  # how long Slurm's answer on a user's accounts is taken as still true
HOLD_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,200}$")
# the API's actions, as authz names them (account None: the whole site)
ACTIONS = {"read": "usage.read", "grant": "budget.grant", "transfer": "budget.transfer", "release": "holds.release",
           "cap": "usercap.set"}


class ApiError(Exception):
    """A refusal with its HTTP status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _one_line(text: object) -> str:
    return " ".join(p.strip() for p in str(text).splitlines() if p.strip()) or "error"


# ---- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    user: str
    via: str  # "slurm": Slurm's JWT; "site": a token `slurmgov api token issue` signed


def read_key(path: Path, what: str) -> bytes:
    """A signing key file, which nobody but its owner may read (as Slurm requires of jwt_key)."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except PermissionError:
        raise PermissionDenied(f"{what} {path}: not readable by this user (run the API as its owner)") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise InputError(f"{what} {path}: readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    if not data:
        raise InputError(f"{what} {path}: empty")
    return data


def site_key(path: Path, create: bool = False) -> bytes:
    """The site key that signs site tokens, made (random, mode 0600) when ``create`` and missing."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another `token issue` made it meanwhile
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    return read_key(path, "site key")


def issue_token(key: bytes, user: str, lifespan_s: int, now: float | None = None) -> str:
    """A site token for ``user``, good for ``lifespan_s`` seconds."""
    if not names.is_user_name(user):
        raise InputError(f"--user: {user!r} is not a user name")
    if not 1 <= lifespan_s <= MAX_LIFESPAN_S:
        raise InputError(f"--lifespan: {lifespan_s} s; give 1 to {MAX_LIFESPAN_S} seconds")
    now = int(time.time() if now is None else now)
    return jwt.encode({"iss": SITE_ISSUER, "sub": user, "iat": now, "exp": now + lifespan_s}, key, algorithm="HS256")


class Tokens:
    """Checks a request's bearer token: whose it is, or ApiError 401."""

    def __init__(self, slurm_key: bytes | None, site_key: bytes | None):
        if slurm_key is None and site_key is None:
            raise InputError("api: no way to check tokens: give --slurm-conf-dir (Slurm's auth/jwt) "
                             "or a site key (`slurmgov api token issue` makes one)")
        self.slurm_key = slurm_key
        self.site_key = site_key

    def identify(self, authorization: str | None) -> Identity:
        if not authorization:
            raise ApiError(401, "no token: send Authorization: Bearer <a Slurm JWT (scontrol token) or a site token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "bad Authorization header: expected Bearer <token>")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ApiError(401, "bad token: not a JWT") from None
        site = isinstance(unverified, dict) and unverified.get("iss") == SITE_ISSUER
        key = self.site_key if site else self.slurm_key
        if key is None:
            raise ApiError(401, f"bad token: this server does not take {'site tokens' if site else 'Slurm JWTs'}")
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], issuer=SITE_ISSUER if site else None,
                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            again = "slurmgov api token issue" if site else "scontrol token"
            raise ApiError(401, f"expired token: ask for a new one ({again})") from None
        except jwt.InvalidSignatureError:
            raise ApiError(401, "bad token: its signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise ApiError(401, f"bad token: {_one_line(exc)}") from None
        user = claims.get("sub" if site else "sun")
        if not names.is_user_name(user):
            raise ApiError(401, f"bad token: no user name in its {'sub' if site else 'sun'} claim")
        return Identity(user, "site" if site else "slurm")


# ---- request values ----------------------------------------------------------------------------


def _account(value: Any, name: str = "account") -> str:
    if not names.is_name(value):
        raise ApiError(400, f"{name}: {str(value)[:80]!r} is not an account name (letters, digits, . _ -)")
    return value


def _when(value: str, name: str) -> float:
    """A time given as epoch seconds, or ISO 8601 (a date, or a date and time; UTC unless it says)."""
    try:
        ts = float(value)
    except ValueError:
        try:
            d = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(400, f"{name}: {value[:40]!r} is not a time (2026-11-01, 2026-11-01T12:00:00Z "
                                f"or epoch seconds)") from None
        ts = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    if not math.isfinite(ts):
        raise ApiError(400, f"{name}: {value[:40]!r} is not a time")
    return ts


def _int(value: str, name: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"{name}: {value[:40]!r} is not a whole number") from None
    if not lo <= n <= hi:
        raise ApiError(400, f"{name}: {n}; give {lo} to {hi}")
    return n


def _hours(value: Any, name: str = "gpu_hours") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ApiError(400, f"{name}: {json.dumps(value)[:40]} is not a number of GPU-hours >= 0")
    return float(value)


def _text(value: Any, name: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(400, f"{name}: {'give' if required else 'must be'} a string"
                            f"{' (it goes on the audit trail)' if name == 'reason' else ''}")
    if len(value) > 1000:
        raise ApiError(400, f"{name}: {len(value)} characters; at most 1000")
    return value


# ---- the routes' table (routes and OpenAPI document both come from it) -------------------------


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    schema: dict
    description: str
    required: bool = False


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # under PREFIX
    name: str  # the operationId, and Api's method
    summary: str
    response: dict  # the 200 response's schema
    params: tuple[Param, ...] = ()
    body: dict | None = None  # the JSON body's schema (POST)
    public: bool = False  # no token needed
    errors: tuple[int, ...] = (400, 401, 403)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str) -> dict:
    return {"type": "array", "items": _ref(name)}


_ACCOUNT_P = Param("account", "path", {"type": "string", "pattern": names.PATTERN}, "An account name.", True)
_ACCOUNT_Q = Param("account", "query", {"type": "string", "pattern": names.PATTERN},
                   "Only this account (default: every account the caller may read).")
_FROM = Param("from", "query", {"type": "string"},
              "Charges that ended at or after: ISO 8601 (UTC unless it says) or epoch seconds.")
_TO = Param("to", "query", {"type": "string"}, "Charges that ended before: ISO 8601 or epoch seconds.")
_NUM = {"type": "number"}
_NUM_N = {"type": "number", "nullable": True}
_STR = {"type": "string"}
_STR_N = {"type": "string", "nullable": True}
_INT_N = {"type": "integer", "nullable": True}

SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Whoami": {"type": "object", "required": ["user", "via", "admin", "role"], "properties": {
        "user": _STR, "via": {"type": "string", "enum": ["slurm", "site"]}, "admin": {"type": "boolean"},
        "role": {"type": "string", "enum": [authz.ADMIN, authz.OPERATOR, authz.MANAGER, authz.USER],
                 "description": "The caller's highest role on the site."},
        "accounts": {"type": "array", "items": _STR, "nullable": True,
                     "description": "The accounts the caller may read (null: every account)."}}},
    "Budget": {"type": "object", "required": ["account", "budget_h", "charged_h", "held_h", "available_h"],
               "properties": {
                   "account": _STR, "period": _STR, "budget_h": _NUM, "charged_h": _NUM, "held_h": _NUM,
                   "available_h": _NUM, "carried_h": _NUM, "expires": _STR_N, "used_pct": _NUM,
                   "burn_h_per_day": _NUM, "runs_out": _STR_N, "alert": _STR_N}},
    "UsageRow": {"type": "object", "required": ["key", "charged_h"], "properties": {
        "key": {"type": "string", "nullable": True, "description": "The account, workflow, user, step or GPU type."},
        "charges": {"type": "integer"}, "gpu_seconds": _NUM, "charged_h": _NUM, "prompt_tokens": _INT_N,
        "completion_tokens": _INT_N, "tokens": _INT_N, "gpu_s_per_1k_tokens": _NUM_N}},
    "Run": {"type": "object", "required": ["run_id", "account", "state"], "properties": {
        "run_id": _STR, "workflow": _STR_N, "account": _STR_N, "user": _STR_N, "status": _STR_N, "state": _STR,
        "executor": _STR, "started": _NUM_N, "ended": _NUM_N, "steps": {"type": "integer"},
        "steps_ok": {"type": "integer"}, "cost_h": _NUM_N, "held_gpu_s": _NUM, "idle_gpu_s": _NUM,
        "nodes": {"type": "array", "items": _STR}, "hold_key": _STR_N, "tokens": _INT_N,
        "gpu_s_per_1k_tokens": _NUM_N}},
    "RunDetail": {"allOf": [_ref("Run"), {"type": "object", "properties": {
        "hold_state": _STR_N, "held_h": _NUM, "charged_h": _NUM_N, "worst_case_h": _NUM_N,
        "step_status": {"type": "object", "additionalProperties": {"type": "object"}}}}]},
    "Hold": {"type": "object", "required": ["hold_key", "account", "held_h"], "properties": {
        "hold_key": _STR, "account": _STR, "workflow": _STR, "user": _STR_N, "run_id": _STR_N, "amount_h": _NUM,
        "held_h": _NUM, "created_at": _NUM, "lease_until": _NUM_N, "age_s": _NUM}},
    "AuditEntry": {"type": "object", "required": ["seq", "actor", "account", "action"], "properties": {
        "seq": {"type": "integer"}, "at": _STR, "actor": _STR, "account": _STR, "action": _STR,
        "old_budget_h": _NUM_N, "new_budget_h": _NUM, "old_period": _STR_N, "new_period": _STR, "reason": _STR,
        "terms": _STR_N, "role": {"type": "string", "nullable": True,
                                  "description": "The role the change was made under (admin, operator, manager)."}}},
    "Grant": {"type": "object", "required": ["gpu_hours"], "additionalProperties": False, "properties": {
        "gpu_hours": {"type": "number", "minimum": 0}, "reason": _STR}},
    "Transfer": {"type": "object", "required": ["source", "dest", "gpu_hours"], "additionalProperties": False,
                 "properties": {"source": _STR, "dest": _STR, "gpu_hours": {"type": "number", "minimum": 0},
                                "reason": _STR}},
    "Release": {"type": "object", "required": ["reason"], "additionalProperties": False,
                "properties": {"reason": {"type": "string", "minLength": 1}}},
    "UserCap": {"type": "object", "required": ["account", "user", "cap_h"], "properties": {
        "account": _STR, "user": _STR, "period": _STR_N, "cap_h": _NUM_N, "charged_h": _NUM_N, "held_h": _NUM_N,
        "available_h": _NUM_N}, "description": "A user's cap in an account this period (cap_h null: none)."},
    "CapChange": {"type": "object", "required": ["gpu_hours"], "additionalProperties": False, "properties": {
        "gpu_hours": {"type": "number", "minimum": 0, "nullable": True,
                      "description": "The most the user may spend of the account's budget per period; null removes the cap."},
        "reason": _STR}},
    "Released": {"type": "object", "required": ["hold_key", "account", "state"], "properties": {
        "hold_key": _STR, "account": _STR, "state": _STR, "released_h": _NUM}},
}

OPS: tuple[Op, ...] = (
    Op("GET", "/openapi.json", "openapi", "This document.", {"type": "object"}, public=True, errors=()),
    Op("GET", "/whoami", "whoami", "Who the token says the caller is, and which accounts they may read.",
       _ref("Whoami"), errors=(401,)),
    Op("GET", "/budgets", "budgets", "Every readable account's budget this period, with its forecast.",
       _list("Budget"), errors=(401,)),
    Op("GET", "/budgets/{account}", "budget", "One account's budget this period, with its forecast.",
       _ref("Budget"), (_ACCOUNT_P,), errors=(400, 401, 403, 404)),
    Op("GET", "/usage", "usage", "Charged GPU time, grouped by account, workflow, user, step or GPU type.",
       _list("UsageRow"), (Param("by", "query", {"type": "string", "enum": list(views.USAGE_BY), "default": "account"},
                                 "What to group by."), _ACCOUNT_Q, _FROM, _TO)),
    Op("GET", "/runs", "runs", "The newest workflow runs: the caller's own and those of readable accounts.",
       _list("Run"),
       (_ACCOUNT_Q, Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 30},
                          "How many runs."))),
    Op("GET", "/runs/{run_id}", "run", "One run: its summary, its hold and charge, each step's state.",
       _ref("RunDetail"), (Param("run_id", "path", {"type": "string"}, "A run id.", True),),
       errors=(400, 401, 403, 404)),
    Op("GET", "/holds", "holds", "Open holds on readable accounts: what each still reserves, whose, its lease.",
       _list("Hold"), (_ACCOUNT_Q,)),
    Op("GET", "/audit", "audit", "Every budget change of readable accounts: who, when, what and why.",
       _list("AuditEntry"), (_ACCOUNT_Q,)),
    Op("GET", "/site", "site_state", "What the site dashboard shows (admins, operators): every account with its burn-down, "
       "recent runs, waste, placement and free GPU slots per leaf switch.", {"type": "object"}, errors=(401, 403)),
    Op("POST", "/budgets/{account}/grant", "grant", "Add GPU-hours to an account's standing budget (admins; operators "
       "and, where the site allows, the account's managers up to their limit).",
       _ref("Budget"), (_ACCOUNT_P,), body=_ref("Grant"), errors=(400, 401, 403, 404)),
    Op("POST", "/transfers", "transfer", "Move GPU-hours of budget between accounts, atomically (admins; "
       "operators and, where the site allows, a manager of both up to their limit).",
       _list("Budget"), body=_ref("Transfer"), errors=(400, 401, 403, 404, 409)),
    Op("GET", "/caps", "caps", "Per-user caps on readable accounts: each user's cap, charged and held this period.",
       _list("UserCap"), (_ACCOUNT_Q,)),
    Op("POST", "/budgets/{account}/caps/{user}", "set_cap", "Set or remove a user's cap in an account (admins and "
       "the account's managers), as `slurmgov budget user-cap set|remove`.", _ref("UserCap"),
       (_ACCOUNT_P, Param("user", "path", {"type": "string", "pattern": names.USER_PATTERN}, "A user name.", True)),
       body=_ref("CapChange"), errors=(400, 401, 403, 404)),
    Op("POST", "/holds/{hold_key}/release", "release",
       "Release an open hold: what it still reserves goes back to its account (admins, operators).", _ref("Released"),
       (Param("hold_key", "path", {"type": "string"}, "The hold's key, URL-encoded (run:ID, job:ID).", True),),
       body=_ref("Release"), errors=(400, 401, 403, 404, 409)),
)

_WHY = {400: "Bad input; the error names the field.", 401: "No token, or a bad or expired one.",
        403: "The caller may not read or do this.", 404: "No such account, run or hold.",
        409: "Refused: the budget does not cover it, or the hold is closed.", 503: "The ledger or Slurm is unavailable."}


def openapi() -> dict:
    """The OpenAPI 3 document of OPS."""
    paths: dict[str, dict] = {}
    for op in OPS:
        doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": op.response}}}}}
        if op.params:
            doc["parameters"] = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                                  "description": p.description, "schema": p.schema} for p in op.params]
        if op.body is not None:
            doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        for status in (*op.errors, *(() if op.public else (503,))):
            doc["responses"][str(status)] = {"description": _WHY[status],
                                             "content": {"application/json": {"schema": _ref("Error")}}}
        if op.public:
            doc["security"] = []
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = doc
    return {
        "openapi": "3.0.3",
        "info": {"title": "slurmgov", "version": __version__,
                 "description": "GPU budgets, usage, runs, holds and audit of a slurmgov site, for portals."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A Slurm JWT (scontrol token) or a site token (slurmgov api token issue)."}}},
        "security": [{"bearer": []}],
    }


# ---- the service ---------------------------------------------------------------------------------


@dataclass
class Api:
    """The routes' bodies, for one site and ledger (called from the server's threads)."""

    site: site_mod.Site
    ledger: Ledger
    tokens: Tokens
    # what Slurm says of a user: (accounts it coordinates, accounts it is associated with);
    # default: sacctmgr's answers (asked again after ASSOCIATIONS_TTL_S), or on a local site, none
    # and the site file's accounts
    slurm_view: Callable[[str], tuple[Collection[str], Collection[str]]] | None = None
    _cache: dict[str, tuple[float, authz.Caller]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- who may do what: the site's roles (policy.authz), asked here and nowhere else --------

    def _caller(self, who: Identity) -> authz.Caller:
        """The token's user as authz sees it: its uid and gid from this host's passwd (a user it
        does not know gets -1: never root, in no group), with what Slurm says of it. Never the
        user this server runs as."""
        with self._lock:
            cached = self._cache.get(who.user)
        if cached is not None and time.monotonic() - cached[0] <= ASSOCIATIONS_TTL_S:
            return cached[1]
        try:
            pw = pwd.getpwnam(who.user)
            me = authz.Caller(who.user, pw.pw_uid, pw.pw_gid)
        except KeyError:
            me = authz.Caller(who.user, -1, -1)
        if authz.role(self.site, me) != authz.ADMIN:  # an admin may do everything: Slurm need not be asked
            if self.slurm_view is not None:
                coords, assocs = self.slurm_view(who.user)
            elif self.site.executor != "slurm":
                coords, assocs = (), self.site.accounts
            else:
                coords = coordinator_accounts(who.user) if self.site.managers.slurm_coordinators else ()
                assocs = user_accounts(who.user)
            me = authz.Caller(me.name, me.uid, me.gid, frozenset(coords), frozenset(assocs))
        with self._lock:
            self._cache[who.user] = (time.monotonic(), me)
        return me

    def _role(self, who: Identity) -> str:
        return authz.role(self.site, self._caller(who))

    def _is_admin(self, who: Identity) -> bool:
        return self._role(who) == authz.ADMIN

    def _require(self, who: Identity, action: str, account: str | None, dest: str | None = None,
                 gpu_hours: float | None = None) -> str:
        """The role ``who`` may do ``action`` (one of ACTIONS) on ``account`` (None: the whole
        site; a transfer: from ``account`` to ``dest``; a grant or transfer: of ``gpu_hours``)
        under, for the audit trail; else ApiError 403 with authz's one line."""
        try:
            return authz.require(self.site, ACTIONS[action], account, dest=dest, gpu_hours=gpu_hours,
                                 who=self._caller(who))
        except PermissionDenied as exc:
            raise ApiError(403, str(exc)) from None

    def _readable(self, who: Identity, account: str | None = None) -> frozenset[str] | None:
        """What ``who`` may read: ``account`` alone (403 if not theirs), or every account
        they may (None: all)."""
        if account is not None:
            self._require(who, "read", _account(account))
            return frozenset([account])
        return authz.visible(self.site, self._caller(who))

    # ---- reading --------------------------------------------------------------------------------

    def whoami(self, who: Identity, q: dict, body: Any) -> dict:
        seen = self._readable(who)
        return {"user": who.user, "via": who.via, "admin": self._is_admin(who), "role": self._role(who),
                "accounts": None if seen is None else sorted(seen)}

    def budgets(self, who: Identity, q: dict, body: Any) -> list[dict]:
        return views.budgets(self.ledger, self._readable(who))

    def budget(self, who: Identity, q: dict, body: Any) -> dict:
        account = _account(q["account"])
        rows = views.budgets(self.ledger, self._readable(who, account))
        if not rows:
            raise ApiError(404, f"account {account}: no budget in the ledger")
        return rows[0]

    def usage(self, who: Identity, q: dict, body: Any) -> list[dict]:
        by = q.get("by", "account")
        if by not in views.USAGE_BY:
            raise ApiError(400, f"by: {by[:40]!r}; choose one of {', '.join(views.USAGE_BY)}")
        since = _when(q["from"], "from") if "from" in q else None
        until = _when(q["to"], "to") if "to" in q else None
        if since is not None and until is not None and until < since:
            raise ApiError(400, "to: before from")
        return views.usage(self.ledger, by, since, until, self._readable(who, q.get("account")))

    def runs(self, who: Identity, q: dict, body: Any) -> list[dict]:
        """As `slurmgov runs` lists them: the caller's own runs and those of the accounts it may
        read (``account``: that account's, if it may read it)."""
        limit = _int(q["limit"], "limit", 1, 500) if "limit" in q else views.RECENT_RUNS
        if "account" in q:
            return views.runs(self._readable(who, q["account"]), limit)
        return views.runs(self._readable(who), limit, user=who.user)

    def run(self, who: Identity, q: dict, body: Any) -> dict:
        run_id = q["run_id"]
        if not names.is_name(run_id):
            raise ApiError(400, f"run_id: {run_id[:80]!r} is not a run id")
        if not run_records.record_path(run_id).exists():
            raise ApiError(404, f"no run {run_id}")
        doc = run_records.read(run_id)
        account = doc.get("account")
        if doc.get("user") != who.user:  # as `slurmgov runs show`: one's own run, or a readable account's
            if not names.is_name(account):
                raise ApiError(403, f"{who.user} may not read run {run_id} of user {doc.get('user')}: "
                                    f"it names no account")
            self._require(who, "read", account)
        steps = {sid: {"status": s.get("status"), "attempts": len(s.get("attempts") or []),
                       "gpu_seconds": s.get("gpu_seconds"), "reason": s.get("reason")}
                 for sid, s in (doc.get("steps") or {}).items()}
        return {**views.run_row(doc), **run_summary(doc, self.ledger), "step_status": steps}

    def holds(self, who: Identity, q: dict, body: Any) -> list[dict]:
        return views.holds(self.ledger, self._readable(who, q.get("account")))

    def audit(self, who: Identity, q: dict, body: Any) -> list[dict]:
        return views.audit(self.ledger, self._readable(who, q.get("account")))

    def site_state(self, who: Identity, q: dict, body: Any) -> dict:
        self._require(who, "read", None)  # the whole site: admins and operators
        return site_dashboard.site_state(self.site, self.ledger, site_mod.slurmgov_home())

    # ---- changing (what `slurmgov budget grant|transfer` and `holds release` do) -------------

    def _seeded(self, account: str) -> None:
        ensure_budget(self.ledger, self.site, account)  # as the CLI's admin commands seed from the site file
        try:
            self.ledger.balance(account)
        except UnknownAccount:
            raise ApiError(404, f"account {account}: no budget in the ledger or the site file") from None

    def grant(self, who: Identity, q: dict, body: dict) -> dict:
        account = _account(q["account"])
        fields = _fields(body, {"gpu_hours": True, "reason": False})
        hours, reason = _hours(fields["gpu_hours"]), _text(fields.get("reason"), "reason")
        role = self._require(who, "grant", account, gpu_hours=hours)
        self._seeded(account)
        self.ledger.grant(account, hours, actor=who.user, reason=reason, role=role,
                          daily_limit_h=authz.daily_limit(self.site, role))
        log.info("grant: %s (%s) gave account %s %.3f GPU-h (%s)", who.user, role, account, hours, reason)
        return views.budgets(self.ledger, {account})[0]

    def transfer(self, who: Identity, q: dict, body: dict) -> list[dict]:
        fields = _fields(body, {"source": True, "dest": True, "gpu_hours": True, "reason": False})
        source, dest = _account(fields["source"], "source"), _account(fields["dest"], "dest")
        hours, reason = _hours(fields["gpu_hours"]), _text(fields.get("reason"), "reason")
        if source == dest:
            raise ApiError(400, f"dest: the same account as source ({source})")
        role = self._require(who, "transfer", source, dest=dest, gpu_hours=hours)
        for account in (source, dest):
            self._seeded(account)
        try:
            self.ledger.transfer(source, dest, hours, actor=who.user, reason=reason, role=role,
                                 daily_limit_h=authz.daily_limit(self.site, role))
        except InputError as exc:
            if self.ledger.balance(source).available_h < hours:  # the ledger's refusal: not enough there
                raise ApiError(409, _one_line(exc)) from None
            raise
        log.info("transfer: %s (%s) moved %.3f GPU-h from %s to %s (%s)", who.user, role, hours, source, dest,
                 reason)
        return views.budgets(self.ledger, {source, dest})

    def caps(self, who: Identity, q: dict, body: Any) -> list[dict]:
        seen = self._readable(who, q.get("account"))
        return [dataclasses.asdict(u) for u in self.ledger.user_balances() if seen is None or u.account in seen]

    def set_cap(self, who: Identity, q: dict, body: dict) -> dict:
        account, user = _account(q["account"]), q["user"]
        if not names.is_user_name(user):
            raise ApiError(400, f"user: {user[:80]!r} is not a user name")
        fields = _fields(body, {"gpu_hours": True, "reason": False})
        hours = None if fields["gpu_hours"] is None else _hours(fields["gpu_hours"])
        reason = _text(fields.get("reason"), "reason")
        role = self._require(who, "cap", account)
        if hours is not None:
            cap_uid(user)  # as the CLI: 400 for a cap the submit hook could never enforce
        self._seeded(account)
        self.ledger.set_user_cap(account, user, hours, actor=who.user, reason=reason, role=role)
        log.info("cap: %s (%s) set %s's cap in %s to %s (%s)", who.user, role, user, account, hours, reason)
        got = self.ledger.user_balance(account, user)
        return {"account": account, "user": user, "cap_h": None} if got is None else dataclasses.asdict(got)

    def release(self, who: Identity, q: dict, body: dict) -> dict:
        key = q["hold_key"]
        if not HOLD_KEY.fullmatch(key):
            raise ApiError(400, f"hold_key: {key[:80]!r} is not a hold key")
        reason = _text(_fields(body, {"reason": True})["reason"], "reason", required=True)
        if self._role(who) not in (authz.ADMIN, authz.OPERATOR):  # as `holds release`: refused before
            self._require(who, "release", None)  # the ledger says whether the hold exists
        before = self.ledger.find_hold(key)
        if before is None:
            raise ApiError(404, f"no hold {key} in the ledger")
        role = self._require(who, "release", before.account)
        if before.state != "open":
            raise ApiError(409, f"hold {key} is already closed ({before.state})")
        after = self.ledger.release(key, actor=who.user, reason=reason, role=role)
        log.info("release: %s (%s) released hold %s (%.3f GPU-h): %s", who.user, role, key, before.remaining_h,
                 reason)
        return {"hold_key": key, "account": after.account, "state": after.state, "released_h": before.remaining_h}


def _fields(body: Any, known: dict[str, bool]) -> dict:
    """The body's fields, each known (name -> required)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"body: a JSON object is expected, with {', '.join(known)}")
    for name in body:
        if name not in known:
            raise ApiError(400, f"{str(name)[:40]}: unknown field (expected {', '.join(known)})")
    for name, required in known.items():
        if required and name not in body:
            raise ApiError(400, f"{name}: missing")
    return body


# ---- HTTP ----------------------------------------------------------------------------------------

_STATUS: tuple[tuple[type[SlurmgovError], int], ...] = (
    (UnknownAccount, 404), (InputError, 400), (PermissionDenied, 403), (BudgetRefused, 409), (LedgerError, 503),
)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


async def _read_body(request: Request) -> Any:
    length = request.headers.get("content-length", "0")
    if length.isascii() and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"body: more than {MAX_BODY:,} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body: more than {MAX_BODY:,} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "body: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _endpoint(api: Api, op: Op, document: dict):
    allowed_q = {p.name for p in op.params if p.where == "query"}

    async def endpoint(request: Request) -> JSONResponse:
        who: Identity | None = None
        status = 200
        try:
            if op.public:
                return JSONResponse(document)
            who = api.tokens.identify(request.headers.get("authorization"))
            q: dict[str, str] = {}
            for name, value in request.query_params.multi_items():
                if name not in allowed_q:
                    raise ApiError(400, f"{name[:40]}: unknown query parameter"
                                        f"{' (expected ' + ', '.join(sorted(allowed_q)) + ')' if allowed_q else ''}")
                if name in q:
                    raise ApiError(400, f"{name}: given more than once")
                q[name] = value
            q.update(request.path_params)
            body = await _read_body(request) if op.method == "POST" else None
            result = await run_in_threadpool(getattr(api, op.name), who, q, body)
            return JSONResponse(json.loads(json.dumps(result, default=str)))
        except ApiError as exc:
            status = exc.status
            return _error(exc.status, str(exc))
        except SlurmgovError as exc:
            status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 503)
            return _error(status, str(exc))
        except Exception as exc:  # a bug: its traceback stays in the server's log
            status = 500
            log.exception("%s %s failed", op.method, op.path)
            return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")
        finally:
            log.info("%s %s %s -> %d", who.user if who else "-", request.method, request.url.path, status)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return _error(404, f"no route {request.url.path} (GET {PREFIX}/openapi.json lists them)")
    if status == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")
    return _error(status, str(getattr(exc, "detail", "")) or "error")


def dashboard_page() -> str:
    """The site dashboard's page, reading through this API: /api/v1/site with the bearer token the
    address gives it once (#token=...). The page itself carries no data, so it needs no token."""
    page = resources.files("slurmgov.interface").joinpath("site_dashboard.html").read_text()
    return page.replace("<body>", f'<body data-src="{PREFIX.lstrip("/")}/site" data-auth="bearer">', 1)


def build(api: Api) -> Starlette:
    """The ASGI application: every route of OPS, JSON for every error, and the site dashboard's
    page at /dashboard."""
    document = openapi()
    routes = [Route(PREFIX + op.path, _endpoint(api, op, document), methods=[op.method]) for op in OPS]
    page = dashboard_page()
    routes.append(Route("/dashboard", lambda request: HTMLResponse(page), methods=["GET"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _http_error})


def serve(api: Api, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted; ``ready(url)`` once the socket listens. A port that cannot be
    bound is one SlurmgovError line (exit 7)."""
    import anyio
    import uvicorn

    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise SlurmgovError(f"api: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server = uvicorn.Server(uvicorn.Config(build(api), log_level="warning", access_log=False, lifespan="off"))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}{PREFIX}/"
    log.info("serving the API at %s (site %s)", url, api.site.site)
    if ready:
        ready(url)
    anyio.run(lambda: server.serve(sockets=[sock]))
