"""The batching rule and the derived-reward maths, on plain lists: no service, no database."""

from __future__ import annotations

import pytest

from teacher_service.learning import rewards
from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import Experience
from teacher_service.learning.trajectories import group_trajectories, reward_to_go
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace


def test_episodes_group_into_complete_trajectories_in_order_and_the_tail_stays_open():
    assert group_trajectories([7, 3, 9, 12, 4], horizon=2) == [[3, 4], [7, 9]]
    assert group_trajectories([5, 1, 2], horizon=5) == []
    assert group_trajectories([2, 1], horizon=1) == [[1], [2]]


def test_reward_to_go_sums_the_rest_of_each_trajectory_in_sequence_order():
    batch = [
        Experience(seq=s, student_id="a", trajectory=t, task_index=0, task_values=[0.0], teacher_input={}, reward=r)
        for s, t, r in [(3, 1, 2.0), (1, 1, 1.0), (2, 1, 1.0), (10, 10, 5.0), (11, 10, -1.0)]
    ]
    assert reward_to_go(batch).tolist() == [2.0, 4.0, 3.0, 4.0, -1.0]


def test_return_progress_compares_with_the_last_report_of_the_same_task():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": "a"}, {"name": "b"}]))
    assert rewards.return_progress(space, [0.0], 5.0, []) is None
    assert rewards.return_progress(space, [0.0], 5.0, [([0.0], 2.0), ([0.0], 9.0)]) == 3.0


def test_return_progress_in_a_box_uses_the_nearest_earlier_task_the_most_recent_among_ties():
    space = build_task_space(BoxTaskSpace(low=[0.0, 0.0], high=[10.0, 1.0]))
    previous = [([9.0, 0.5], 1.0), ([2.0, 0.5], 4.0), ([2.0, 0.5], 100.0)]
    assert rewards.return_progress(space, [2.5, 0.5], 10.0, previous) == 6.0


def test_normalized_divides_by_the_mean_including_itself():
    assert rewards.normalized(3.0, []) == 1.0
    assert rewards.normalized(3.0, [1.0, 2.0]) == pytest.approx(1.5)
    assert rewards.normalized(0.0, [0.0]) == 0.0
