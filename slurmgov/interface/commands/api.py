"""`slurmgov api`: serve budgets, usage, runs, holds and audit as JSON over HTTP for portals;
`slurmgov api token issue`: a site token for a user."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from slurmgov.errors import SlurmgovError
from slurmgov.interface.commands.common import _ledger, _site, out, site_option, wait_option
from slurmgov.ledger.seed import ensure_budget
from slurmgov.policy import authz
from slurmgov.site import model as site_mod

log = logging.getLogger("slurmgov.api")

site_key_option = click.option(
    "--site-key", "site_key_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The key that signs site tokens, mode 0600 (default: $SLURMGOV_HOME/api-site.key).")


def _api_module():
    try:
        from slurmgov.interface import api
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("jwt", "starlette", "uvicorn", "anyio"):
            raise
        raise SlurmgovError("api: needs PyJWT, Starlette and uvicorn: pip install 'slurmgov[api]'") from None
    return api


@click.group("api", invoke_without_command=True)
@site_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than 127.0.0.1 lets other hosts in: put TLS in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8789, show_default=True,
              help="0: any free port (the first line says which).")
@click.option("--slurm-conf-dir", "conf_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Take Slurm's JWTs (scontrol token): the key is slurm.conf's AuthAltParameters=jwt_key.")
@site_key_option
@click.option("--no-site-tokens", is_flag=True, help="Take Slurm's JWTs only, even if a site key exists.")
@wait_option
@click.pass_context
def api_cmd(ctx, site_path, host, port, conf_dir, site_key_path, no_site_tokens):
    """Serve budgets, usage, runs, holds and audit to portals as JSON over HTTP.

    For ColdFront, Open OnDemand or a site's own page: routes under /api/v1, described at
    /api/v1/openapi.json; for those whose role allows also grants, transfers and hold releases
    (audited as the token's user, with its role).

    Every request carries Authorization: Bearer TOKEN: a Slurm JWT (`scontrol token`; needs
    --slurm-conf-dir, and a server user who can read slurm.conf's jwt_key) or a site token
    (`slurmgov api token issue`). A token acts as its user, with that user's role (README,
    "Roles"): admins read and change every account; operators read every account, grant and
    transfer up to their limit and release holds; account managers read their accounts (and
    grant only where the site allows); users read the accounts Slurm associates them with.

    \b
    Examples:
      slurmgov api --slurm-conf-dir /etc/slurm --port 8789
      curl -H "Authorization: Bearer $(scontrol token | cut -d= -f2)" http://127.0.0.1:8789/api/v1/budgets
    """
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = _api_module()
    from slurmgov.slurm.conf_import import jwt_key_path

    site = _site(site_path)
    slurm_key = api.read_key(jwt_key_path(conf_dir), "jwt_key") if conf_dir else None
    key_path = site_key_path or site_mod.slurmgov_home() / "api-site.key"
    site_key = api.site_key(key_path) if not no_site_tokens and key_path.exists() else None
    tokens = api.Tokens(slurm_key, site_key)
    ledger = _ledger(site)
    for name in site.accounts:
        ensure_budget(ledger, site, name)
    log.info("tokens taken: %s", ", ".join(w for w, k in (("Slurm JWTs", slurm_key), (f"site tokens ({key_path})",
                                                                                         site_key)) if k))

    def ready(url):
        out.print(f"api: {url}  (Ctrl-C stops it)", highlight=False, soft_wrap=True)
        sys.stdout.flush()

    api.serve(api.Api(site, ledger, tokens), host, port, ready)


@api_cmd.group("token")
def token():
    """Site tokens: signed by this site's key, for a portal or a user without Slurm's JWT."""


@token.command("issue")
@click.option("--user", required=True, help="The user the token acts as.")
@click.option("--lifespan", type=click.IntRange(min=1), default=3600, show_default=True, metavar="SECONDS",
              help="How long the token is good for.")
@site_option
@site_key_option
def token_issue(user, lifespan, site_path, site_key_path):
    """Print a site token for USER (admins: whoever holds the site key can act as anyone). The
    site key is made (random, mode 0600) the first time; a new key voids every token issued.

    \b
    Example:
      slurmgov api token issue --user alice --lifespan 86400
    """
    api = _api_module()
    site = _site(site_path)
    authz.require_admin(site, "issuing an API token")
    key = api.site_key(site_key_path or site_mod.slurmgov_home() / "api-site.key", create=True)
    click.echo(api.issue_token(key, user, lifespan))
