"""Everything that submits jobs besides a person: schedules, webhooks, file watch, chaining.

:mod:`.hub` holds them together (:class:`~.hub.Triggers`); each reaches the orchestrator's
jobs only through the narrow :class:`~.desk.JobDesk`.
"""
