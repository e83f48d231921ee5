"""``casare-nb status``, ``doctor``, ``autoscale``, ``fires``: the operator's commands.

- ``status``: the orchestrator's ``GET /status`` as one screen; exit 0 when ok or warn (the
  warnings listed), 1 when critical, 2 when no orchestrator runs.
- ``doctor``: pre-flight checks, one line each (``ok``/``warn``/``fail``); exit 1 if any fail.
- ``autoscale``: runs the operator's command with the robot count the queue wants
  (:mod:`casare_nb.core.autoscale` has the rule).
- ``fires``: what each due time of a schedule came to.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from casare_nb.cli.app import EXIT_FAILED, app, client_options, fail, running_client
from casare_nb.cli.present import table

if TYPE_CHECKING:
    from casare_nb.api import Status
    from casare_nb.client import Client
    from casare_nb.core.autoscale import Decision

EXIT_CRITICAL: Final = EXIT_FAILED
CHROMIUM: Final = "/usr/bin/chromium"
MIN_PYTHON: Final = (3, 11)
STATUS_POLL_S: Final = 0.2
"""How often ``status --wait`` asks again."""


def _no_orchestrator(state_dir: str | None) -> None:
    from casare_nb.api import runtime_file_path

    where = runtime_file_path(state_dir).parent
    fail(f"no orchestrator running on {where} (start one with `casare-nb orchestrator`)")


def _status_client(url: str | None, token: str | None, state_dir: str | None) -> Client:
    client = running_client(url, token, state_dir)
    if client is None:
        _no_orchestrator(state_dir)
    assert client is not None
    return client


# -- status ------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"


def status_screen(st: Status) -> str:
    """``st`` as the text of ``casare-nb status``."""
    o = st.orchestrator
    lines = [
        f"status: {st.level.value.upper()}",
        "",
        f"orchestrator  {o.level.value}  casare_nb {o.version}, up {_age(o.uptime_s)}"
        f"{', DRAINING' if o.draining else ''}"
        f"{', submissions paused' if o.submissions_paused else ''}"
        f"{', maintenance on' if o.maintenance else ''}"
        f"{', storage fault: ' + o.storage_fault if o.storage_fault else ''}",
        f"store         {o.store}"
        + (f"  (node {o.node_id}, active, epoch {o.epoch})" if o.epoch is not None else ""),
        "",
    ]
    if st.robots:
        rows = [
            {
                "robot": r.robot_id,
                "status": r.status.value,
                "jobs": f"{r.running_jobs}/{r.max_concurrent_jobs}",
                "cpu": _pct(r.cpu_percent),
                "memory": _pct(r.memory_percent),
                "heartbeat": _age(r.heartbeat_age_s),
                "missed": "" if r.heartbeats_missed is None else r.heartbeats_missed,
                "level": r.level.value,
            }
            for r in st.robots
        ]
        columns = ["robot", "status", "jobs", "cpu", "memory", "heartbeat", "missed", "level"]
        lines += [table(rows, columns), ""]
    else:
        lines += ["robots        none registered", ""]
    q = st.queue
    by = ", ".join(f"{p.value} {n}" for p, n in q.by_priority.items())
    oldest = f", oldest waits {_age(q.oldest_queued_age_s)}" if q.oldest_queued_age_s else ""
    lines.append(f"queue         {q.level.value}  {q.depth} queued ({by}){oldest}")
    f = st.failures
    rate = "-" if f.failure_rate_percent is None else f"{f.failure_rate_percent:g}%"
    lines.append(
        f"failures      {f.level.value}  {f.failed_last_hour} of {f.finished_last_hour} jobs "
        f"ended in the last hour failed ({rate})"
    )
    c = st.connections
    lines.append(
        f"connections   {c.level.value}  {c.failures_last_hour} failures in the last hour "
        f"({c.refused_last_hour} refused, {c.lost_last_hour} lost)"
    )
    lines.append("")
    t = st.thresholds
    limits = [
        ("queue depth", t.queue_depth),
        ("robot CPU %", t.robot_cpu_percent),
        ("robot memory %", t.robot_memory_percent),
        ("failure rate %", t.failure_rate_percent),
        ("heartbeats missed", t.heartbeats_missed),
        ("connection failures/h", t.connection_failures_per_hour),
    ]
    rows = [
        {
            "threshold": name,
            "warn": f"{'>' if lim.strict else '>='} {lim.warn:g}",
            "critical": f"{'>' if lim.strict else '>='} {lim.critical:g}",
        }
        for name, lim in limits
    ]
    lines.append(table(rows, ["threshold", "warn", "critical"]))
    if st.breaches:
        lines += ["", "breached:", *(f"  {line}" for line in st.breaches)]
    return "\n".join(lines)


def _status_waiting(
    wait_s: float, url: str | None, token: str | None, state_dir: str | None
) -> Status:
    """The status, asked again every STATUS_POLL_S for up to ``wait_s`` while no orchestrator
    runs or it does not answer yet (an orchestrator just started in the background); the
    last reason in one line when time runs out."""
    from casare_nb.client import ClientError

    deadline = time.monotonic() + wait_s
    while True:
        client = running_client(url, token, state_dir)
        if client is not None:
            try:
                with client:
                    return client.status()
            except ClientError as exc:
                if exc.status is not None or time.monotonic() >= deadline:
                    raise  # the orchestrator answered: a refusal is not a start-up
        elif time.monotonic() >= deadline:
            _no_orchestrator(state_dir)
        time.sleep(STATUS_POLL_S)  # nothing to wait on but the next try


@app.command()
@click.option("--json", "as_json", is_flag=True, help="The status as JSON.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Wait up to SECONDS for an orchestrator that is starting to answer.",
)
@client_options
def status(
    as_json: bool, wait_s: float, url: str | None, token: str | None, state_dir: str | None
) -> None:
    """One screen: the orchestrator, robots, queue by priority, the last hour's failures and
    connection failures, judged against the thresholds. Exit 0 when ok or warn, 1 when
    critical, 2 when no orchestrator runs (after --wait)."""
    if wait_s > 0:
        st = _status_waiting(wait_s, url, token, state_dir)
    else:
        client = _status_client(url, token, state_dir)
        with client:
            st = client.status()
    if as_json:
        click.echo(st.model_dump_json(indent=1))
    else:
        click.echo(status_screen(st))
    sys.exit(EXIT_CRITICAL if st.level.value == "critical" else 0)


# -- fires -------------------------------------------------------------------------------


@app.command()
@click.argument("schedule_id")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def fires(
    schedule_id: str,
    limit: int,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """What each due time of SCHEDULE_ID came to (submitted, skipped ...), newest first."""
    client = _status_client(url, token, state_dir)
    with client:
        found = client.fires(schedule_id, limit)
    if as_json:
        click.echo(json.dumps([f.model_dump(mode="json") for f in found], indent=1))
        return
    if not found:
        click.echo(f"schedule {schedule_id} has not fired yet")
        return
    rows = [
        {
            "due": f"{f.due_at:%Y-%m-%d %H:%M:%S}",
            "fired": f"{f.fired_at:%Y-%m-%d %H:%M:%S}",
            "outcome": f.outcome,
            "job_id": f.job_id or "",
        }
        for f in found
    ]
    click.echo(table(rows, ["due", "fired", "outcome", "job_id"]))


# -- autoscale ---------------------------------------------------------------------------


def _say(line: str) -> None:
    click.echo(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} autoscale: {line}")


@dataclass
class Scaler:
    """The autoscale loop's state and its I/O, injectable for tests: ``status()`` reads the
    orchestrator, ``run(command, count)`` runs the operator's command (its exit code)."""

    command: str
    minimum: int
    maximum: int
    idle_rounds: int
    status: Callable[[], Status]
    run: Callable[[str, int], int]
    say: Callable[[str], None] = _say
    idle_before: int = 0
    asked: int | None = None

    def round(self) -> tuple[Decision, int | None]:
        """One round: read, decide, run the command if the count changes; (the decision,
        the command's exit code or None when not run)."""
        from casare_nb.core.autoscale import Observation, decide

        st = self.status()
        working = [r for r in st.robots if r.status.value in ("online", "busy")]
        seen = Observation(
            queue_depth=st.queue.depth,
            robots=len(working),
            idle_robots=sum(1 for r in working if r.running_jobs == 0),
        )
        decision = decide(
            seen,
            st.thresholds.queue_depth,
            minimum=self.minimum,
            maximum=self.maximum,
            idle_before=self.idle_before,
            idle_rounds=self.idle_rounds,
        )
        self.idle_before = decision.idle_rounds
        if not decision.changes(seen.robots) or decision.wanted == self.asked:
            self.say(f"{decision.reason}; {seen.robots} robots, wanted {decision.wanted}")
            return decision, None
        code = self.run(self.command, decision.wanted)
        self.say(
            f"{decision.reason}; {seen.robots} robots -> {decision.wanted}: ran "
            f"{self.command!r} (exit {code})"
        )
        if code == 0:
            self.asked = decision.wanted
        return decision, code


def run_scale_command(command: str, count: int) -> int:
    """Run ``command`` in a shell with ``{count}`` replaced and CASARE_WANTED_ROBOTS set."""
    env = {**os.environ, "CASARE_WANTED_ROBOTS": str(count)}
    try:
        done = subprocess.run(command.replace("{count}", str(count)), shell=True, env=env)
    except OSError as exc:
        click.echo(f"casare-nb: autoscale: cannot run {command!r}: {exc}", err=True)
        return 127
    return done.returncode


@app.command()
@click.option(
    "--command",
    "command",
    required=True,
    help="Shell command that makes the robot count N: given N as {count} in the command and "
    "as $CASARE_WANTED_ROBOTS.",
)
@click.option("--min", "minimum", type=click.IntRange(0), default=1, show_default=True)
@click.option("--max", "maximum", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between rounds.",
)
@click.option(
    "--idle-rounds",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Rounds in a row with an empty queue and an idle robot before one robot fewer.",
)
@click.option("--once", is_flag=True, help="One round, then exit (1 if the command failed).")
@client_options
def autoscale(
    command: str,
    minimum: int,
    maximum: int,
    interval: float,
    idle_rounds: int,
    once: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Run --command with the robot count the queue wants: one more above the queue depth's
    warning, two more above its critical level, one fewer after --idle-rounds rounds of an
    empty queue and an idle robot; within --min and --max."""
    if maximum < minimum:
        fail(f"--max {maximum} is below --min {minimum}")
    if not command.strip():
        fail("--command is empty")
    client = _status_client(url, token, state_dir)
    scaler = Scaler(
        command=command,
        minimum=minimum,
        maximum=maximum,
        idle_rounds=idle_rounds,
        status=client.status,
        run=run_scale_command,
    )
    with client:
        if once:
            _, code = scaler.round()
            sys.exit(EXIT_FAILED if code else 0)
        loop_rounds(scaler, interval, time.sleep)


def loop_rounds(
    scaler: Scaler, interval: float, wait: Callable[[float], None], rounds: int | None = None
) -> None:
    """Rounds every ``interval`` s (``wait`` sleeps), ``rounds`` of them (None: forever); an
    orchestrator that does not answer is told and tried again next round."""
    from casare_nb.core.errors import CasareError

    done = 0
    while rounds is None or done < rounds:
        try:
            scaler.round()
        except CasareError as exc:
            scaler.say(f"cannot read the orchestrator: {exc}")
        done += 1
        if rounds is None or done < rounds:
            wait(interval)


# -- doctor ------------------------------------------------------------------------------


@dataclass
class Check:
    """One line of ``casare-nb doctor``."""

    status: str  # ok, warn, fail
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.detail}"


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("ok", "python", f"{version} ({sys.executable})")
    return Check("fail", "python", f"{version}: casare_nb needs Python 3.11 or newer")


def check_kernel(timeout: float) -> Check:
    """The python3 kernelspec is found, a kernel starts and answers within ``timeout``."""
    import asyncio

    from casare_nb.notebook.kernels import KernelSession, _find_kernel_spec

    spec = _find_kernel_spec("python3")
    if spec is None:
        return Check("fail", "kernel", "no python3 kernelspec (pip install ipykernel)")

    async def start() -> float:
        began = time.monotonic()
        session = await KernelSession.start("python3", startup_timeout=timeout)
        try:
            await session.call("1 + 1", timeout=timeout)
        finally:
            await session.shutdown()
        return time.monotonic() - began

    try:
        took = asyncio.run(asyncio.wait_for(start(), timeout + 5))
    except Exception as exc:  # any failure is the check's answer
        why = " ".join(str(exc).split()) or type(exc).__name__
        return Check("fail", "kernel", f"python3 kernel did not start and answer: {why[:200]}")
    argv0 = spec.argv[0] if spec.argv else "?"
    return Check("ok", "kernel", f"python3 ({argv0}) started and answered in {took:.1f} s")


def check_chromium(path: str = CHROMIUM) -> Check:
    if os.access(path, os.X_OK):
        return Check("ok", "chromium", f"{path} (browser nodes)")
    return Check("warn", "chromium", f"{path} not found: only browser nodes need it")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _configured_store(config_path: str | None) -> str | None:
    """The store the orchestrator's settings name (None: the embedded default, or settings
    that do not load: the ports check says why)."""
    from casare_nb.orchestrator.config import ConfigError, load_orchestrator_config

    try:
        return load_orchestrator_config(config_path).store
    except ConfigError:
        return None


def check_settings_ports(
    state: Path,
    config_path: str | None,
    host: str | None,
    port: int | None,
    http_port: int | None,
) -> Check:
    """The ports check on the address the orchestrator would take: the flags over its
    settings (file, ``.env``, ``CASARE_ORCH_*``); port 0 (a free port at start) is not
    checked. Settings that do not load fail the check with their one-line reason."""
    from casare_nb.orchestrator.config import ConfigError, load_orchestrator_config

    flags = {"host": host, "port": port, "http_port": http_port}
    try:
        config = load_orchestrator_config(config_path, overrides=flags)
    except ConfigError as exc:
        return Check("fail", "ports", f"the orchestrator's settings: {exc}")
    ports = [p for p in (config.port, config.http_port) if p]
    if not ports:
        return Check("ok", "ports", "the orchestrator takes free ports at start (port 0)")
    return check_ports(state, config.host, ports)


def check_ports(state: Path, host: str, ports: list[int]) -> Check:
    from casare_nb.api import RUNTIME_FILE, pid_alive, read_runtime_file

    running = read_runtime_file(state / RUNTIME_FILE)
    if running is not None and pid_alive(running.pid):
        return Check(
            "ok", "ports", f"the orchestrator runs (pid {running.pid}, {running.http_url})"
        )
    taken = [p for p in ports if not _port_free(host, p)]
    if taken:
        listed = ", ".join(f"{host}:{p}" for p in taken)
        return Check("fail", "ports", f"{listed} in use (another program? pick other ports)")
    return Check("ok", "ports", ", ".join(f"{host}:{p}" for p in ports) + " free")


def check_state_dir(state: Path) -> Check:
    if not state.exists():
        parent = next((p for p in state.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK | os.X_OK):
            return Check("ok", "state dir", f"{state} does not exist yet; it can be created")
        return Check("fail", "state dir", f"{state} cannot be created ({parent} not writable)")
    if not state.is_dir():
        return Check("fail", "state dir", f"{state} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=state, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("fail", "state dir", f"{state} is not writable: {exc.strerror}")
    mode = stat.S_IMODE(state.stat().st_mode)
    if mode & 0o077:
        return Check(
            "warn",
            "state dir",
            f"{state} is mode {mode:04o}, readable by others (tokens, history): chmod 700 it",
        )
    return Check("ok", "state dir", f"{state} writable, private ({mode:04o})")


def _live_tokens(state: Path, store: str | None = None) -> list[str] | None:
    """Names of the live tokens of ``state`` (or of the PostgreSQL ``store`` its
    orchestrator is configured with) other than the services' own (None: cannot tell)."""
    from casare_nb.api import RUNTIME_FILE, pid_alive, read_runtime_file

    running = read_runtime_file(state / RUNTIME_FILE)
    if running is not None and pid_alive(running.pid):
        from casare_nb.client import Client

        with Client.local(state) as client:
            rows = [t.model_dump() for t in client.tokens()]
    else:
        from casare_nb.notebook.state import StateDir
        from casare_nb.store.backends import EMBEDDED, open_stores

        embedded = store in (None, EMBEDDED)
        if embedded and not StateDir(state).history_path.exists():
            return []
        stores = open_stores(store, state)
        try:
            rows = stores.tokens.list_tokens()
        finally:
            stores.close()
    return [
        r["name"]
        for r in rows
        if r["revoked_at"] is None and not str(r["name"]).startswith("local-admin-")
    ]


def check_tokens(state: Path, store: str | None = None) -> Check:
    """Live tokens exist where the orchestrator keeps them (``store``: its settings'; a
    PostgreSQL store that cannot be reached fails the check with the reason)."""
    try:
        names = _live_tokens(state, store)
    except Exception as exc:  # a locked or broken database: say it
        return Check("fail", "tokens", f"cannot read the tokens: {' '.join(str(exc).split())}")
    if not names:
        return Check(
            "warn",
            "tokens",
            "none: remote robots and users cannot connect "
            "(casare-nb token create NAME --role robot)",
        )
    shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
    return Check("ok", "tokens", f"{len(names)} live ({shown})")


_EPOCH_FLOOR: Final = datetime(2024, 1, 1, tzinfo=UTC)
_SKEW_S: Final = 5.0


def check_clock(state: Path) -> Check:
    """The wall clock is after 2024 and after this installation's files; the filesystem
    agrees with it (a file written now has now's mtime); nothing in the state directory is
    from the future (schedules and retention read these times)."""
    now = time.time()
    when = datetime.fromtimestamp(now, UTC)
    if when < _EPOCH_FLOOR:
        return Check("fail", "clock", f"the system clock says {when:%Y-%m-%d}: set the time")
    installed = Path(__file__).stat().st_mtime
    if installed - now > 60:
        return Check("fail", "clock", "the system clock is behind this installation's files")
    probe_dir = state if state.is_dir() else Path(tempfile.gettempdir())
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".doctor-clock-") as probe:
            skew = os.stat(probe.name).st_mtime - time.time()
    except OSError:
        skew = 0.0
    if abs(skew) > _SKEW_S:
        return Check("warn", "clock", f"{probe_dir}'s file times differ by {skew:+.0f} s")
    future = []
    if state.is_dir():
        for entry in state.iterdir():
            with_time = entry.lstat().st_mtime
            if with_time - now > 300:
                future.append(entry.name)
    if future:
        return Check("warn", "clock", f"files from the future in {state}: {', '.join(future)}")
    offset = time.strftime("%z")
    return Check("ok", "clock", f"{when:%Y-%m-%d %H:%M:%S} UTC (local offset {offset})")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The orchestrator's settings file (default: ./orchestrator.yaml if it exists).",
)
@click.option("--host", help="Orchestrator address (default: its settings, else 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Its WebSocket port (default: its settings, CASARE_ORCH_PORT, else 8765).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="Its HTTP port (default: its settings, CASARE_ORCH_HTTP_PORT, else 8766).",
)
@click.option("--no-auth", is_flag=True, help="Do not check that tokens are configured.")
@click.option("--no-kernel", is_flag=True, help="Do not start a kernel.")
@click.option(
    "--kernel-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds a kernel gets to start and answer.",
)
@click.option(
    "--state-dir",
    type=click.Path(),
    envvar="CASARE_HOME",
    help="State directory (checked, not created). Default: $CASARE_HOME or ./.casare",
)
def doctor(
    as_json: bool,
    config_path: str | None,
    host: str | None,
    port: int | None,
    http_port: int | None,
    no_auth: bool,
    no_kernel: bool,
    kernel_timeout: float,
    state_dir: str | None,
) -> None:
    """Pre-flight checks, one line each (ok, warn, fail): Python, a kernel starts and
    answers, Chromium, the orchestrator's ports, the state directory, tokens, the clock.
    Exit 1 if any fails."""
    from casare_nb.api import runtime_file_path

    state = runtime_file_path(state_dir).parent
    checks: list[Check] = [check_python()]
    if not no_kernel:
        checks.append(check_kernel(kernel_timeout))
    checks += [
        check_chromium(),
        check_settings_ports(state, config_path, host, port, http_port),
        check_state_dir(state),
    ]
    if not no_auth:
        checks.append(check_tokens(state, _configured_store(config_path)))
    checks.append(check_clock(state))
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        for check in checks:
            click.echo(check.line())
        counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
        click.echo(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    sys.exit(EXIT_FAILED if failed else 0)
