"""Checkpoints travel through the orchestrator: robots offer them after each cell, any robot
resuming a job gets them back.

The transfer (``checkpoint_offer`` -> ``checkpoint_want`` (the blobs the store lacks) ->
``blob_put``... -> ``checkpoint_stored``) is content-addressed: a variable that did not change
is never sent twice, whichever attempt or job made it. A resume is planned here, once
(:meth:`CheckpointRelay.resume_spec`), against the store; the robot that runs it fetches the
blobs it lacks with ``blob_get``.
"""

from __future__ import annotations

import logging

from nbformat import NotebookNode

from casare_nb.core.errors import CasareError
from casare_nb.core.models import Job
from casare_nb.notebook.resume import carry_outputs, plan_resume, prepare_resume, read_output
from casare_nb.notebook.state import CheckpointError, blob_refs
from casare_nb.orchestrator.jobs.book import JobBook
from casare_nb.protocol import (
    BlobAck,
    BlobGet,
    BlobPut,
    CheckpointOffer,
    CheckpointStored,
    CheckpointWant,
    Envelope,
    Error,
    ErrorCode,
    ResumeSpec,
)
from casare_nb.store.interfaces import CheckpointStore

__all__ = ["CheckpointRelay", "error_reply"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")


def error_reply(code: ErrorCode, message: str, msg: Envelope) -> Error:
    """The ``error`` answering ``msg``."""
    return Error(code=code, message=message, reply_to=msg.id)


class CheckpointRelay:
    """Checkpoint offers and blobs from robots into ``checkpoints``; resumes out of it."""

    def __init__(self, book: JobBook, checkpoints: CheckpointStore) -> None:
        self.book = book
        self.checkpoints = checkpoints

    def on_offer(self, robot_id: str, msg: CheckpointOffer) -> Error | None:
        """Answer an offer with the blobs the store lacks, or ``checkpoint_stored``."""
        try:
            missing = self.checkpoints.offer(msg.job_id, msg.attempt, msg.cell_id, msg.manifest)
        except CheckpointError as exc:
            return error_reply(ErrorCode.INVALID_MESSAGE, str(exc), msg)
        except OSError as exc:
            return error_reply(ErrorCode.INTERNAL, f"cannot store the checkpoint: {exc}", msg)
        answer: Envelope
        if missing:
            answer = CheckpointWant(
                job_id=msg.job_id,
                attempt=msg.attempt,
                cell_id=msg.cell_id,
                blobs=missing,
                reply_to=msg.id,
            )
        else:
            answer = CheckpointStored(
                job_id=msg.job_id, attempt=msg.attempt, cell_id=msg.cell_id, reply_to=msg.id
            )
        self.book.link.send_to_robot(robot_id, answer)
        return None

    def on_blob_put(self, robot_id: str, msg: BlobPut) -> Error | None:
        """A blob a checkpoint offer waits for; stored, acknowledged, and the offers it
        completes confirmed with ``checkpoint_stored``. Blobs nobody asked for are refused."""
        link = self.book.link
        if not self.checkpoints.awaited(msg.sha256):
            if self.checkpoints.has_blob(msg.sha256):  # a second copy: already stored
                link.send_to_robot(robot_id, BlobAck(sha256=[msg.sha256], reply_to=msg.id))
                return None
            return error_reply(
                ErrorCode.INVALID_MESSAGE, f"blob {msg.sha256} was not asked for", msg
            )
        try:
            self.checkpoints.write_blob(msg.payload())
        except OSError as exc:
            return error_reply(ErrorCode.INTERNAL, f"cannot store blob {msg.sha256}: {exc}", msg)
        link.send_to_robot(robot_id, BlobAck(sha256=[msg.sha256], reply_to=msg.id))
        for job_id, attempt, cell_id in self.checkpoints.blob_stored(msg.sha256):
            job = self.book.live.get(job_id)
            if job is not None and job.robot_id is not None and job.attempt == attempt:
                link.send_to_robot(
                    job.robot_id,
                    CheckpointStored(job_id=job_id, attempt=attempt, cell_id=cell_id),
                )
        return None

    def on_blob_get(self, robot_id: str, msg: BlobGet) -> list[Envelope]:
        """The blobs a robot needs for a resume: a blob_put each, or an error for one the
        store does not hold."""
        answers: list[Envelope] = []
        for sha in msg.sha256:
            data = self.checkpoints.read_blob(sha)
            if data is None:
                answers.append(
                    error_reply(ErrorCode.UNKNOWN_BLOB, f"blob {sha} is not stored", msg)
                )
            else:
                answers.append(BlobPut.of(data, reply_to=msg.id))
        return answers

    def resume_spec(self, job: Job, nb: NotebookNode) -> ResumeSpec | None:
        """How attempt ``job.attempt`` resumes the newest earlier attempt the store holds a
        notebook-so-far of, planned once here (:func:`~casare_nb.notebook.resume.prepare_resume`
        on the store: ``nb``, the notebook to send, gets the carried outputs; the new attempt
        the manifests up to the restore point) and started as the new attempt's
        notebook-so-far. None (start over) when no earlier attempt left anything, or it
        cannot be planned."""
        prev = self.checkpoints.latest_output(job.job_id, job.attempt - 1)
        if prev is None:
            return None
        try:
            paths = self.checkpoints.attempt(job.job_id, job.attempt)  # the id names a folder
            plan = prepare_resume(
                nb,
                self.checkpoints.state,
                job.job_id,
                from_attempt=prev,
                attempt=job.attempt,
            )
            self.book.sofar.start((job.job_id, job.attempt), job.robot_id, nb)
        except (CasareError, ValueError, OSError) as exc:
            logger.warning("job %s: cannot plan a resume, starting over: %s", job.job_id, exc)
            return None
        manifests = self.checkpoints.manifests_for(paths, plan.inherit_ids)
        blobs = sorted({sha for m in manifests.values() for sha in blob_refs(m)})
        logger.info(
            "job %s attempt %d resumes attempt %d at cell %d (restoring after cell %s)",
            job.job_id,
            job.attempt,
            prev,
            plan.start,
            plan.restore_cell,
        )
        return ResumeSpec(from_attempt=prev, plan=plan, manifests=manifests, blobs=blobs)

    def debug_spec(self, job_id: str, attempt: int, nb: NotebookNode) -> ResumeSpec:
        """Where attempt ``attempt`` of ``job_id`` would resume (the namespace before its
        failed cell, for a debug kernel), planned on the store without changing it: ``nb``
        gets the carried outputs; the manifests are those of ``attempt`` itself.
        ResumeError / ValueError when it cannot be planned."""
        paths = self.checkpoints.attempt(job_id, attempt)
        plan = plan_resume(nb, read_output(paths), paths)
        carry_outputs(nb, read_output(paths), plan)
        manifests = self.checkpoints.manifests_for(paths, plan.inherit_ids)
        blobs = sorted({sha for m in manifests.values() for sha in blob_refs(m)})
        return ResumeSpec(from_attempt=attempt, plan=plan, manifests=manifests, blobs=blobs)
