"""Operators' procedures on a state directory: backup and restore (:mod:`.backup`), the
retention of old runs and the garbage collection of blobs (:mod:`.retention`); what they
answer (:mod:`.models`). They work on the stores, so the same code runs inside a live
orchestrator (its admin API) and on a state directory no orchestrator holds (the CLI)."""
