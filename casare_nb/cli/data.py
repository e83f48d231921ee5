"""``casare-nb backup``, ``restore``, ``cleanup``: an operator's procedures on a state
directory's data (:mod:`casare_nb.ops`).

``backup`` and ``cleanup`` go through the orchestrator when one runs on the state directory
(it holds the database: its admin API does them, while jobs run), else work on the state
directory directly. ``restore`` refuses while an orchestrator runs there."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from casare_nb.cli.app import (
    app,
    client_options,
    fail,
    refuse_if_served,
    running_client,
    state_option,
)

if TYPE_CHECKING:
    from casare_nb.client import Client
    from casare_nb.ops.models import BackupSummary, CleanupReport

_BACKUP_WAIT_S = 6 * 3600.0  # the orchestrator answers once the archive is written


def _size(n: int) -> str:
    """Bytes as a short human figure."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop returns


def _rows(tables: dict[str, int]) -> str:
    shown = ("runs", "cells", "jobs", "tokens", "schedules", "triggers")
    return ", ".join(f"{name} {tables.get(name, 0)}" for name in shown)


def _part_file(target: Path) -> tuple[Path, IO[bytes]]:
    """A new private file beside ``target`` to write into (renamed over it once complete)."""
    part = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        fail(f"cannot write {target}: no such directory {target.parent}")
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}")
    return part, open(fd, "wb")


def _download_backup(client: Client, out: IO[bytes]) -> BackupSummary:
    """Ask the orchestrator for a backup and write the archive it streams to ``out``."""
    import httpx

    from casare_nb.client import ClientError
    from casare_nb.ops.models import SUMMARY_HEADER, BackupSummary

    timeout = httpx.Timeout(client.timeout, read=_BACKUP_WAIT_S)
    try:
        # the Client's own connection (auth, TLS, proxies); a body too large to hold in memory
        with client._http.stream("POST", "/api/admin/backup", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ClientError(client._reason(response), response.status_code)
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
            header = response.headers.get(SUMMARY_HEADER, "")
    except httpx.HTTPError as exc:
        raise ClientError(f"backup from {client.url} failed: {exc}") from None
    try:
        return BackupSummary.model_validate_json(header)
    except ValueError:
        raise ClientError(f"{client.url} answered a backup without its summary") from None


@app.command()
@click.option(
    "--to", "to", required=True, type=click.Path(), help="The archive to write (a tar file)."
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what it holds as JSON.")
@client_options
def backup(
    to: str, force: bool, as_json: bool, url: str | None, token: str | None, state_dir: str | None
) -> None:
    """Write a consistent backup of the state directory to a file, while jobs run: the
    history, jobs, tokens (hashed), schedules and triggers (the database's own export), the
    checkpoints and the blobs they name, the output notebooks."""
    target = Path(to).expanduser().absolute()
    if target.is_dir():
        fail(f"--to {to} is a directory: give the name of the file to write")
    if os.path.lexists(target) and not force:
        fail(f"{target} exists: give --force to replace it")
    client = running_client(url, token, state_dir)
    if client is None:
        from casare_nb.notebook.state import StateDir

        state = StateDir(state_dir)
        if not state.root.is_dir():
            fail(f"no state directory {state.root} to back up")
    part, out = _part_file(target)
    try:
        with out:
            if client is not None:
                with client:
                    summary = _download_backup(client, out)
            else:
                from casare_nb.ops.backup import write_backup
                from casare_nb.ops.direct import opened

                with opened(state_dir) as found:
                    summary = write_backup(found.state, found.upkeep, out)
        summary.bytes = part.stat().st_size
        os.replace(part, target)
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    if as_json:
        click.echo(summary.model_dump_json(indent=1))
    else:
        click.echo(
            f"backup written to {target} ({_size(summary.bytes)} in {summary.seconds:.1f} s): "
            f"{_rows(summary.tables)}; {summary.checkpoints} checkpoints, "
            f"{summary.notebooks} notebooks, {summary.blobs} blobs ({_size(summary.blob_bytes)})"
        )
    if summary.missing_blobs:
        click.echo(
            f"warning: {summary.missing_blobs} blobs named by checkpoints were missing or "
            "damaged in the state directory: those checkpoints will not restore",
            err=True,
        )


@app.command()
@click.argument("archive", type=click.Path())
@click.option("--force", is_flag=True, help="Replace the history the state directory holds.")
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
@state_option
def restore(archive: str, force: bool, as_json: bool, state_dir: str | None) -> None:
    """Restore a backup into the state directory (no orchestrator may run on it): the
    archive is verified whole (every file's sha256, the database's rows) before anything is
    replaced."""
    from casare_nb.notebook.state import StateDir
    from casare_nb.ops.backup import restore as restore_archive

    refuse_if_served(state_dir, "stop it before restoring (a restore replaces its database)")
    summary = restore_archive(Path(archive).expanduser(), StateDir(state_dir).root, force=force)
    if as_json:
        click.echo(summary.model_dump_json(indent=1))
        return
    replaced = " (the history it held is replaced)" if summary.replaced else ""
    click.echo(
        f"restored {archive} (taken {summary.created_at:%Y-%m-%d %H:%M:%S} UTC) into "
        f"{summary.state_dir}{replaced}: {_rows(summary.tables)}; "
        f"{summary.checkpoints} checkpoints, {summary.notebooks} notebooks, "
        f"{summary.blobs} blobs"
    )


def _report(report: CleanupReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = [
        f"cleanup of what ended before {report.before:%Y-%m-%d %H:%M:%S} UTC"
        + (" (dry run: nothing was deleted)" if report.dry_run else ""),
        f"{verb}: {report.runs} runs ({report.attempts} attempts, {report.cells} cells), "
        f"{report.jobs} jobs, {report.outputs} outputs, {report.fires} schedule fires, "
        f"{report.folders} run folders, {report.blobs} blobs ({_size(report.blob_bytes)}), "
        f"{report.logs} log files",
        f"kept: {report.blobs_kept} blobs ({report.seconds:.1f} s)",
    ]
    return "\n".join(lines)


@app.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="What ended longer ago than this goes: 90d, 12h, 2w, 30m.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@client_options
def cleanup(
    older_than: str,
    dry_run: bool,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Delete the runs (attempts, cells, outputs, checkpoints, notebooks) and jobs that ended
    longer ago than AGE, never a queued or running one; then the blobs no kept checkpoint
    names, and rotated log files as old."""
    from casare_nb.ops.models import CleanupReport, CleanupRequest
    from casare_nb.ops.retention import cleanup as clean
    from casare_nb.ops.retention import cutoff_of, parse_age

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        fail(str(exc))
    before = cutoff_of(age)
    client = running_client(url, token, state_dir)
    if client is not None:
        body = CleanupRequest(before=before, dry_run=dry_run)
        with client:
            answer = client._request(
                "POST", "/api/admin/cleanup", json=body.model_dump(mode="json"), timeout=3600.0
            )
        report = CleanupReport.model_validate(answer.json())
    else:
        from casare_nb.notebook.state import StateDir
        from casare_nb.ops.direct import opened

        state = StateDir(state_dir)
        if not state.root.is_dir():
            fail(f"no state directory {state.root} to clean up")
        with opened(state_dir) as found:
            report = clean(
                found.checkpoints,
                found.upkeep,
                before,
                dry_run=dry_run,
                logs=state.root / "logs",
            )
    click.echo(report.model_dump_json(indent=1) if as_json else _report(report))
