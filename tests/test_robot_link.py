"""A real robot agent and a real orchestrator, over a real WebSocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from casare_nb.core.models import RobotStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.robot.agent import AgentError, RobotAgent
from casare_nb.robot.config import load_config


def agent_for(orchestrator: Orchestrator, token: str, robot_id: str = "robot-eu-1") -> RobotAgent:
    config = load_config(
        None,
        env={},
        overrides={
            "robot_id": robot_id,
            "environment": "production",
            "tags": ["browser", "eu"],
            "max_concurrent_jobs": 2,
            "orchestrator_url": orchestrator.url,
            "token": token,
            "heartbeat_interval_s": 0.05,
        },
    )
    return RobotAgent(config, metrics=lambda: (12.5, 40.0))


async def test_robot_registers_heartbeats_and_goes_offline_on_stop(tmp_path: Path) -> None:
    """The agent registers with its configured identity, its heartbeats reach the
    orchestrator, and stopping it marks the robot offline."""
    async with Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=0.05) as orch:
        token = await asyncio.to_thread(orch.create_token, "robot-eu-1", TokenRole.ROBOT)
        agent = agent_for(orch, token)
        running = asyncio.ensure_future(agent.run())
        await orch.wait_for(
            lambda: any(r.cpu_percent == 12.5 and r.last_heartbeat for r in orch.robots())
        )
        (robot,) = orch.robots()
        assert robot.robot_id == "robot-eu-1" and robot.status is RobotStatus.ONLINE
        assert (robot.environment, robot.tags, robot.max_concurrent_jobs) == (
            "production",
            ["browser", "eu"],
            2,
        )
        assert robot.memory_percent == 40.0
        agent.stop()
        await asyncio.wait_for(running, 10)
        await orch.wait_for(lambda: orch.robots()[0].status is RobotStatus.OFFLINE)


async def test_revoked_token_disconnects_the_robot_for_good(tmp_path: Path) -> None:
    """Revoking a robot's token closes its connection and the agent stops with an error."""
    async with Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=0.05) as orch:
        token = await asyncio.to_thread(orch.create_token, "robot-eu-1", TokenRole.ROBOT)
        agent = agent_for(orch, token)
        running = asyncio.ensure_future(agent.run())
        await orch.wait_for(lambda: bool(orch.robots()))
        await asyncio.to_thread(orch.revoke_token, "robot-eu-1")
        with pytest.raises(AgentError):
            await asyncio.wait_for(running, 10)
        await orch.wait_for(lambda: orch.robots()[0].status is RobotStatus.OFFLINE)
        assert agent.registrations == 1
