"""The orchestrator's HTTP API (FastAPI), one router per part: :mod:`.probes` (health,
metrics), :mod:`.jobs`, :mod:`.schedules`, :mod:`.triggers` (and webhooks), :mod:`.robots`
(robots, drain, info), :mod:`.tokens`; :mod:`.deps` holds what they share (the orchestrator,
the bearer-token check, one-line errors); :mod:`.app` puts them together and :mod:`.server`
serves them with uvicorn. This package is the only part of casare_nb that imports FastAPI
and uvicorn. Routes: ``docs/http-api.md``.
"""
