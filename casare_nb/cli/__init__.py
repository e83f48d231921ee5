"""``casare-nb``: run, resume and inspect workflow notebooks; drive an orchestrator.

:mod:`.app` holds the command group and what the commands share; each module below adds its
commands to it: :mod:`.local` (run here), :mod:`.service` (orchestrator, robot, demo),
:mod:`.jobs`, :mod:`.tokens`, :mod:`.schedules` (through the orchestrator's API),
:mod:`.debug`, :mod:`.lab`. The group imports a command's module when the command is asked
for (``app.COMMAND_MODULES``): a command starts without loading the others.
"""

from __future__ import annotations

from casare_nb.cli.app import app, main

__all__ = ["app", "main"]
