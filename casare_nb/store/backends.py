"""Which stores an orchestrator opens: the embedded default (its state directory) or a
PostgreSQL database (``--store postgresql://...``), by the store URL.

The PostgreSQL backend is imported on first use only: psycopg costs ~110 ms of start-up
that an orchestrator on the embedded default does not need."""

from __future__ import annotations

import importlib.util
import os

from casare_nb.core.errors import QueueError
from casare_nb.store.embedded import open_embedded
from casare_nb.store.interfaces import Stores

__all__ = ["EMBEDDED", "check_store_url", "is_postgres_url", "open_stores"]

EMBEDDED = "duckdb"
"""The store URL of the embedded default (also: none given)."""


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return text.startswith(("postgresql://", "postgres://"))


def check_store_url(store: str | None) -> str | None:
    """``store`` as given if it names a backend this casare_nb has (None or ``duckdb``: the
    embedded default), else a one-line QueueError saying what it takes."""
    if store is None or store == EMBEDDED:
        return store
    if is_postgres_url(store):
        if any(importlib.util.find_spec(name) is None for name in ("psycopg", "psycopg_pool")):
            raise QueueError("a PostgreSQL store needs psycopg: pip install 'casare-nb[postgres]'")
        return store
    raise QueueError(
        f"unknown store {store!r}: expected postgresql://USER@HOST:PORT/DATABASE, "
        f"or {EMBEDDED} (the state directory's own database)"
    )


def open_stores(store: str | None, state_dir: str | os.PathLike[str]) -> Stores:
    """The stores ``store`` names (see :func:`check_store_url`), checkpoint files in
    ``state_dir``; nothing is connected until :meth:`Stores.open`."""
    if check_store_url(store) in (None, EMBEDDED):
        return open_embedded(state_dir)
    from casare_nb.store.postgres import open_postgres

    assert store is not None
    return open_postgres(store, state_dir)
