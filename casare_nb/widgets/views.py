"""The dashboard's sections as ipywidgets 8, thin: each is built once, then ``update``\\ d
from view models (:mod:`.state`) or from data read over HTTP, rendered to HTML by
:mod:`.render`. Buttons call the client through :class:`Actions` and show the server's
one-line answer. Every key widget has a stable CSS class (``docs/jupyter.md``, "Dashboard
CSS classes") for browser tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import ipywidgets as widgets

from casare_nb.api import UpcomingFire
from casare_nb.client import Client, ClientError
from casare_nb.core.failure import Failure
from casare_nb.core.history import FAILED_STATUSES, DailyRuns, RunGroup
from casare_nb.core.models import Priority, RobotStatus
from casare_nb.core.params import ParamSchema
from casare_nb.widgets.chart import HistoryChart
from casare_nb.widgets.fields import css_name, problem_parameter
from casare_nb.widgets.forms import ParamForm
from casare_nb.widgets.render import (
    escape,
    failure_html,
    finished_html,
    groups_html,
    log_html,
    queue_html,
    robot_header_html,
    robot_row_html,
    status_html,
    upcoming_html,
)
from casare_nb.widgets.state import DashboardState
from casare_nb.widgets.viewmodels import (
    ConnectionView,
    FinishedView,
    QueueView,
    RobotView,
    RunningView,
    daily_series,
    workflow_name,
)

__all__ = [
    "Actions",
    "FailureCard",
    "HistoryData",
    "HistoryPanel",
    "JobRow",
    "LogPanel",
    "QueuePanel",
    "RobotRow",
    "RobotsPanel",
    "RunningPanel",
    "StatusBar",
    "SubmitPanel",
    "UpcomingPanel",
]

_T = TypeVar("_T")

ALL_WORKFLOWS: Final = ""
"""The history filter's value for every workflow."""
NOT_CONNECTED: Final = "not connected to the orchestrator"


def _html(value: str = "", css: str | None = None) -> Any:
    widget = widgets.HTML(value)
    if css:
        widget.add_class(css)
    return widget


def _message(text: str, ok: bool) -> str:
    colour = "#2e7d32" if ok else "#c62828"
    return f'<span style="color:{colour};font-size:13px">{escape(text, quote=False)}</span>'


class Actions:
    """What the buttons need: the client in use (None while disconnected), the state (to
    show an answer at once, before its event arrives) and the status bar's notice line."""

    def __init__(
        self,
        client: Callable[[], Client | None],
        state: DashboardState,
        notice: Callable[[str], None],
    ) -> None:
        self.client = client
        self.state = state
        self.notice = notice

    def call(self, what: str, fn: Callable[[Client], _T]) -> _T | None:
        """``fn(client)``; on failure the notice says ``what: <the server's line>``."""
        client = self.client()
        if client is None:
            self.notice(f"{what}: {NOT_CONNECTED}")
            return None
        try:
            result = fn(client)
        except ClientError as exc:
            self.notice(f"{what}: {exc}")
            return None
        return result


# -- status ----------------------------------------------------------------------------------


class StatusBar:
    """One line: the connection (``casare-status``) and the last action's notice."""

    def __init__(self) -> None:
        self.widget: Any = _html(css="casare-status")
        self.view: ConnectionView | None = None
        self.notice = ""

    def update(self, view: ConnectionView) -> None:
        self.view = view
        self.widget.value = status_html(view, self.notice)

    def set_notice(self, text: str) -> None:
        self.notice = text
        if self.view is not None:
            self.widget.value = status_html(self.view, text)

    @property
    def text(self) -> str:
        return str(self.widget.value)


# -- robots ----------------------------------------------------------------------------------


class RobotRow:
    """One robot: its row of the table (``casare-robot-<id>``) and a Drain button
    (``casare-drain-<id>``; "Undrain" while it drains)."""

    def __init__(self, robot_id: str, actions: Actions) -> None:
        self.robot_id = robot_id
        self.actions = actions
        self.view: RobotView | None = None
        self.html: Any = _html()
        self.html.layout = widgets.Layout(width="calc(100% - 110px)")
        self.drain: Any = widgets.Button(description="Drain", layout=widgets.Layout(width="100px"))
        self.drain.add_class(f"casare-drain-{css_name(robot_id)}")
        self.drain.on_click(self._clicked)
        self.widget: Any = widgets.HBox([self.html, self.drain])
        self.widget.add_class(f"casare-robot-{css_name(robot_id)}")

    def update(self, view: RobotView) -> None:
        self.view = view
        self.html.value = robot_row_html(view)
        draining = view.status is RobotStatus.DRAINING
        self.drain.description = "Undrain" if draining else "Drain"
        self.drain.tooltip = (
            "take jobs again" if draining else "take no new job; running ones finish"
        )
        self.drain.disabled = view.status is RobotStatus.OFFLINE

    def _clicked(self, _: Any = None) -> None:
        draining = self.view is not None and self.view.status is RobotStatus.DRAINING
        if draining:
            robot = self.actions.call(
                f"undrain {self.robot_id}", lambda c: c.unpause_robot(self.robot_id)
            )
        else:
            robot = self.actions.call(
                f"drain {self.robot_id}", lambda c: c.pause_robot(self.robot_id)
            )
        if robot is not None:
            self.actions.state.update_robot(robot)
            self.actions.notice(f"robot {self.robot_id} {robot.status.value}")


class RobotsPanel:
    """The robots table (``casare-robots``): a header and a row per robot."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.rows: dict[str, RobotRow] = {}
        self.header: Any = _html(robot_header_html())
        self.header.layout = widgets.Layout(width="calc(100% - 110px)")
        self.empty: Any = _html('<span style="color:#757575">no robot registered</span>')
        self.widget: Any = widgets.VBox([self.header, self.empty])
        self.widget.add_class("casare-robots")

    def update(self, robots: Sequence[RobotView]) -> None:
        ids = [r.robot_id for r in robots]
        for robot_id in list(self.rows):
            if robot_id not in ids:
                del self.rows[robot_id]
        for view in robots:
            row = self.rows.get(view.robot_id)
            if row is None:
                row = self.rows[view.robot_id] = RobotRow(view.robot_id, self.actions)
            row.update(view)
        children = [self.header, *(self.rows[i].widget for i in ids)] if ids else [self.empty]
        if tuple(children) != tuple(self.widget.children):
            self.widget.children = children


# -- queue -----------------------------------------------------------------------------------


class QueuePanel:
    """Queue depth by priority and the oldest waiting job (``casare-queue``), coloured by
    level, and the submissions toggle (``casare-pause-submissions``)."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.view: QueueView | None = None
        self.html: Any = _html(css="casare-queue-table")
        self.pause: Any = widgets.ToggleButton(
            value=False,
            description="Pause submissions",
            tooltip="refuse new submissions, re-runs and trigger fires (503); queued and "
            "running jobs go on",
            layout=widgets.Layout(width="180px"),
        )
        self.pause.add_class("casare-pause-submissions")
        self._updating = False
        self.pause.observe(self._toggled, names="value")
        self.widget: Any = widgets.VBox([self.html, self.pause])
        self.widget.add_class("casare-queue")

    def update(self, view: QueueView) -> None:
        self.view = view
        self.html.value = queue_html(view)
        self._show_paused(view.submissions_paused)

    def _show_paused(self, paused: bool) -> None:
        self._updating = True
        try:
            self.pause.value = paused
            self.pause.description = "Resume submissions" if paused else "Pause submissions"
            self.pause.button_style = "warning" if paused else ""
        finally:
            self._updating = False

    def _toggled(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        paused = bool(change["new"])
        what = "pause submissions" if paused else "resume submissions"
        info = self.actions.call(what, lambda c: c.pause_submissions(paused))
        if info is None:
            self._show_paused(not paused)  # refused: the toggle goes back
            return
        self.actions.state.load_info(info)
        self.actions.notice("submissions paused" if info.submissions_paused else "submissions open")


# -- running jobs ----------------------------------------------------------------------------


class JobRow:
    """A running job (``casare-job-<id>``): a progress bar (``casare-job-bar``), the label
    ``cell i/n · first line · elapsed`` (``casare-job-label``) and Cancel
    (``casare-cancel-<id>``)."""

    def __init__(self, job_id: str, actions: Actions) -> None:
        self.job_id = job_id
        self.actions = actions
        self.view: RunningView | None = None
        self.bar: Any = widgets.IntProgress(
            value=0, min=0, max=1, layout=widgets.Layout(width="180px")
        )
        self.bar.add_class("casare-job-bar")
        self.title: Any = _html()
        self.title.layout = widgets.Layout(width="300px")
        self.label: Any = _html(css="casare-job-label")
        self.label.layout = widgets.Layout(flex="1 1 auto")
        self.cancel: Any = widgets.Button(
            description="Cancel", button_style="danger", layout=widgets.Layout(width="80px")
        )
        self.cancel.add_class(f"casare-cancel-{css_name(job_id)}")
        self.cancel.on_click(self._clicked)
        self.widget: Any = widgets.HBox([self.title, self.bar, self.label, self.cancel])
        self.widget.add_class(f"casare-job-{css_name(job_id)}")

    def update(self, view: RunningView) -> None:
        self.view = view
        total = max(1, view.cells_total)
        with self.bar.hold_sync():
            if self.bar.max != total:
                self.bar.value = min(self.bar.value, total)
                self.bar.max = total
            self.bar.value = min(view.cells_done, total)
            self.bar.bar_style = "info" if view.cells_total else ""
        attempt = f" (attempt {view.attempt})" if view.attempt > 1 else ""
        self.title.value = (
            f'<span style="font-size:13px"><b>{escape(view.workflow)}</b>{escape(attempt)} '
            f'<span style="color:#757575">{escape(view.job_id)} on '
            f"{escape(view.robot_id or '-')}</span></span>"
        )
        self.label.value = (
            f'<span style="font-size:13px;font-family:monospace">{escape(view.label)}</span>'
        )

    def _clicked(self, _: Any = None) -> None:
        job = self.actions.call(f"cancel {self.job_id}", lambda c: c.cancel(self.job_id))
        if job is not None:
            self.cancel.disabled = True
            self.cancel.description = "Cancelling"
            self.actions.notice(f"cancel of job {self.job_id} asked ({job.status.value})")


class RunningPanel:
    """Running jobs (``casare-running``), one :class:`JobRow` each, and the recently
    finished ones (``casare-finished``)."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.rows: dict[str, JobRow] = {}
        self.empty: Any = _html('<span style="color:#757575;font-size:13px">no job running</span>')
        self.jobs: Any = widgets.VBox([self.empty])
        self.jobs.add_class("casare-running")
        self.finished: Any = _html(css="casare-finished")
        self.widget: Any = widgets.VBox(
            [self.jobs, _html("<b>Recently finished</b>"), self.finished]
        )

    def update(self, running: Sequence[RunningView], finished: Sequence[FinishedView]) -> None:
        ids = [r.job_id for r in running]
        for job_id in list(self.rows):
            if job_id not in ids:
                del self.rows[job_id]
        for view in running:
            row = self.rows.get(view.job_id)
            if row is None:
                row = self.rows[view.job_id] = JobRow(view.job_id, self.actions)
            row.update(view)
        children = [self.rows[i].widget for i in ids] if ids else [self.empty]
        if tuple(children) != tuple(self.jobs.children):
            self.jobs.children = children
        self.finished.value = finished_html(finished)


# -- history ---------------------------------------------------------------------------------


@dataclass
class HistoryData:
    """What the history section shows, read over HTTP (by :meth:`HistoryPanel.fetch`)."""

    workflow: str | None
    daily: list[DailyRuns]
    groups: list[RunGroup]
    failures: list[Failure]
    workflows: list[str] = field(default_factory=list)
    """Every workflow path the history knows (the filter's options)."""


class FailureCard:
    """A failed run (``casare-failure-<job>``): where and why it failed, links, a "Re-run
    from failed cell" button (``casare-rerun-<job>``) and an optional parameter form
    (``casare-rerun-params-<job>`` opens it; fields ``casare-rerun-field-<job>-<name>``)
    pre-filled with the job's parameters."""

    def __init__(
        self,
        failure: Failure,
        actions: Actions,
        *,
        known: Iterable[str] = (),
        base_url: str = "/",
    ) -> None:
        self.failure = failure
        self.actions = actions
        self.job_id = failure.run.run_id
        self.known = tuple(known)
        job = css_name(self.job_id)
        self.html: Any = _html(failure_html(failure, self.known, base_url))
        self.rerun: Any = widgets.Button(
            description="Re-run from failed cell",
            button_style="primary",
            layout=widgets.Layout(width="200px"),
        )
        self.rerun.add_class(f"casare-rerun-{job}")
        self.rerun.on_click(self._rerun)
        self.params: Any = widgets.ToggleButton(
            value=False, description="Parameters…", layout=widgets.Layout(width="130px")
        )
        self.params.add_class(f"casare-rerun-params-{job}")
        self.params.observe(self._toggle_form, names="value")
        self.result: Any = _html(css=f"casare-rerun-result-{job}")
        self.form: ParamForm | None = None
        self.form_box: Any = widgets.VBox([])
        self.widget: Any = widgets.VBox(
            [self.html, widgets.HBox([self.rerun, self.params, self.result]), self.form_box],
            layout=widgets.Layout(border="1px solid #eee", padding="4px", margin="2px 0"),
        )
        self.widget.add_class(f"casare-failure-{job}")

    def _schema(self) -> ParamSchema | None:
        run = self.failure.run
        relative = workflow_name(run.workflow_path, self.known)
        if relative not in self.known:
            self.result.value = _message(
                f"{relative} is not among the served workflows: no parameter form", False
            )
            return None
        info = self.actions.call(f"parameters of {relative}", lambda c: c.workflow(relative))
        return info.parameters if info is not None else None

    def open_form(self) -> ParamForm | None:
        """Build (once) and show the parameter form, pre-filled with the job's values."""
        if self.form is None:
            schema = self._schema()
            if schema is None:
                return None
            self.form = ParamForm(
                schema,
                self.failure.run.parameters,
                prefix=f"casare-rerun-field-{css_name(self.job_id)}",
            )
        self.form_box.children = [self.form.widget]
        return self.form

    def _toggle_form(self, change: dict[str, Any]) -> None:
        if change["new"]:
            if self.open_form() is None:
                self.params.value = False
        else:
            self.form_box.children = []

    def _rerun(self, _: Any = None) -> None:
        raw: dict[str, str] | None = None
        form = self.form if self.params.value else None
        if form is not None:
            raw = form.changed()
            problems = form.check(set(raw))
            if problems:
                self.result.value = _message("fix the values marked ⚠ first", False)
                return
        try:
            client = self.actions.client()
            if client is None:
                self.result.value = _message(NOT_CONNECTED, False)
                return
            job = client.rerun(self.job_id, from_failed=True, raw_parameters=raw or None)
        except ClientError as exc:
            detail = str(exc)
            name = problem_parameter(detail)
            if form is not None and name is not None:
                form.show(name, detail)
            self.result.value = _message(detail, False)
            return
        self.rerun.disabled = True
        self.result.value = _message(
            f"re-run queued from the failed cell: job {job.job_id} ({job.status.value})", True
        )
        self.actions.notice(f"job {job.job_id} re-run from its failed cell")


class HistoryPanel:
    """The history (``casare-history``): a workflow filter (``casare-history-workflow``),
    the chart, runs grouped by workflow and schedule/trigger (``casare-history-groups``),
    the last failures (``casare-failures``)."""

    def __init__(
        self,
        actions: Actions,
        *,
        days: int = 14,
        failures: int = 5,
        groups: int = 20,
        base_url: str = "/",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.actions = actions
        self.days = days
        self.limit_failures = failures
        self.limit_groups = groups
        self.base_url = base_url
        self.clock = clock
        self.workflow: Any = widgets.Dropdown(
            options=[("All workflows", ALL_WORKFLOWS)],
            value=ALL_WORKFLOWS,
            description="Workflow",
            layout=widgets.Layout(width="420px"),
        )
        self.workflow.add_class("casare-history-workflow")
        self.refresh_button: Any = widgets.Button(
            description="Refresh", icon="refresh", layout=widgets.Layout(width="100px")
        )
        self.refresh_button.add_class("casare-history-refresh")
        self.chart = HistoryChart()
        self.groups: Any = _html(css="casare-history-groups")
        self.failures: Any = widgets.VBox([])
        self.failures.add_class("casare-failures")
        self.cards: dict[tuple[str, int], FailureCard] = {}
        self.data: HistoryData | None = None
        self.on_filter: Callable[[], None] | None = None
        self._updating = False
        self.workflow.observe(self._filtered, names="value")
        self.refresh_button.on_click(lambda _: self.on_filter and self.on_filter())
        self.widget: Any = widgets.VBox(
            [
                widgets.HBox([self.workflow, self.refresh_button]),
                self.chart.widget,
                _html("<b>Runs by workflow and schedule/trigger</b>"),
                self.groups,
                _html(f"<b>Last {failures} failures</b>"),
                self.failures,
            ]
        )
        self.widget.add_class("casare-history")

    @property
    def selected(self) -> str | None:
        value = str(self.workflow.value or "")
        return value or None

    def _filtered(self, _: dict[str, Any]) -> None:
        if not self._updating and self.on_filter is not None:
            self.on_filter()

    def fetch(self, client: Client) -> HistoryData:
        """Read the history of the selected workflow: daily outcomes, groups, the last
        failures (only the new ones' details: ``failure(job)`` is read once per attempt)."""
        workflow = self.selected
        daily = client.history.daily(days=self.days, workflow=workflow)
        groups = client.history.groups(limit=self.limit_groups, workflow=workflow)
        everything = groups if workflow is None else client.history.groups(limit=200)
        runs = client.history.runs(
            workflow=workflow,
            status=sorted(FAILED_STATUSES),
            limit=self.limit_failures,
        )
        failures: list[Failure] = []
        for run in runs:
            card = self.cards.get((run.run_id, run.attempt))
            if card is not None:
                failures.append(card.failure)
                continue
            with contextlib.suppress(ClientError):  # re-run meanwhile: it did not fail
                failures.append(client.failure(run.run_id))
        paths = sorted({g.workflow_path for g in everything})
        return HistoryData(workflow, daily, groups, failures, paths)

    def show(self, data: HistoryData, known: Iterable[str] = ()) -> None:
        """Put ``data`` on screen (cards of failures already shown are kept as they are)."""
        self.data = data
        known = tuple(known)
        options = [("All workflows", ALL_WORKFLOWS)]
        options += [(workflow_name(p, known), p) for p in data.workflows]
        if data.workflow and data.workflow not in data.workflows:
            options.append((workflow_name(data.workflow, known), data.workflow))
        if options != list(self.workflow.options):
            self._updating = True
            try:
                value = self.workflow.value
                self.workflow.options = options
                self.workflow.value = value if value in dict(options).values() else ""
            finally:
                self._updating = False
        today = self.clock().astimezone(UTC).date()
        self.chart.update(
            daily_series(data.daily, days=self.days, today=today, workflow=data.workflow)
        )
        self.groups.value = groups_html(data.groups, known)
        cards: dict[tuple[str, int], FailureCard] = {}
        for failure in data.failures:
            key = (failure.run.run_id, failure.run.attempt)
            card = self.cards.get(key) or FailureCard(
                failure, self.actions, known=known, base_url=self.base_url
            )
            cards[key] = card
        self.cards = cards
        children: list[Any] = [c.widget for c in cards.values()]
        if not children:
            children = [_html('<span style="color:#757575;font-size:13px">no failure</span>')]
        self.failures.children = children

    def card(self, job_id: str) -> FailureCard | None:
        """The card of the failed job ``job_id``, if shown."""
        return next((c for (j, _), c in self.cards.items() if j == job_id), None)


# -- upcoming --------------------------------------------------------------------------------


class UpcomingPanel:
    """The next due times of the schedules (``casare-upcoming``)."""

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit
        self.fires: list[UpcomingFire] = []
        self.widget: Any = _html(css="casare-upcoming")

    def fetch(self, client: Client) -> list[UpcomingFire]:
        return client.upcoming(self.limit)

    def show(self, fires: list[UpcomingFire], now: datetime) -> None:
        self.fires = fires
        self.widget.value = upcoming_html(fires, now)


# -- submit ----------------------------------------------------------------------------------


class SubmitPanel:
    """Submit a job (``casare-submit``): the workflow (``casare-submit-workflow``), a form
    from its parameters cell (``casare-field-<name>``, errors ``casare-field-error-<name>``),
    the priority (``casare-submit-priority``), Submit (``casare-submit-button``) and the
    answer (``casare-submit-result``). A value ParamSchema.problem refuses is shown on its
    field and nothing is sent."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.workflow: Any = widgets.Dropdown(
            options=[("(choose a workflow)", "")],
            value="",
            description="Workflow",
            layout=widgets.Layout(width="420px"),
        )
        self.workflow.add_class("casare-submit-workflow")
        self.priority: Any = widgets.Dropdown(
            options=[p.value for p in Priority],
            value=Priority.NORMAL.value,
            description="Priority",
            layout=widgets.Layout(width="240px"),
        )
        self.priority.add_class("casare-submit-priority")
        self.button: Any = widgets.Button(description="Submit", button_style="success", icon="play")
        self.button.add_class("casare-submit-button")
        self.button.on_click(self._clicked)
        self.result: Any = _html(css="casare-submit-result")
        self.fields: Any = widgets.VBox([])
        self.fields.add_class("casare-submit-fields")
        self.form: ParamForm | None = None
        self.paths: list[str] = []
        self._updating = False
        self.workflow.observe(self._chosen, names="value")
        self.widget: Any = widgets.VBox(
            [self.workflow, self.fields, self.priority, widgets.HBox([self.button, self.result])]
        )
        self.widget.add_class("casare-submit")

    def show_workflows(self, paths: Sequence[str]) -> None:
        """The workflows to choose from (``client.workflows()``)."""
        paths = list(paths)
        if paths == self.paths:
            return
        self.paths = paths
        self._updating = True
        try:
            value = self.workflow.value
            self.workflow.options = [("(choose a workflow)", ""), *((p, p) for p in paths)]
            self.workflow.value = value if value in paths else ""
        finally:
            self._updating = False

    def _chosen(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        self.choose(str(change["new"] or ""))

    def choose(self, path: str) -> ParamForm | None:
        """Show the form of workflow ``path`` (its parameters read from the orchestrator)."""
        self.form = None
        self.fields.children = []
        self.result.value = ""
        if not path:
            return None
        if self.workflow.value != path:
            self._updating = True
            try:
                self.workflow.value = path
            finally:
                self._updating = False
        info = self.actions.call(f"parameters of {path}", lambda c: c.workflow(path))
        if info is None:
            self.result.value = _message(f"cannot read the parameters of {path}", False)
            return None
        self.form = ParamForm(info.parameters or ParamSchema(has_cell=False))
        self.fields.children = [self.form.widget]
        return self.form

    def _clicked(self, _: Any = None) -> None:
        self.submit()

    def submit(self) -> str | None:
        """Check the form; submit if every field is right. The new job's id, or None (the
        reason is on the fields and in the result line)."""
        path = str(self.workflow.value or "")
        form = self.form
        if not path or form is None:
            self.result.value = _message("choose a workflow first", False)
            return None
        problems = form.check()
        if problems:
            self.result.value = _message(
                f"not submitted: fix {', '.join(sorted(problems))} (marked ⚠)", False
            )
            return None
        client = self.actions.client()
        if client is None:
            self.result.value = _message(NOT_CONNECTED, False)
            return None
        try:
            job = client.submit(
                path, raw_parameters=form.changed(), priority=str(self.priority.value)
            )
        except ClientError as exc:
            detail = str(exc)
            name = problem_parameter(detail)
            if name is not None:
                form.show(name, detail)
            self.result.value = _message(detail, False)
            return None
        self.result.value = _message(f"queued job {job.job_id}", True)
        return job.job_id


# -- event log -------------------------------------------------------------------------------


class LogPanel:
    """The newest lines of the event log (``casare-log``)."""

    def __init__(self) -> None:
        self.widget: Any = _html(css="casare-log")

    def update(self, lines: Sequence[str]) -> None:
        self.widget.value = log_html(lines)
