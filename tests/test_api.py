"""`slurmgov api`: JSON over HTTP for portals, a real server (a subprocess) and a real HTTP client.

Without Slurm: site tokens (`slurmgov api token issue`) on the local site. On the test Slurm
cluster: real Slurm JWTs (`scontrol token`), an expired one, forged ones, and one user's token
against another user's account.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from slurmgov.intent import run_records
from slurmgov.ledger.store import Ledger
from slurmgov.site import model as site_mod

try:
    import jsonschema
    import jwt
except ModuleNotFoundError:  # in the test extra: under CI its absence is a failure
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("PyJWT and jsonschema (pip install -e '.[test]')", allow_module_level=True)

BIN = Path(sys.executable).parent


# ---- a server and a client --------------------------------------------------------------------


class Server:
    def __init__(self, args: list[str], env: dict):
        self.log = tempfile.TemporaryFile("w+")  # its log: a pipe nobody reads would fill and stop it
        self.proc = subprocess.Popen([str(BIN / "slurmgov"), "api", "--port", "0", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"(http://\S+/api/v1/)", line)
        if not m:
            self.proc.kill()
            pytest.fail(f"slurmgov api did not start: {line!r} {self.stop()[-2000:]}")
        self.base = m.group(1).rstrip("/")

    def call(self, method: str, path: str, token: str | None = None, body=None, raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, object]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        assert "Traceback" not in text and "File \"" not in text, text
        doc = json.loads(text)  # every answer is JSON, errors too
        if status >= 400:
            assert set(doc) == {"error"} and "\n" not in doc["error"] and doc["error"], doc
        return status, doc

    def get(self, path: str, token: str | None = None):
        return self.call("GET", path, token)

    def post(self, path: str, token: str | None, body=None, raw: bytes | None = None):
        return self.call("POST", path, token, body, raw)

    def stop(self) -> str:
        """Stop it; its log."""
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forgeries(good: str, key: bytes, user_claim: str, now: float) -> dict[str, str]:
    """Tokens that must all be turned away: built from a good one, or signed with the right key but expired."""
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered = {**claims, user_claim: "root"}  # the same signature over another user
    return {
        "wrong key": jwt.encode(claims, b"not the key" * 4, algorithm="HS256"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(tampered)}.",
        "tampered payload": f"{head}.{b64(tampered)}.{sig}",
        "expired (right key)": jwt.encode({**claims, "iat": int(now) - 7200, "exp": int(now) - 3600}, key,
                                          algorithm="HS256"),
        "no exp (right key)": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, algorithm="HS256"),
        "not a JWT": "hello",
    }


# ---- OpenAPI: a structural check ---------------------------------------------------------------


def _json_schema(schema):
    """An OpenAPI 3.0 schema as JSON Schema (``nullable`` as a null type; refs to components kept)."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def check_openapi(doc: dict) -> list[tuple[str, str]]:
    """Fails unless ``doc`` is a well-formed OpenAPI 3.0 document; returns its (method, path)s."""
    assert re.fullmatch(r"3\.0\.\d+", doc["openapi"])
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    schemas = doc["components"]["schemas"]
    for s in schemas.values():
        jsonschema.Draft7Validator.check_schema(_json_schema(s))
    schemes = doc["components"]["securitySchemes"]
    for req in doc.get("security", []):
        assert set(req) <= set(schemes)

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    routes, ids = [], set()
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            assert method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
            assert op["operationId"] not in ids
            ids.add(op["operationId"])
            assert op["responses"] and all(re.fullmatch(r"[1-5]\d\d|default", c) for c in op["responses"])
            for r in op["responses"].values():
                assert isinstance(r["description"], str)
            params = op.get("parameters", [])
            for p in params:
                assert p["in"] in ("path", "query", "header", "cookie") and p["name"] and "schema" in p
                if p["in"] == "path":
                    assert p["required"] is True
            assert {p["name"] for p in params if p["in"] == "path"} == templated, path
            if "requestBody" in op:
                assert "application/json" in op["requestBody"]["content"]
            routes.append((method.upper(), path))
    return routes


def validate(doc: dict, method: str, path: str, status: int, body) -> None:
    """``body`` matches what the document says ``method path`` answers with ``status``."""
    schema = doc["paths"][path][method.lower()]["responses"][str(status)]["content"]["application/json"]["schema"]
    wrapped = _json_schema({**schema, "components": {"schemas": doc["components"]["schemas"]}})
    jsonschema.validate(body, wrapped, cls=jsonschema.Draft7Validator)


# ---- without Slurm: the local site and site tokens ---------------------------------------------


@pytest.fixture
def local(root, slurmgov_home):
    env = {**os.environ, "SLURMGOV_HOME": str(slurmgov_home), "COLUMNS": "200"}
    admin = subprocess.run([str(BIN / "slurmgov"), "api", "token", "issue", "--user", "root", "--lifespan", "600"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert admin.returncode == 0, admin.stderr
    user = subprocess.run([str(BIN / "slurmgov"), "api", "token", "issue", "--user", "nobody"],
                          capture_output=True, text=True, env=env, timeout=60)
    key = slurmgov_home / "api-site.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server = Server([], env)
    site = site_mod.load(root / "site_configs" / "local.yaml")
    try:
        yield server, admin.stdout.strip(), user.stdout.strip(), Ledger.open(site.ledger_url()), key.read_bytes()
    finally:
        err = server.stop()
        assert "Traceback" not in err, err[-3000:]  # no request met a bug


def test_openapi_document_is_well_formed_and_lists_every_route(local):
    server, admin, _, _, _ = local
    from slurmgov.interface import api

    status, doc = server.get("/openapi.json")  # no token needed
    assert status == 200
    documented = set(check_openapi(doc))
    app = api.build(api.Api(None, None, api.Tokens(None, b"k")))  # type: ignore[arg-type]  # the routes served
    served = {(m, r.path) for r in app.routes for m in r.methods if m != "HEAD"}
    page = {("GET", "/dashboard")}  # the site dashboard's HTML page, which reads through the API: not JSON
    assert documented == served - page and len(served - page) == len(api.OPS) >= 12 and page <= served
    assert {p for _, p in served} >= {"/api/v1/budgets", "/api/v1/budgets/{account}", "/api/v1/usage",
                                      "/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/holds", "/api/v1/audit",
                                      "/api/v1/budgets/{account}/grant", "/api/v1/transfers",
                                      "/api/v1/holds/{hold_key}/release", "/api/v1/openapi.json", "/api/v1/site"}
    # what the GET routes answer is what the document says they answer
    for path, concrete in (("/api/v1/whoami", "/whoami"), ("/api/v1/budgets", "/budgets"),
                           ("/api/v1/budgets/{account}", "/budgets/chem-ai"), ("/api/v1/usage", "/usage?by=user"),
                           ("/api/v1/runs", "/runs"), ("/api/v1/holds", "/holds"), ("/api/v1/audit", "/audit"),
                           ("/api/v1/site", "/site")):
        status, body = server.get(concrete, local[1])
        assert status == 200, body
        validate(doc, "GET", path, 200, body)
    status, body = server.get("/budgets/nope", local[1])
    assert status == 404 and "nope" in body["error"]
    validate(doc, "GET", "/api/v1/budgets/{account}", 404, body)


def test_admin_grant_transfer_and_release_go_through_the_ledger_and_its_audit(local):
    server, admin, _, ledger, _ = local
    before = ledger.balance("chem-ai").budget_h
    status, body = server.post("/budgets/chem-ai/grant", admin, {"gpu_hours": 12.5, "reason": "portal grant"})
    assert status == 200 and body["budget_h"] == pytest.approx(before + 12.5)
    assert ledger.balance("chem-ai").budget_h == pytest.approx(before + 12.5)
    row = ledger.audit()[-1]
    assert (row["actor"], row["account"], row["action"], row["reason"]) == ("root", "chem-ai", "grant", "portal grant")
    status, body = server.get("/audit?account=chem-ai", admin)
    assert status == 200 and body[-1]["reason"] == "portal grant" and {r["account"] for r in body} == {"chem-ai"}

    # a transfer the source cannot cover is a budget refusal (409), and moves nothing
    avail = ledger.balance("bio-ml").available_h
    status, body = server.post("/transfers", admin, {"source": "bio-ml", "dest": "chem-ai", "gpu_hours": avail + 1})
    assert status == 409 and "bio-ml" in body["error"] and "cannot transfer" in body["error"]
    assert ledger.balance("bio-ml").available_h == pytest.approx(avail)
    status, body = server.post("/transfers", admin, {"source": "bio-ml", "dest": "chem-ai", "gpu_hours": 2,
                                                     "reason": "shared"})
    assert status == 200 and {b["account"] for b in body} == {"bio-ml", "chem-ai"}
    assert ledger.balance("bio-ml").available_h == pytest.approx(avail - 2)
    assert [r["action"] for r in ledger.audit()[-2:]] == ["transfer to chem-ai", "transfer from bio-ml"]

    # a hold released by an admin: its GPU-hours go back, the release is audited, a second one is 409
    ledger.admit("run:api-test", "chem-ai", "wf", {"a": 3.0}, user="nobody")
    status, body = server.get("/holds", admin)
    assert status == 200 and [h["hold_key"] for h in body] == ["run:api-test"]
    status, body = server.post("/holds/run%3Aapi-test/release", admin, {"reason": "host died"})
    assert status == 200 and body == {"hold_key": "run:api-test", "account": "chem-ai", "state": "cancelled",
                                      "released_h": pytest.approx(3.0)}
    assert ledger.find_hold("run:api-test").state == "cancelled" and ledger.holds_open() == []
    assert ledger.audit()[-1]["action"] == "release" and "host died" in ledger.audit()[-1]["reason"]
    status, body = server.post("/holds/run%3Aapi-test/release", admin, {"reason": "again"})
    assert status == 409 and "already closed" in body["error"]
    status, body = server.post("/holds/run%3Anope/release", admin, {"reason": "x"})
    assert status == 404


def test_bad_input_is_400_naming_the_field_and_changes_nothing(local):
    server, admin, _, ledger, _ = local
    audit = ledger.audit()
    for raw, field in ((b'{"gpu_hours": 5', "body"), (b"[1, 2]", "body"), (b"\xff\xfe", "body"),
                       (b'{"reason": "x"}', "gpu_hours"), (b'{"gpu_hours": "5"}', "gpu_hours"),
                       (b'{"gpu_hours": -1}', "gpu_hours"), (b'{"gpu_hours": true}', "gpu_hours"),
                       (b'{"gpu_hours": 1e999}', "gpu_hours"), (b'{"gpu_hours": 1, "reason": 7}', "reason"),
                       (b'{"gpu_hours": 1, "hours": 2}', "hours")):
        status, body = server.post("/budgets/chem-ai/grant", admin, raw=raw)
        assert status == 400 and body["error"].startswith(f"{field}:"), (raw, body)
    big = {"gpu_hours": 1, "reason": "x" * (64 * 1024)}  # a body over the API's 64 KiB is not read
    status, body = server.post("/budgets/chem-ai/grant", admin, big)
    assert status == 413 and body["error"] == "body: more than 65,536 bytes", body
    for bad in ("Bad$Name", "chem-ai%0A"):  # (a trailing newline passes Python's `$`)
        status, body = server.post(f"/budgets/{bad}/grant", admin, {"gpu_hours": 1})
        assert status == 400 and body["error"].startswith("account:"), (bad, body)
    status, body = server.post("/transfers", admin, {"source": "chem-ai", "gpu_hours": 1})
    assert status == 400 and body["error"] == "dest: missing"
    status, body = server.post("/holds/run%3Ax/release", admin, {})
    assert status == 400 and body["error"] == "reason: missing"
    for query, field in (("/usage?by=colour", "by"), ("/usage?from=yesterday", "from"), ("/usage?to=nan", "to"),
                         ("/usage?fro=2026-01-01", "fro"), ("/runs?limit=0", "limit"), ("/runs?limit=x", "limit"),
                         ("/usage?account=a%20b", "account"), ("/usage?account=chem-ai%0A", "account")):
        status, body = server.get(query, admin)
        assert status == 400 and body["error"].startswith(f"{field}:"), (query, body)
    assert ledger.audit() == audit
    status, body = server.call("DELETE", "/budgets", admin)
    assert status == 405
    status, body = server.get("/nothing-here", admin)
    assert status == 404


def test_usage_from_to_and_by_user_are_the_ledgers(local):
    server, admin, _, ledger, _ = local
    ledger.admit("h1", "chem-ai", "wf", {"s": 5.0}, user="alice")
    ledger.charge("c1", "h1", "s", 1, gpu_seconds=3600, weight=1.0, gpu_type="h100", started=1_700_000_000,
                  ended=1_700_003_600, status="ok", user="alice", workflow="wf")
    status, body = server.get("/usage?by=user&from=2023-11-14&to=2023-11-15T00:00:00Z", admin)
    assert status == 200 and [(r["key"], r["charged_h"]) for r in body] == [("alice", pytest.approx(1.0))]
    status, body = server.get("/usage?by=user&from=2023-11-15", admin)
    assert status == 200 and body == []
    status, body = server.get("/usage?by=workflow&account=bio-ml", admin)
    assert status == 200 and body == []


def test_tokens_that_are_not_good_are_401_and_see_nothing(local):
    server, admin, user, ledger, key = local
    for name, bad in forgeries(user, key, "sub", time.time()).items():  # user: nobody; tampered: root
        status, body = server.get("/budgets", bad)
        assert status == 401, (name, body)
        status, body = server.post("/budgets/chem-ai/grant", bad, {"gpu_hours": 1})
        assert status == 401, (name, body)
    status, body = server.get("/budgets", None)
    assert status == 401 and "Bearer" in body["error"]
    status, body = server.call("GET", "/budgets", headers={"Authorization": f"Basic {admin}"})
    assert status == 401
    # a Slurm JWT, when this server takes none: turned away, saying so
    slurm_like = jwt.encode({"sun": "root", "exp": int(time.time()) + 60}, key, algorithm="HS256")
    status, body = server.get("/budgets", slurm_like)
    assert status == 401 and "Slurm" in body["error"]
    assert [r["action"] for r in ledger.audit()] == ["seed"] * len(ledger.audit())


def test_a_users_token_reads_but_may_not_change(local):
    server, admin, user, ledger, _ = local
    status, body = server.get("/whoami", user)
    assert status == 200 and body["user"] == "nobody" and body["via"] == "site" and body["admin"] is False
    status, body = server.get("/budgets/chem-ai", user)  # a local site: its accounts are everyone's
    assert status == 200
    before = ledger.balance("chem-ai").budget_h
    status, body = server.post("/budgets/chem-ai/grant", user, {"gpu_hours": 100})
    assert status == 403 and "nobody" in body["error"] and "admins" in body["error"]
    status, body = server.post("/transfers", user, {"source": "chem-ai", "dest": "bio-ml", "gpu_hours": 1})
    assert status == 403
    assert ledger.balance("chem-ai").budget_h == before


def test_the_site_dashboard_shows_what_the_api_serves(local, slurmgov_home, root):
    from slurmgov.interface import site_dashboard

    server, admin, _, ledger, _ = local
    ledger.grant("physics", 3, actor="t", reason="r")
    run_records.write("20261201T000000-abcdef", {"run_id": "20261201T000000-abcdef", "workflow": "wf",
                                                "account": "chem-ai", "user": "nobody", "status": "ok",
                                                "started": 1.0, "ended": 2.0, "steps": {"a": {"status": "ok"}},
                                                "allocations": {"x": {"cost": {"cost_h": 0.5, "nodes": ["n1"]}}}})
    site = site_mod.load(root / "site_configs" / "local.yaml")
    state = site_dashboard.site_state(site, ledger, slurmgov_home)
    status, budgets = server.get("/budgets", admin)
    assert status == 200
    page = [{k: v for k, v in a.items() if k not in ("burn_down", "burn_h_per_day", "runs_out")}
            for a in state["accounts"]]
    assert page == [{k: v for k, v in b.items() if k not in ("burn_h_per_day", "runs_out")} for b in budgets]
    status, runs = server.get("/runs", admin)
    assert status == 200 and json.loads(json.dumps(state["runs"])) == runs and runs[0]["cost_h"] == 0.5
    status, one = server.get("/runs/20261201T000000-abcdef", admin)
    assert status == 200 and one["step_status"]["a"]["status"] == "ok" and one["state"] == "ok"
    status, body = server.get("/runs/20261201T000000-zzzzzz", admin)
    assert status == 404
    # the page's whole state, through the API: an admin's only
    status, whole = server.get("/site", admin)
    assert status == 200 and [a["account"] for a in whole["accounts"]] == [b["account"] for b in budgets]
    assert whole["runs"] == runs and "burn_down" in whole["accounts"][0] and whole["site"] == site.site
    status, body = server.get("/site", local[2])
    assert status == 403 and "nobody" in body["error"]


def test_the_site_dashboard_page_reads_through_the_api_with_the_token_it_is_given(local):
    """`slurmgov api` serves the site dashboard at /dashboard, in a real browser: the page reads
    /api/v1/site with the token its address gives it: an admin's token shows every account the
    API lists, a user's shows the API's one-line refusal and no account, none asks for one."""
    import browser

    exe = browser.ensure()
    server, admin, user, ledger, _ = local
    ledger.grant("physics", 3, actor="t", reason="r")
    root_url = server.base[:-len("/api/v1")]
    status, budgets = server.get("/budgets", admin)
    assert status == 200 and budgets

    def accounts(page: str) -> list[str]:
        table = page.split('<table id="accounts">', 1)[1].split("</table>", 1)[0]
        return re.findall(r'<tr data-account="([^"]+)">', table)

    def subtitle(page: str) -> str:
        return re.search(r'id="subtitle"[^>]*>([^<]*)<', page).group(1)

    page = browser.dom(exe, f"{root_url}/dashboard#token={admin}")
    assert accounts(page) == [b["account"] for b in budgets], page[-2000:]
    assert subtitle(page).startswith("executor local · ") and "<title>slurmgov: local</title>" in page
    page = browser.dom(exe, f"{root_url}/dashboard#token={user}")
    assert accounts(page) == [] and subtitle(page).startswith("error: nobody (user) may not read"), subtitle(page)
    page = browser.dom(exe, f"{root_url}/dashboard")
    assert accounts(page) == [] and subtitle(page).startswith("no token: open this page at"), subtitle(page)


def test_without_a_way_to_check_tokens_the_api_does_not_start(slurmgov_home, tmp_path):
    env = {**os.environ, "SLURMGOV_HOME": str(slurmgov_home)}
    p = subprocess.run([str(BIN / "slurmgov"), "api", "--port", "0"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2 and "--slurm-conf-dir" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "slurm.conf").write_text("ClusterName=x\nAuthType=auth/munge\n")
    p = subprocess.run([str(BIN / "slurmgov"), "api", "--port", "0", "--slurm-conf-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "AuthAltTypes=auth/jwt" in p.stderr and "slurm.conf" in p.stderr
    key = slurmgov_home / "api-site.key"
    slurmgov_home.mkdir(parents=True, exist_ok=True)
    key.write_text("0123456789abcdef" * 4)
    key.chmod(0o644)
    p = subprocess.run([str(BIN / "slurmgov"), "api", "--port", "0"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2 and "readable by others" in p.stderr


# ---- roles (policy.authz), on the local site: operators and account managers -------------------

ROLES = ("operators: {users: [daemon], max_grant_gpu_hours: 10}\n"
         "managers: {max_grant_gpu_hours: 2}\n")


def _issue(env: dict, user: str) -> str:
    p = subprocess.run([str(BIN / "slurmgov"), "api", "token", "issue", "--user", user, "--lifespan", "600"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture
def roles(root, slurmgov_home, tmp_path):
    """The local site with an operator (daemon, up to 10 GPU-h a change) and a manager of chem-ai
    (games, granting up to 2 GPU-h a change); site tokens for both."""
    doc = (root / "site_configs" / "local.yaml").read_text().replace(
        "chem-ai: {budget_gpu_hours: 500, period: monthly}",
        "chem-ai: {budget_gpu_hours: 500, period: monthly, managers: [games]}") + ROLES
    assert "managers: [games]" in doc
    site_path = tmp_path / "roles.yaml"
    site_path.write_text(doc)
    env = {**os.environ, "SLURMGOV_HOME": str(slurmgov_home), "SLURMGOV_SITE": str(site_path), "COLUMNS": "200"}
    tokens = {u: _issue(env, u) for u in ("daemon", "games")}
    server = Server([], env)
    try:
        yield server, tokens, Ledger.open(site_mod.load(site_path).ledger_url())
    finally:
        err = server.stop()
        assert "Traceback" not in err, err[-3000:]


def test_an_operator_grants_and_transfers_within_its_limit_and_releases_holds(roles):
    server, tokens, ledger = roles
    op = tokens["daemon"]
    status, me = server.get("/whoami", op)
    assert status == 200 and me["role"] == "operator" and me["admin"] is False and me["accounts"] is None
    before = ledger.balance("bio-ml").budget_h
    status, body = server.post("/budgets/bio-ml/grant", op, {"gpu_hours": 10, "reason": "within the limit"})
    assert status == 200 and body["budget_h"] == pytest.approx(before + 10)
    row = ledger.audit()[-1]  # audited as the token's user (not the server's root), with its role
    assert (row["actor"], row["role"], row["account"], row["action"]) == ("daemon", "operator", "bio-ml", "grant")
    status, body = server.post("/budgets/bio-ml/grant", op, {"gpu_hours": 10.5, "reason": "over it"})
    assert status == 403 and body["error"] == (
        "daemon (operator) may not grant 10.5 GPU-h to account bio-ml: that needs an admin (root, or `admins` in "
        "site local), an operator (`operators`, up to 10 GPU-h a change) or a manager of bio-ml (its `managers` "
        "in the site file, or its Slurm coordinator), up to 2 GPU-h a change")
    assert ledger.balance("bio-ml").budget_h == pytest.approx(before + 10)
    status, body = server.post("/transfers", op, {"source": "chem-ai", "dest": "bio-ml", "gpu_hours": 11})
    assert status == 403 and "daemon (operator) may not transfer 11 GPU-h" in body["error"]
    status, body = server.post("/transfers", op, {"source": "chem-ai", "dest": "bio-ml", "gpu_hours": 3,
                                                  "reason": "shared"})
    assert status == 200 and [r["role"] for r in ledger.audit()[-2:]] == ["operator", "operator"]
    ledger.admit("run:op-test", "physics", "wf", {"a": 1.0}, user="someone")
    status, body = server.post("/holds/run%3Aop-test/release", op, {"reason": "host died"})
    assert status == 200 and body["state"] == "cancelled"
    assert (ledger.audit()[-1]["action"], ledger.audit()[-1]["role"]) == ("release", "operator")
    # and reads every account, the whole site's page too
    status, body = server.get("/audit", op)
    assert status == 200 and {r["account"] for r in body} == {"bio-ml", "chem-ai", "physics"}
    assert body[-1]["role"] == "operator"
    assert server.get("/site", op)[0] == 200


def test_an_account_manager_caps_its_users_over_the_api_and_no_one_else_does(roles):
    """POST /budgets/{account}/caps/{user} is `budget user-cap set|remove`: the account's manager
    may (audited as manager, with the token's user as actor), on another account it is 403, an
    operator is 403 (caps are the managers'); a name this host has no uid for is 400 (a cap the
    hook could never enforce); GET /caps lists each caller the caps of the accounts it may read."""
    server, tokens, ledger = roles
    mgr, op = tokens["games"], tokens["daemon"]
    status, body = server.post("/budgets/chem-ai/caps/nobody", mgr, {"gpu_hours": 4, "reason": "intern"})
    assert status == 200 and (body["account"], body["user"], body["cap_h"]) == ("chem-ai", "nobody", 4.0)
    assert body["available_h"] == pytest.approx(4.0)
    row = ledger.audit()[-1]
    assert (row["actor"], row["role"], row["account"], row["action"]) == ("games", "manager", "chem-ai", "user-cap")
    assert [(u.account, u.user, u.cap_h) for u in ledger.user_balances()] == [("chem-ai", "nobody", 4.0)]
    for token, path in ((mgr, "/budgets/bio-ml/caps/nobody"), (op, "/budgets/chem-ai/caps/nobody")):
        status, body = server.post(path, token, {"gpu_hours": 1})
        assert status == 403 and "may not set user caps of account" in body["error"], body
    status, body = server.post("/budgets/chem-ai/caps/nosuchuser-typo", mgr, {"gpu_hours": 1})
    assert status == 400 and "has no uid on this host" in body["error"]
    for bad in ({"gpu_hours": -1}, {"gpu_hours": "4"}, {}, {"gpu_hours": 1, "why": "x"}):
        assert server.post("/budgets/chem-ai/caps/nobody", mgr, bad)[0] == 400, bad
    status, caps = server.get("/caps", op)  # an operator reads every account's
    assert status == 200 and [(c["account"], c["user"], c["cap_h"]) for c in caps] == [("chem-ai", "nobody", 4.0)]
    assert server.get("/caps?account=bio-ml", mgr) == (200, [])  # a local site: every user reads every account
    status, body = server.post("/budgets/chem-ai/caps/nobody", mgr, {"gpu_hours": None, "reason": "done"})
    assert status == 200 and body == {"account": "chem-ai", "user": "nobody", "cap_h": None}
    assert ledger.user_balances() == [] and server.get("/caps", mgr) == (200, [])


def test_an_account_manager_grants_only_its_accounts_within_the_sites_limit_and_releases_nothing(roles):
    server, tokens, ledger = roles
    mgr = tokens["games"]
    status, me = server.get("/whoami", mgr)
    assert status == 200 and me["role"] == "manager"
    status, body = server.get("/budgets/chem-ai", mgr)
    assert status == 200 and body["account"] == "chem-ai"
    before = ledger.balance("chem-ai").budget_h
    status, body = server.post("/budgets/chem-ai/grant", mgr, {"gpu_hours": 2, "reason": "a small top-up"})
    assert status == 200 and body["budget_h"] == pytest.approx(before + 2)
    assert (ledger.audit()[-1]["actor"], ledger.audit()[-1]["role"]) == ("games", "manager")
    for path, doc in (("/budgets/chem-ai/grant", {"gpu_hours": 3}), ("/budgets/bio-ml/grant", {"gpu_hours": 1}),
                      ("/transfers", {"source": "chem-ai", "dest": "bio-ml", "gpu_hours": 1})):
        status, body = server.post(path, mgr, doc)
        assert status == 403 and body["error"].startswith("games (manager) may not"), (path, body)
    ledger.admit("run:mgr-test", "chem-ai", "wf", {"a": 1.0}, user="games")
    status, body = server.post("/holds/run%3Amgr-test/release", mgr, {"reason": "mine"})
    assert status == 403 and "games (manager) may not release a hold" in body["error"]
    status, body = server.post("/holds/run%3Anope/release", mgr, {"reason": "probing"})  # no hint it is not there
    assert status == 403
    assert ledger.find_hold("run:mgr-test").state == "open"
    assert ledger.balance("chem-ai").budget_h == pytest.approx(before + 2)


# ---- on the test Slurm cluster: real Slurm JWTs -------------------------------------------------


def _slurm_api(c, root, slurmgov_home, tmp_path, doc: str):
    if c.jwt_key is None:
        why = f"Slurm's auth/jwt is off on the test cluster: {c.jwt_why}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    site_path = tmp_path / "site.yaml"
    site_path.write_text(doc)
    env = {**c.env, "SLURMGOV_HOME": str(slurmgov_home), "SLURMGOV_SITE": str(site_path), "COLUMNS": "200"}
    server = Server(["--slurm-conf-dir", str(c.conf_dir), "--no-site-tokens"], env)
    ledger = Ledger.open(site_mod.load(site_path).ledger_url())
    try:
        yield c, server, ledger
    finally:
        err = server.stop()
        assert "Traceback" not in err, err[-3000:]


@pytest.fixture
def on_slurm(slurm_cluster, root, slurmgov_home, tmp_path):
    doc = (root / "site_configs" / "demo-cluster.yaml").read_text() + "admins: {users: [nobody]}\n"
    yield from _slurm_api(slurm_cluster, root, slurmgov_home, tmp_path, doc)


@pytest.fixture
def on_slurm_roles(slurm_cluster, root, slurmgov_home, tmp_path):
    """The demo cluster's site with games (whom Slurm associates with no account) managing physics."""
    doc = (root / "site_configs" / "demo-cluster.yaml").read_text().replace(
        "physics: {budget_gpu_hours: 50, period: quarterly}",
        "physics: {budget_gpu_hours: 50, period: quarterly, managers: [games]}")
    assert "managers: [games]" in doc
    yield from _slurm_api(slurm_cluster, root, slurmgov_home, tmp_path, doc)


@pytest.mark.slurm
def test_an_account_managers_slurm_jwt_reads_its_account_and_its_own_runs_only(on_slurm_roles):
    c, server, ledger = on_slurm_roles
    mgr = c.token("games")
    status, me = server.get("/whoami", mgr)
    assert status == 200 and (me["role"], me["accounts"]) == ("manager", ["physics"])
    status, body = server.get("/budgets", mgr)
    assert status == 200 and [b["account"] for b in body] == ["physics"]
    assert server.get("/budgets/physics", mgr)[0] == 200
    assert server.get("/audit?account=physics", mgr)[0] == 200
    for path in ("/budgets/chem-ai", "/usage?account=bio-ml", "/holds?account=chem-ai", "/audit?account=bio-ml",
                 "/runs?account=chem-ai", "/site"):
        status, body = server.get(path, mgr)
        assert status == 403 and body["error"].startswith("games (manager) may not read"), (path, body)
    # runs, as `slurmgov runs` lists them: its own (on any account) and its accounts'
    for rid, account, user in (("20261201T000000-cccccc", "chem-ai", "games"),
                               ("20261201T000000-dddddd", "physics", "root"),
                               ("20261201T000000-eeeeee", "bio-ml", "root")):
        run_records.write(rid, {"run_id": rid, "workflow": "wf", "account": account, "user": user,
                                "status": "ok", "steps": {}, "allocations": {}})
    status, body = server.get("/runs", mgr)
    assert status == 200 and sorted(r["run_id"][-6:] for r in body) == ["cccccc", "dddddd"]
    assert server.get("/runs/20261201T000000-cccccc", mgr)[0] == 200  # its own, on an account it may not read
    assert server.get("/runs/20261201T000000-dddddd", mgr)[0] == 200
    status, body = server.get("/runs/20261201T000000-eeeeee", mgr)
    assert status == 403 and "bio-ml" in body["error"]


@pytest.mark.slurm
def test_a_slurm_coordinators_jwt_manages_its_account(on_slurm_roles):
    c, server, ledger = on_slurm_roles
    c.run("sacctmgr", "-i", "add", "coordinator", "account=chem-ai", "names=daemon", check=True)
    try:
        coord = c.token("daemon")  # associated with bio-ml; Slurm's coordinator of chem-ai
        status, me = server.get("/whoami", coord)
        assert status == 200 and (me["role"], me["accounts"]) == ("manager", ["bio-ml", "chem-ai"])
        assert server.get("/budgets/chem-ai", coord)[0] == 200
        status, body = server.get("/budgets/physics", coord)
        assert status == 403 and body["error"].startswith("daemon (manager) may not read")
        status, body = server.post("/budgets/chem-ai/grant", coord, {"gpu_hours": 1})  # the site allows managers 0
        assert status == 403 and "daemon (manager) may not grant 1 GPU-h to account chem-ai" in body["error"]
    finally:
        c.run("sacctmgr", "-i", "remove", "coordinator", "account=chem-ai", "names=daemon", check=True)


@pytest.mark.slurm
def test_a_slurm_jwt_reads_only_the_accounts_slurm_associates_its_user_with(on_slurm):
    c, server, ledger = on_slurm
    daemon = c.token("daemon")  # Slurm associates daemon with bio-ml only
    ledger.admit("run:theirs", "chem-ai", "wf", {"a": 1.0}, user="root")
    ledger.admit("run:mine", "bio-ml", "wf", {"a": 1.0}, user="daemon")
    for rid, account in (("20261201T000000-aaaaaa", "chem-ai"), ("20261201T000000-bbbbbb", "bio-ml")):
        run_records.write(rid, {"run_id": rid, "workflow": "wf", "account": account, "user": "root",
                                "status": "ok", "steps": {}, "allocations": {}})

    status, me = server.get("/whoami", daemon)
    assert status == 200 and me == {"user": "daemon", "via": "slurm", "admin": False, "role": "user",
                                    "accounts": ["bio-ml"]}
    status, body = server.get("/budgets", daemon)
    assert status == 200 and [b["account"] for b in body] == ["bio-ml"]
    status, body = server.get("/budgets/bio-ml", daemon)
    assert status == 200 and body["held_h"] == pytest.approx(1.0) and body["account"] == "bio-ml"
    status, body = server.get("/holds", daemon)
    assert [h["hold_key"] for h in body] == ["run:mine"]
    status, body = server.get("/runs", daemon)
    assert [r["account"] for r in body] == ["bio-ml"]
    status, body = server.get("/audit", daemon)
    assert status == 200 and body and {r["account"] for r in body} == {"bio-ml"}
    for hold, step, user in (("run:theirs", "a", "root"), ("run:mine", "a", "daemon")):
        ledger.charge(f"{hold}/c", hold, step, 1, gpu_seconds=360, weight=1.0, gpu_type="h100", started=None,
                      ended=time.time(), status="ok", user=user, workflow="wf")
    status, body = server.get("/usage?by=user", daemon)  # bio-ml's charges only: root's on chem-ai are not
    assert status == 200 and [(r["key"], r["charged_h"]) for r in body] == [("daemon", pytest.approx(0.1))]
    status, body = server.get("/usage?by=user", c.token("nobody"))  # an admin's: every account's
    assert [r["key"] for r in body] == ["daemon", "root"]
    # another user's account: not for daemon's token, however it asks
    for path in ("/budgets/chem-ai", "/usage?account=chem-ai", "/holds?account=chem-ai", "/audit?account=chem-ai",
                 "/runs?account=chem-ai", "/runs/20261201T000000-aaaaaa"):
        status, body = server.get(path, daemon)
        assert status == 403 and "daemon" in body["error"] and "chem-ai" in body["error"], (path, body)
    # a user Slurm associates with no account sees nothing; an admin (nobody, by the site file) sees all
    status, body = server.get("/budgets", c.token("games"))
    assert status == 200 and body == []
    status, body = server.get("/budgets", c.token("nobody"))
    assert status == 200 and [b["account"] for b in body] == ["bio-ml", "chem-ai", "physics"]


@pytest.mark.slurm
def test_expired_forged_and_other_users_tokens_are_turned_away(on_slurm):
    c, server, ledger = on_slurm
    key = c.jwt_key.read_bytes()
    good = c.token("daemon", lifespan=600)
    assert server.get("/budgets", good)[0] == 200
    for name, bad in forgeries(good, key, "sun", time.time()).items():
        status, body = server.get("/budgets/chem-ai", bad)
        assert status == 401, (name, body)
        if name.startswith("expired"):
            assert body["error"].startswith("expired token")
    # a real token Slurm issued for one second: once its exp has passed, it is turned away
    short = c.token("daemon", lifespan=1)
    exp = jwt.decode(short, key, algorithms=["HS256"], options={"verify_exp": False})["exp"]
    while time.time() < exp + 1.5:  # PyJWT compares whole seconds: wait out exp (not proving an absence)
        time.sleep(0.2)
    status, body = server.get("/budgets", short)
    assert status == 401 and body["error"].startswith("expired token")
    # a token for another cluster's key with this cluster's claims
    status, body = server.get("/budgets", jwt.encode({"sun": "nobody", "exp": int(time.time()) + 60},
                                                     os.urandom(32), algorithm="HS256"))
    assert status == 401


@pytest.mark.slurm
def test_an_admins_slurm_jwt_grants_over_post_and_a_users_may_not(on_slurm):
    c, server, ledger = on_slurm
    before = ledger.balance("physics").budget_h
    status, body = server.post("/budgets/physics/grant", c.token("daemon"), {"gpu_hours": 10})
    assert status == 403 and "daemon" in body["error"]
    status, body = server.post("/budgets/physics/grant", c.token("nobody"), raw=b'{"gpu_hours": ten}')
    assert status == 400 and body["error"].startswith("body:")
    status, body = server.post("/budgets/physics/grant", c.token("nobody"), {"gpu_hours": "ten"})
    assert status == 400 and body["error"].startswith("gpu_hours:")
    assert ledger.balance("physics").budget_h == before
    status, body = server.post("/budgets/physics/grant", c.token("nobody"), {"gpu_hours": 10, "reason": "via portal"})
    assert status == 200 and body["budget_h"] == pytest.approx(before + 10)
    assert ledger.balance("physics").budget_h == pytest.approx(before + 10)
    last = ledger.audit()[-1]  # audited as the token's user, not the server's (root)
    assert (last["actor"], last["account"], last["action"], last["reason"]) == ("nobody", "physics", "grant",
                                                                                "via portal")
    status, body = server.get("/audit?account=physics", c.token("nobody"))
    assert body[-1]["actor"] == "nobody" and body[-1]["new_budget_h"] == pytest.approx(before + 10)


@pytest.mark.slurm
def test_only_an_admin_issues_site_tokens(slurm_cluster, root, tmp_path):
    from helpers import python_as

    c = slurm_cluster
    py, env = python_as(c, "daemon")
    home = tmp_path / "daemon-home"
    r = c.run("runuser", "-u", "daemon", "--", py, "-m", "slurmgov.interface.cli", "api", "token", "issue",
              "--user", "root", "--site", str(root / "site_configs" / "demo-cluster.yaml"),
              env={**env, "SLURMGOV_HOME": str(home)}, cwd="/", timeout=120)
    assert r.returncode == 6 and "issuing an API token needs an admin" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not home.exists() and r.stdout == ""
