"""``casare-nb token create|revoke|list``: through the orchestrator when one runs on the
state directory, else on its database directly (the one writer being this command)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import click

from casare_nb.cli.app import app, client_options, fail, running_client
from casare_nb.cli.present import table


@app.group()
def token() -> None:
    """Bearer tokens for robots, monitors and clients (stored hashed)."""


class _TokenStore:
    """The state dir's tokens, opened directly when no orchestrator runs."""

    def __init__(self, state_dir: str | None) -> None:
        from casare_nb.notebook.state import StateDir

        self.state = StateDir(state_dir)
        self._stores: Any = None

    def __enter__(self) -> Any:
        from casare_nb.store.embedded import open_embedded

        try:
            self.state.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create state directory {self.state.root}: {exc.strerror}")
        self._stores = open_embedded(self.state.root)
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
@client_options
def token_create(name: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Create the token NAME and print it (shown only this once)."""
    from casare_nb.api import TOKEN_NAME_PATTERN

    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        fail(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            value = client.create_token(name)
    else:
        with _TokenStore(state_dir) as store:
            value = _queue_call(lambda: store.create_token(name))
    click.echo(value)
    click.echo(f"token {name} created; it is shown only this once", err=True)


@token.command("revoke")
@click.argument("name")
@client_options
def token_revoke(name: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Revoke the token NAME (its connections are closed)."""
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            client.revoke_token(name)
    else:
        with _TokenStore(state_dir) as store:
            _queue_call(lambda: store.revoke_token(name))
    click.echo(f"token {name} revoked")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def token_list(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Every token: name, created, revoked (never the token)."""
    client = running_client(url, token, state_dir)
    if client is not None:
        with client:
            rows = [t.model_dump() for t in client.tokens()]
    else:
        from casare_nb.notebook.state import StateDir

        if not StateDir(state_dir).history_path.exists():
            rows = []
        else:
            with _TokenStore(state_dir) as store:
                rows = _queue_call(store.list_tokens)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo("no tokens")
        return
    shown = [
        {
            "name": r["name"],
            "created": f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            "revoked": f"{r['revoked_at']:%Y-%m-%d %H:%M:%S}" if r["revoked_at"] else "",
        }
        for r in rows
    ]
    click.echo(table(shown, ["name", "created", "revoked"]))
