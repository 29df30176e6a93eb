"""Schedules: the decay formulas hit their end points, and update steps follow INC's timing."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunelab.sparsity.schedules import DECAYS, Schedule, cube, cubic, exp


@settings(max_examples=60, deadline=None)
@given(
    decay=st.sampled_from(sorted(DECAYS)),
    s0=st.floats(0.0, 0.5),
    target=st.floats(0.5, 0.98),
    t=st.floats(0.0, 1.0),
    later=st.floats(0.0, 1.0),
)
def test_every_decay_runs_from_s0_to_target_and_never_decreases(decay, s0, target, t, later):
    fn = DECAYS[decay]
    assert fn(s0, target, 0.0) == pytest.approx(s0, abs=1e-12)
    assert fn(s0, target, 1.0) == pytest.approx(target, abs=1e-12)
    low, high = sorted((t, later))
    assert fn(s0, target, low) <= fn(s0, target, high) + 1e-12
    assert s0 - 1e-12 <= fn(s0, target, t) <= target + 1e-12


def test_formulas_at_mid_point():
    # Hand-worked values of each formula at t = 1/2, from 0 to 0.8.
    assert DECAYS["linear"](0.0, 0.8, 0.5) == pytest.approx(0.4)
    assert DECAYS["cos"](0.0, 0.8, 0.5) == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)))  # 0.2343
    assert exp(0.0, 0.8, 0.5) == pytest.approx(1 - math.sqrt(0.2))  # 0.5528: density x sqrt(0.2)
    assert cube(0.0, 0.8, 0.5) == pytest.approx(0.1)  # INC "cube": slow start
    assert cubic(0.0, 0.8, 0.5) == pytest.approx(0.7)  # Zhu-Gupta: fast start
    assert exp(0.5, 0.9, 0.5) == pytest.approx(1 - 0.5 * math.sqrt(0.2))


def test_iterative_schedule_updates_every_frequency_and_ends_at_target():
    schedule = Schedule(start=10, end=40, frequency=10, decay="linear", target=0.6)
    updates = [step for step in range(60) if schedule.update_index(step) is not None]
    assert updates == [10, 20, 30, 40]
    assert [schedule.sparsity_at_update(schedule.update_index(s)) for s in updates] == pytest.approx([0, 0.2, 0.4, 0.6])
    assert schedule.first_pruning_step == 20
    assert schedule.sparsity_at(5) == 0.0
    assert schedule.sparsity_at(25) == pytest.approx(0.2)
    assert schedule.sparsity_at(100) == pytest.approx(0.6)


def test_window_not_a_multiple_of_frequency_still_reaches_target_at_last_update():
    schedule = Schedule(start=0, end=25, frequency=10, decay="exp", target=0.9)
    assert [s for s in range(40) if schedule.update_index(s) is not None] == [0, 10, 20]
    assert schedule.last_update_step == 20
    assert schedule.sparsity_at_update(2) == pytest.approx(0.9)


@pytest.mark.parametrize("start, end, frequency", [(7, 7, 1), (7, 9, 5)])
def test_one_shot_is_a_single_update_straight_to_target(start, end, frequency):
    schedule = Schedule(start=start, end=end, frequency=frequency, decay="cube", target=0.75)
    assert [s for s in range(20) if schedule.update_index(s) is not None] == [7]
    assert schedule.sparsity_at_update(0) == 0.75
    assert schedule.first_pruning_step == 7
