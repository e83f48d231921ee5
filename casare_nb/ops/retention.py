"""Retention: what ended before a cutoff goes, then the blobs nothing kept names.

One pass (:func:`cleanup`), inside a live orchestrator or on a state directory nobody holds:

1. the records (:meth:`Upkeep.prune <casare_nb.store.interfaces.Upkeep.prune>`): runs with
   all their attempts, cells and outputs, and jobs, that ended before the cutoff - never a
   job still queued or running, nor a run of one - and old schedule fires (each schedule's
   last one stays);
2. their run folders (checkpoint manifests, output notebooks), and the folders of runs no
   record names any more that did not change since the cutoff;
3. the blobs no manifest left names (:meth:`CheckpointStore.sweep
   <casare_nb.store.interfaces.CheckpointStore.sweep>`, mark and sweep): blobs are shared
   by every run that made the same bytes, so a blob a kept run still names stays, and so
   does one written, offered or named by a manifest written while the sweep runs;
4. rotated log files (``logs/*.log.N``) last written before the cutoff.

A dry run counts all of it and changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from casare_nb.ops.models import CleanupReport
from casare_nb.store.interfaces import CheckpointStore, Pruned, Upkeep

__all__ = ["cleanup", "cutoff_of", "parse_age"]

_AGE: Final = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``, ``30m``, ``45s`` as a duration; ValueError (one line)
    otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(
            f"--older-than {text!r}: give a number and a unit, s, m, h, d or w (e.g. 90d)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _old_logs(folder: Path, before: float) -> list[Path]:
    """Rotated log files (``x.log.1``, ``x.log.2026-01-01``...) last written before
    ``before``; the live ``*.log`` files stay."""
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if ".log." not in entry.name or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    found.append(Path(entry.path))
    return sorted(found)


def cleanup(
    checkpoints: CheckpointStore,
    upkeep: Upkeep | None,
    before: datetime,
    *,
    dry_run: bool = False,
    logs: Path | None = None,
) -> CleanupReport:
    """Remove what ended before ``before`` (see the module docstring): the records through
    ``upkeep`` (None: a state directory without a database), the files through
    ``checkpoints``, rotated logs in ``logs``; what went (or would go: ``dry_run``)."""
    began = time.monotonic()
    before = before.astimezone(UTC)
    pruned = (
        upkeep.prune(before, dry_run=dry_run)
        if upkeep is not None
        else Pruned(run_ids=[], runs=0, cells=0, jobs=0, outputs=0, fires=0)
    )
    expired = set(pruned.run_ids)
    recorded = upkeep.record_ids() if upkeep is not None else set()
    cutoff = before.timestamp()
    doomed = [
        run_id
        for run_id in checkpoints.run_folders()
        if run_id in expired or (run_id not in recorded and checkpoints.changed_at(run_id) < cutoff)
    ]
    if not dry_run:
        for run_id in doomed:
            checkpoints.remove_run(run_id)
    sweep = checkpoints.sweep(ignoring=doomed if dry_run else ())
    sweep.mark()
    blobs, blob_bytes, kept = sweep.delete(dry_run=dry_run)
    old_logs = _old_logs(logs, cutoff) if logs is not None else []
    if not dry_run:
        for path in old_logs:
            path.unlink(missing_ok=True)
    return CleanupReport(
        before=before,
        dry_run=dry_run,
        runs=len(pruned.run_ids),
        attempts=pruned.runs,
        cells=pruned.cells,
        jobs=pruned.jobs,
        outputs=pruned.outputs,
        fires=pruned.fires,
        folders=len(doomed),
        blobs=blobs,
        blob_bytes=blob_bytes,
        blobs_kept=kept,
        logs=len(old_logs),
        seconds=round(time.monotonic() - began, 3),
    )


def cutoff_of(age: timedelta, now: datetime | None = None) -> datetime:
    """The moment ``age`` before ``now`` (default: now), in UTC."""
    return (now or datetime.now(UTC)).astimezone(UTC) - age
