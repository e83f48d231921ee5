"""Robots: agent processes that connect to the orchestrator and run notebook jobs."""
