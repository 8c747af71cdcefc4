"""`slurmgov mcp`: the intent plane for agents, an MCP server (the official SDK, `mcp` 2.x).

Asking, pricing, submitting and explaining are MCP tools; the governance plane decides what
happens (`mcp_tools.Desk`: the planner's price, `slurmgov run`'s hold, `runs cancel`'s stop).
Each tool has a JSON schema (from its signature), returns structured content, and fails with
one line (`isError`), never a traceback: a SlurmgovError's own line, an argument that does not
match the schema as ``argument <field>: <why>``, anything unexpected as ``internal error`` (its
traceback goes to the server's log on stderr, never to the client).

This is the only module that imports the MCP SDK (tests/test_code_quality.py checks it).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, TextContent

from slurmgov import __version__
from slurmgov.errors import SlurmgovError, UnknownAccount
from slurmgov.interface.mcp_tools import Desk

log = logging.getLogger("slurmgov.mcp")

INSTRUCTIONS = """slurmgov governs what GPU workflows cost. Before submitting, call plan_workflow for the
worst-case price in weighted GPU-hours and whether the account's budget covers it; if it does not,
suggest_cheaper lists changed jobspecs that fit and what each gives up. submit_workflow admits a
workflow only within the budget and returns a run id at once; poll run_status, then explain_cost."""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "error"


def governed(fn):
    """A tool body whose failures are one line for the model and a log line for the operator."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlurmgovError as exc:
            log.info("%s refused: %s", fn.__name__, _one_line(str(exc)))
            raise ToolError(_one_line(str(exc))) from None
        except Exception as exc:  # a bug: its traceback stays in the server's log
            log.exception("%s failed", fn.__name__)
            raise ToolError(f"internal error ({type(exc).__name__}); the server's log has the details") from None

    return call


def _argument_error(text: str) -> str:
    """Pydantic's several lines for arguments that do not match a tool's schema, as one naming the
    field: ``... argument jobspec: Input should be a valid string, or a valid dictionary``."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 3 or "validation error" not in lines[0]:
        return _one_line(text)
    prefix = lines[0].split(": ", 1)[0] + ": " if ": " in lines[0] else ""
    why: dict[str, list[str]] = {}
    field = None
    for ln in lines[1:]:
        if not ln.startswith(" "):
            field = ln.strip().split(".", 1)[0]  # `jobspec.str`: one of a union's types
        elif field and not ln.startswith("    "):
            msg = ln.strip().split(" [type=", 1)[0]
            why.setdefault(field, []).append(msg.removeprefix("Input should be ") if why.get(field) else msg)
    if not why:
        return _one_line(text)
    return prefix + "; ".join(f"argument {f}: {', or '.join(m)}" for f, m in why.items())


async def _one_line_errors(ctx, call_next):
    """Middleware: every tool error reaches the client as one line."""
    result = await call_next(ctx)
    if getattr(ctx, "method", None) != "tools/call":
        return result
    if isinstance(result, dict) and result.get("isError"):  # the wire form, as the runner hands it on
        for c in result.get("content") or []:
            if isinstance(c, dict) and c.get("type") == "text":
                c["text"] = _argument_error(c.get("text", ""))
    elif isinstance(result, CallToolResult) and result.is_error:
        result.content = [TextContent(type="text", text=_argument_error(c.text)) if isinstance(c, TextContent) else c
                          for c in result.content]
    return result


def build(desk: Desk) -> MCPServer:
    app: MCPServer = MCPServer("slurmgov", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING",
                               middleware=[_one_line_errors])

    @app.tool()
    @governed
    def budget_status(account: str) -> dict[str, Any]:
        """An account's budget this period in weighted GPU-hours: budget, held (by running workflows),
        charged, available, burn rate per day, run-out date and alert (80%, 95%, exhausted)."""
        return desk.budget_status(account)

    @app.tool()
    @governed
    def plan_workflow(jobspec: str | dict[str, Any]) -> dict[str, Any]:
        """Plan a jobspec (YAML text or an object: workflow, account, steps) without running it: its
        allocations and their Slurm options, the worst-case price in weighted GPU-hours, whether it is
        feasible on the site (refusals: the planner's reasons, with step and line), and whether the
        account's available budget covers it."""
        return desk.plan_workflow(jobspec)

    @app.tool()
    @governed
    def suggest_cheaper(jobspec: str | dict[str, Any], account: str | None = None) -> dict[str, Any]:
        """When a jobspec's worst case does not fit the account's budget (the jobspec's account unless
        `account` is given): up to three changed jobspecs that do, each priced and saying what it gives
        up (fewer parallel branches, a GPU type the site weighs less, shorter time limits or no retries,
        a smaller context or model on fewer GPUs); or `nothing_fits` with the shortfall. Each
        alternative's `jobspec` can be passed to submit_workflow as it is."""
        return desk.suggest_cheaper(jobspec, account)

    @app.tool()
    @governed
    def submit_workflow(jobspec: str | dict[str, Any]) -> dict[str, Any]:
        """Submit a jobspec: admitted only if the account's available budget covers its worst case
        (one ledger hold, as `slurmgov run` places), then run in the background. Returns the run id
        at once; poll run_status, then explain_cost. A refusal says by how much it does not fit."""
        return desk.submit_workflow(jobspec)

    @app.tool()
    @governed
    def run_status(run_id: str) -> dict[str, Any]:
        """A submitted run's state (running, done, failed, cancelled, lost), its hold and what it has
        been charged so far, and each step's status."""
        return desk.run_status(run_id)

    @app.tool()
    @governed
    def explain_cost(run_id: str) -> dict[str, Any]:
        """Where a run's GPU time went, per step: GPU-seconds charged, its share of the hold, KV
        block-seconds and tokens where the step reported them (with GPU-seconds per 1,000 tokens), and
        its allocation's idle share; and the run's idle (allocated, unused) GPU time."""
        return desk.explain_cost(run_id)

    @app.tool()
    @governed
    def cancel_run(run_id: str) -> dict[str, Any]:
        """Stop a run as Ctrl-C would: its steps are stopped and charged for what they used, the rest
        of its hold is released. Returns its state after."""
        return desk.cancel_run(run_id)

    def resource(fn):
        @functools.wraps(fn)
        def read(*args, **kwargs):
            try:
                return json.dumps(fn(*args, **kwargs), indent=1, default=str)
            except SlurmgovError as exc:
                raise ResourceError(_one_line(str(exc))) from None

        return read

    @app.resource("slurmgov://accounts", name="accounts", mime_type="application/json",
                  description="The accounts this user may act for, with their budgets now (an account "
                              "without a budget in the ledger says so).")
    @resource
    def accounts() -> list[dict[str, Any]]:
        out = []
        for a in desk.accounts():  # on Slurm, every association: one without a budget must not hide the rest
            try:
                out.append(desk.budget_status(a))
            except UnknownAccount as exc:
                out.append({"account": a, "budget_gpu_hours": None, "note": _one_line(str(exc))})
        return out

    @app.resource("slurmgov://budget/{account}", name="budget", mime_type="application/json",
                  description="An account's budget, held, charged, available, burn rate and run-out date.")
    @resource
    def budget(account: str) -> dict[str, Any]:
        return desk.budget_status(account)

    @app.resource("slurmgov://runs/{account}", name="recent runs", mime_type="application/json",
                  description="This user's most recent runs on an account: state, hold, worst case, charge.")
    @resource
    def runs(account: str) -> list[dict[str, Any]]:
        return desk.recent_runs(account)

    return app


class BearerOnly:
    """ASGI wrapper: an HTTP request without ``Authorization: Bearer <token>`` is answered 401.
    The port is reachable by every user of the host (127.0.0.1 too), and the server acts as the
    user who started it: the token, in a file only that user can read, is what says a client is them."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <the token in the server\'s token file>"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def write_token(path: Path) -> str:
    """A new random token in ``path``, readable by this user only (replacing any earlier one)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def serve_http(app: MCPServer, host: str, port: int, token_file: Path) -> None:
    """Streamable HTTP at http://HOST:PORT/mcp for clients that send the token in ``token_file``.
    A port that cannot be bound is one SlurmgovError line (exit 7)."""
    import anyio
    import uvicorn

    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise SlurmgovError(f"mcp: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    token = write_token(token_file)
    web = BearerOnly(app.streamable_http_app(host=host), token)
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", lifespan="on"))
    shown = f"[{host}]" if ":" in host else host
    log.info("serving MCP at http://%s:%d/mcp (clients send Authorization: Bearer <the token in %s>)", shown,
             sock.getsockname()[1], token_file)
    anyio.run(lambda: server.serve(sockets=[sock]))
