"""``casare-nb token create|revoke|list``: through the orchestrator when one runs on the
state directory, else on its database directly (the one writer being this command).

Each token has a role (``--role``): ``robot`` connects as a robot only; ``user`` (the
default) submits, reads, and cancels or re-runs its own jobs; ``admin`` does everything
(tokens, draining, schedules and triggers, anyone's jobs). Through the orchestrator, these
commands need an admin token (the runtime file's is one)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import click

from casare_nb.cli.app import app, client_options, fail, running_client, store_option
from casare_nb.cli.present import table

_ROLES = ("robot", "user", "admin")  # casare_nb.core.tokens.TokenRole (a test keeps them equal)


@app.group()
def token() -> None:
    """Bearer tokens for robots, users and admins (stored hashed)."""


class _TokenStore:
    """The tokens of ``store`` (None: the state dir's own database), opened directly when no
    orchestrator runs on the state dir."""

    def __init__(self, state_dir: str | None, store: str | None) -> None:
        from casare_nb.notebook.state import StateDir

        self.state = StateDir(state_dir)
        self.store = store
        self._stores: Any = None

    def exists(self) -> bool:
        """Whether there are tokens to read (a state dir's database is not created by it)."""
        return self.store not in (None, "duckdb") or self.state.history_path.exists()

    def __enter__(self) -> Any:
        from casare_nb.store.backends import open_stores

        try:
            self.state.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create state directory {self.state.root}: {exc.strerror}")
        self._stores = _queue_call(lambda: open_stores(self.store, self.state.root))
        return self._stores.tokens

    def __exit__(self, *exc: object) -> None:
        if self._stores is not None:
            self._stores.close()


def _queue_call(call: Callable[[], Any]) -> Any:
    from casare_nb.core.errors import QueueError

    try:
        return call()
    except QueueError as exc:
        fail(str(exc))


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(_ROLES),
    default="user",
    show_default=True,
    help="robot: connect as a robot only; user: submit, read, cancel and re-run its own "
    "jobs; admin: everything (tokens, draining, schedules, triggers, anyone's jobs).",
)
@client_options
@store_option
def token_create(
    name: str,
    role: str,
    url: str | None,
    token: str | None,
    state_dir: str | None,
    store: str | None,
) -> None:
    """Create the token NAME with its role and print it (shown only this once)."""
    from casare_nb.api import TOKEN_NAME_PATTERN
    from casare_nb.core.tokens import TokenRole

    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        fail(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            value = client.create_token(name, TokenRole(role))
    else:
        with _TokenStore(state_dir, store) as tokens:
            value = _queue_call(lambda: tokens.create_token(name, TokenRole(role)))
    click.echo(value)
    click.echo(f"token {name} ({role}) created; it is shown only this once", err=True)


@token.command("revoke")
@click.argument("name")
@client_options
@store_option
def token_revoke(
    name: str, url: str | None, token: str | None, state_dir: str | None, store: str | None
) -> None:
    """Revoke the token NAME (its connections are closed)."""
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            client.revoke_token(name)
    else:
        with _TokenStore(state_dir, store) as tokens:
            _queue_call(lambda: tokens.revoke_token(name))
    click.echo(f"token {name} revoked")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
@store_option
def token_list(
    as_json: bool, url: str | None, token: str | None, state_dir: str | None, store: str | None
) -> None:
    """Every token: name, role, created, revoked (never the token). A token without a role
    was created before roles: it acts as admin (recreate it with --role)."""
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            rows = [t.model_dump() for t in client.tokens()]
    else:
        direct = _TokenStore(state_dir, store)
        if not direct.exists():
            rows = []
        else:
            with direct as tokens:
                rows = _queue_call(tokens.list_tokens)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo("no tokens")
        return
    shown = [
        {
            "name": r["name"],
            "role": r.get("role") or "none (admin)",
            "created": f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            "revoked": f"{r['revoked_at']:%Y-%m-%d %H:%M:%S}" if r["revoked_at"] else "",
        }
        for r in rows
    ]
    click.echo(table(shown, ["name", "role", "created", "revoked"]))
