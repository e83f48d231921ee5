"""The orchestrator: robots and monitors over WebSocket (``server``), robot state (``registry``).

Import the submodules you need; this package imports nothing, so the core stays cheap.
"""
