"""The schema of a state directory's DuckDB file, as ordered migrations.

One file holds what one orchestrator (or local runner) keeps: ``runs`` and ``cells`` (the
history), ``jobs`` and ``tokens``, and the tables of schedules and triggers. Applied by
:mod:`casare_nb.store.database` when a connection opens; a file written by a newer version
is refused.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

# Ordered (version, SQL script) pairs. Each missing one is applied, in order, inside one
# transaction together with its row in ``schema_migrations``. Never edit a released entry:
# append a new version instead. The SQL is what DuckDB and PostgreSQL both read (the store
# backends share it): DOUBLE PRECISION, not DuckDB's DOUBLE (the same type to DuckDB).
#
# No secondary index on runs(status, started_at): DuckDB's ART indexes only speed up point
# lookups / highly selective equality filters, not range scans or ORDER BY, so listing by a
# low-cardinality status gains nothing, while every index costs memory and (in older DuckDB
# releases) makes upserts of indexed columns fragile. Zone maps cover started_at scans.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            run_id VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            workflow_path VARCHAR NOT NULL,
            notebook_sha256 VARCHAR NOT NULL,
            parameters VARCHAR NOT NULL DEFAULT '{}',
            status VARCHAR NOT NULL,
            kernel_name VARCHAR NOT NULL,
            language VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            duration_s DOUBLE PRECISION,
            cells_total INTEGER NOT NULL DEFAULT 0,
            error_name VARCHAR,
            error_message VARCHAR,
            failed_cell INTEGER,
            failed_cell_id VARCHAR,
            output_path VARCHAR,
            resumed_from_attempt INTEGER,
            restored_from_cell INTEGER,
            replayed_cells VARCHAR NOT NULL DEFAULT '[]',
            restore_mode VARCHAR,
            source VARCHAR NOT NULL DEFAULT 'cli',
            PRIMARY KEY (run_id, attempt)
        );
        CREATE TABLE cells (
            run_id VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            cell_index INTEGER NOT NULL,
            cell_id VARCHAR,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            duration_s DOUBLE PRECISION NOT NULL,
            error_name VARCHAR,
            error_message VARCHAR,
            replayed BOOLEAN NOT NULL DEFAULT FALSE,
            output_truncated BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (run_id, attempt, cell_index)
        );
        """,
    ),
    (
        2,
        # The orchestrator's queue (casare_nb.store.queue). Rows are only ever UPDATEd in
        # non-key columns (older DuckDB releases may report false duplicate keys otherwise).
        # A token name may be reused after a revocation, so the hash is the key.
        """
        CREATE TABLE jobs (
            job_id VARCHAR NOT NULL PRIMARY KEY,
            workflow_path VARCHAR NOT NULL,
            parameters VARCHAR NOT NULL DEFAULT '{}',
            priority VARCHAR NOT NULL,
            environment VARCHAR,
            tags VARCHAR NOT NULL DEFAULT '[]',
            status VARCHAR NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL DEFAULT 0,
            created_at TIMESTAMP NOT NULL,
            eligible_at TIMESTAMP NOT NULL,
            robot_id VARCHAR,
            assigned_at TIMESTAMP,
            accepted_at TIMESTAMP,
            finished_at TIMESTAMP,
            error_name VARCHAR,
            error_message VARCHAR,
            resume_from_failed BOOLEAN NOT NULL DEFAULT FALSE,
            source VARCHAR NOT NULL DEFAULT 'api',
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE TABLE tokens (
            token_hash VARCHAR NOT NULL PRIMARY KEY,
            name VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP
        );
        """,
    ),
    (
        3,
        # Failures that count against max_retries, apart from attempts lost with a robot.
        # and the cell an attempt failed at.
        "ALTER TABLE jobs ADD COLUMN failures INTEGER DEFAULT 0;"
        "ALTER TABLE jobs ADD COLUMN failed_cell INTEGER;",
    ),
    (
        4,
        # Schedules and triggers (casare_nb.store.triggers), as data rather than pickles.
        # fires: one row per (schedule, due time) ever claimed, so no due time fires twice,
        # across restarts too. deliveries: webhook deliveries seen (de-duplication, replay
        # refusal). watched_files: files a file-watch trigger has handled. outputs: the
        # values a notebook recorded with casare_nb.output(name, value).
        """
        ALTER TABLE jobs ADD COLUMN trigger VARCHAR;
        CREATE TABLE schedules (
            schedule_id VARCHAR NOT NULL PRIMARY KEY,
            spec VARCHAR NOT NULL,
            paused BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE fires (
            schedule_id VARCHAR NOT NULL,
            due_at TIMESTAMP NOT NULL,
            fired_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            outcome VARCHAR NOT NULL,
            PRIMARY KEY (schedule_id, due_at)
        );
        CREATE TABLE triggers (
            trigger_id VARCHAR NOT NULL PRIMARY KEY,
            kind VARCHAR NOT NULL,
            spec VARCHAR NOT NULL,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE deliveries (
            trigger_id VARCHAR NOT NULL,
            delivery_id VARCHAR NOT NULL,
            signature VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            PRIMARY KEY (trigger_id, delivery_id)
        );
        CREATE TABLE watched_files (
            trigger_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            seen_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            PRIMARY KEY (trigger_id, path)
        );
        CREATE TABLE outputs (
            run_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            cell_index INTEGER,
            recorded_at TIMESTAMP NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        """,
    ),
    (
        5,
        # What started a run (casare_nb.core.history.trigger_label), so the history can
        # group the runs of a schedule or trigger without the jobs table.
        "ALTER TABLE runs ADD COLUMN trigger VARCHAR;",
    ),
    (
        6,
        # Attempts a job may lose with its robot before it is dead (a poison job), and how
        # many it lost (casare_nb.core.dispatch.lost_once_too_often).
        "ALTER TABLE jobs ADD COLUMN max_robot_losses INTEGER DEFAULT 3;"
        "ALTER TABLE jobs ADD COLUMN robot_losses INTEGER DEFAULT 0;",
    ),
    (
        7,
        # A job's execution limits (casare_nb.core.models.JobTimeouts) as JSON, sent to its
        # robot with every attempt; NULL: none.
        "ALTER TABLE jobs ADD COLUMN timeouts VARCHAR;",
    ),
    (
        8,
        # Token roles (casare_nb.core.tokens.TokenRole): NULL for a token created before
        # roles (it acts as admin); and the token that submitted a job (NULL: a trigger, or
        # submitted before this), so a user may cancel and re-run its own jobs.
        "ALTER TABLE tokens ADD COLUMN role VARCHAR;"
        "ALTER TABLE jobs ADD COLUMN submitted_by VARCHAR;",
    ),
    (
        9,
        # The active orchestrator of a shared database, one row per change of hands
        # (casare_nb.store.postgres.PgLeadership); stopped_at NULL: it is active, or died.
        """
        CREATE TABLE leaders (
            epoch INTEGER NOT NULL PRIMARY KEY,
            node_id VARCHAR NOT NULL,
            host VARCHAR NOT NULL,
            pid INTEGER NOT NULL,
            started_at TIMESTAMP NOT NULL,
            stopped_at TIMESTAMP
        );
        """,
    ),
    (
        10,
        # The orchestrator that writes a job's states when several share the database
        # (casare_nb.store.postgres.PgSharedJobs): the one that submitted, claimed or re-ran
        # it last; NULL: one orchestrator only (the embedded default), or written before.
        "ALTER TABLE jobs ADD COLUMN owner VARCHAR;",
    ),
    (
        11,
        # What the monitors of one node hear of the robots and cells of the others, when
        # several orchestrators share the database (casare_nb.store.shared): each node's
        # robot and cell events (kept a while), and the robots connected to each node now
        # (the last event of each).
        """
        CREATE SEQUENCE node_event_seq;
        CREATE TABLE node_events (
            seq BIGINT NOT NULL PRIMARY KEY DEFAULT nextval('node_event_seq'),
            node VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            data VARCHAR NOT NULL,
            robot_id VARCHAR,
            online BOOLEAN NOT NULL,
            noted_at TIMESTAMP NOT NULL
        );
        CREATE INDEX node_events_noted_at ON node_events (noted_at);
        CREATE TABLE node_robots (
            robot_id VARCHAR NOT NULL PRIMARY KEY,
            node VARCHAR NOT NULL,
            data VARCHAR NOT NULL,
            noted_at TIMESTAMP NOT NULL
        );
        """,
    ),
]

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1][0]
"""Schema version this code writes (the last entry of :data:`MIGRATIONS` at import)."""
