"""``casare-nb migrate`` and ``casare-nb export``: the schema of a store brought up to date,
and a state directory's records moved into PostgreSQL (:mod:`casare_nb.ops.move`)."""

from __future__ import annotations

import click

from casare_nb.cli.app import app, fail, state_option, store_option


@app.command()
@store_option
@state_option
def migrate(store: str | None, state_dir: str | None) -> None:
    """Bring a store's schema up to date (orchestrators also do it when they start)."""
    from casare_nb.core.errors import QueueError, StateError
    from casare_nb.store.backends import open_stores
    from casare_nb.store.schema import SCHEMA_VERSION

    try:
        stores = open_stores(store, _state_root(state_dir))
        try:
            stores.open()  # migrates, or refuses a schema newer than this casare_nb's
        finally:
            stores.close()
    except (QueueError, StateError) as exc:
        fail(str(exc))
    click.echo(f"{stores.where}: schema version {SCHEMA_VERSION}")


@app.command("export")
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False),
    envvar="CASARE_HOME",
    help="State directory whose records move (default: $CASARE_HOME or ./.casare).",
)
@click.option("--to", "target", required=True, metavar="URL", help="postgresql://... (empty).")
def export_(source: str | None, target: str) -> None:
    """Copy a state directory's records (jobs, history, schedules, triggers, tokens, outputs)
    into an empty PostgreSQL database, all or nothing. Checkpoint files stay in the state
    directory: start the orchestrators on the database with --state-dir on it."""
    from casare_nb.core.errors import QueueError, StateError
    from casare_nb.store.backends import check_store_url, is_postgres_url

    if not is_postgres_url(target):
        fail(f"--to {target!r}: expected postgresql://USER@HOST:PORT/DATABASE")
    try:
        check_store_url(target)
        from casare_nb.ops.move import export_state

        counts = export_state(source, target)
    except (QueueError, StateError) as exc:
        fail(str(exc))
    total = sum(counts.values())
    shown = ", ".join(f"{table} {n}" for table, n in counts.items() if n)
    click.echo(f"exported {total} rows ({shown or 'none'})")


def _state_root(state_dir: str | None) -> str:
    from casare_nb.notebook.state import StateDir

    return str(StateDir(state_dir).root)
