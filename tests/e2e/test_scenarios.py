"""Seeded scenarios: whatever happens, every stream table ends equal to its query.

Each run prints its seed; ``PGTRICKLE_SCENARIO_SEED=<seed>`` reruns the same actions. The
default runs take a minute or two each; ``-m slow`` runs ten times as many steps.
"""

from __future__ import annotations

import pytest

from tests.fixtures.actions import ACTIONS, CONCURRENCY, CRASHES, EVERYTHING
from tests.fixtures.scenario import Scenario, World


def test_concurrent_writers_leave_every_stream_table_equal_to_its_query(world: World) -> None:
    Scenario(world, ACTIONS, CONCURRENCY).run(steps=30)
    assert world.writer.stats.committed > 0


def test_kill_9_and_server_crashes_lose_nothing_and_apply_nothing_twice(world: World) -> None:
    Scenario(world, ACTIONS, CRASHES).run(steps=40)


def test_declarations_sources_and_connections_changing_under_load(world: World) -> None:
    Scenario(world, ACTIONS, EVERYTHING).run(steps=60)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["concurrency", "crashes", "everything"])
def test_soak_scenarios_of_many_steps(world: World, profile: str) -> None:
    weights = {"concurrency": CONCURRENCY, "crashes": CRASHES, "everything": EVERYTHING}[profile]
    Scenario(world, ACTIONS, weights).run(steps=400)
