"""The job manager and its parts: see :mod:`.manager`."""
