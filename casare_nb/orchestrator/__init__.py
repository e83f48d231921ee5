"""The orchestrator: :mod:`.orchestrator` is the front door over its parts (:mod:`.jobs`,
:mod:`.registry`, :mod:`.metrics`, :mod:`.triggers`, :mod:`.websocket`); :mod:`.http` and
:mod:`.service` stand on it. The map of the parts: ``docs/architecture.md``.

Import the submodules you need; this package imports nothing, so the core stays cheap.
"""
