"""Teachers on synthetic rewards, in process: they learn what they are rewarded for, and checkpoint exactly."""

from __future__ import annotations

import numpy as np
import torch

from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import Context, Experience, build_teacher
from teacher_service.learning.trajectories import reward_to_go
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace, PresetTaskSpace


def run_updates(teacher, reward_of, updates: int, rng: np.random.Generator) -> None:
    seq = 0
    for _ in range(updates):
        batch = []
        for _ in range(teacher.batch_size):
            decision = teacher.propose(Context())
            task = decision.task_index if decision.task_index is not None else np.array(decision.task_values)
            seq += 1
            batch.append(
                Experience(seq, "s", seq, decision.task_index, decision.task_values, decision.teacher_input,
                           reward_of(task) + 0.1 * rng.standard_normal())
            )
        teacher.update(batch)


def test_reinforce_discrete_rises_on_the_rewarded_task():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"t{i}"} for i in range(8)]))
    teacher = build_teacher("gradnorm-reinforce", space, {"use_context": False, "horizon": 1, "batch_size": 10}, 0)
    before = teacher.describe()["probabilities"][3]
    run_updates(teacher, lambda i: 1.0 if i == 3 else 0.0, updates=40, rng=np.random.default_rng(0))
    after = teacher.describe()["probabilities"][3]
    assert abs(before - 1 / 8) < 0.05
    # Stated budget: 40 updates of 10 episodes take task 3 from 1/8 to over 4x uniform.
    assert after > 4 / 8, after


def test_reinforce_box_mean_moves_to_the_rewarded_region():
    space = build_task_space(BoxTaskSpace(low=[0, 0], high=[1, 1]))
    teacher = build_teacher("gradnorm-reinforce", space, {"use_context": False, "horizon": 1, "batch_size": 16}, 0)
    target = np.array([0.85, 0.2])
    start = np.linalg.norm(np.array(teacher.describe()["mean"]) - target)
    run_updates(teacher, lambda v: -float(np.sum((v - target) ** 2)), updates=50, rng=np.random.default_rng(0))
    end = np.linalg.norm(np.array(teacher.describe()["mean"]) - target)
    # Stated budget: 50 updates of 16 episodes at least halve the distance to the rewarded point.
    assert start > 0.3 and end < start / 2, (start, end)


def test_reinforce_with_context_learns_the_rewarded_task_too():
    space = build_task_space(PresetTaskSpace(env_id="PointMaze_UMaze-v3"))
    teacher = build_teacher("gradnorm-reinforce", space, {"horizon": 1, "batch_size": 10}, 1)
    rng = np.random.default_rng(1)
    seq, last = 0, Context()
    for _ in range(40):
        batch = []
        for _ in range(10):
            d = teacher.propose(last)
            reward = 1.0 if d.task_index == 5 else 0.0
            seq += 1
            batch.append(Experience(seq, "s", seq, d.task_index, None, d.teacher_input, reward + 0.1 * rng.standard_normal()))
            last = Context(reward, space.features(d.task_index))
        teacher.update(batch)
    probs = [teacher.propose(last).task_index == 5 for _ in range(200)]
    assert np.mean(probs) > 10 / space.size


def test_reward_to_go_is_per_trajectory_with_discount_one():
    exps = [Experience(i, "s", traj, 0, None, {}, r) for i, (traj, r) in enumerate([(0, 1), (0, 2), (0, 3), (3, 5), (3, 7)])]
    assert reward_to_go(exps).tolist() == [6.0, 5.0, 3.0, 12.0, 7.0]


def test_checkpoint_round_trip_is_exact():
    space = build_task_space(PresetTaskSpace(env_id="AdroitHandRelocate-v1"))
    params = {"horizon": 1, "batch_size": 4}
    teacher = build_teacher("gradnorm-reinforce", space, params, 3)
    run_updates(teacher, lambda v: float(v[0]), updates=3, rng=np.random.default_rng(0))
    restored = build_teacher("gradnorm-reinforce", space, params, 99)
    restored.load_state_bytes(teacher.state_bytes())
    assert restored.updates == teacher.updates == 3
    for a, b in zip(teacher.policy.parameters(), restored.policy.parameters()):
        assert torch.equal(a, b)
    # Same generator state, so the next proposals are identical.
    assert teacher.propose(Context()).task_values == restored.propose(Context()).task_values


def test_random_teacher_is_uniform_and_env_default_proposes_nothing():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"t{i}"} for i in range(4)]))
    random_teacher = build_teacher("random", space, {}, 0)
    counts = np.bincount([random_teacher.propose(Context()).task_index for _ in range(4000)], minlength=4)
    assert counts.min() > 850 and random_teacher.batch_size == 0
    decision = build_teacher("env-default", space, {}, 0).propose(Context())
    assert decision.task_index is None and decision.task_values is None
