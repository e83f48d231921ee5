"""Errors a user sees: each carries one clear line, and the CLI exits non-zero with it."""

from __future__ import annotations


class CasareError(Exception):
    """Base of every error that is the user's to fix; ``str(err)`` is one line."""

    exit_code = 2


class WorkflowError(CasareError):
    """The workflow notebook cannot be used: missing, not JSON, not a notebook."""


class JobTooLarge(WorkflowError):
    """A job whose assignment would not fit one protocol frame (HTTP 413)."""


class GraphRunError(CasareError):
    """The graph editor cannot run the workflow now (problems to fix, a run going...)."""


class StateError(CasareError):
    """The state directory cannot be used."""


class RunNotFound(CasareError):
    """No run with that id in the history."""


class ResumeError(CasareError):
    """The run cannot be resumed as asked."""


class SubmissionsClosed(CasareError):
    """The orchestrator takes no new submissions now (HTTP 503)."""


class OrchestratorDraining(SubmissionsClosed):
    """The orchestrator is draining: it takes no new submissions until restarted."""


class SubmissionsPaused(SubmissionsClosed):
    """An operator paused submissions: none is taken until they are resumed."""


class QueueError(RuntimeError):
    """A job operation was refused (unknown job, wrong state, stale attempt...) or its store
    failed."""


class JobExists(QueueError):
    """A new job's id is taken already."""


def one_line(what: BaseException | str) -> str:
    """An error (or text) as one line: white space folded; the type's name if it is empty."""
    text = " ".join(str(what).split())
    if text or isinstance(what, str):
        return text
    return type(what).__name__


class ParameterError(CasareError, ValueError):
    """A parameter problem the user must fix; ``str(err)`` is one line."""
