"""Learnability (SFL), PLR and the learning-progress bandit on synthetic students in process (their
checkpoints: test_alp_gmm_exp3.py)."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import REGISTRY, Context, Experience, build_teacher
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace
from tests.learning.test_alp_gmm_exp3 import run

TASKS = DiscreteTaskSpace(tasks=[{"name": f"t{i}", "values": [float(i)]} for i in range(40)])


def test_both_are_registered():
    assert {"learnability", "plr", "learning-progress"} <= set(REGISTRY)


def test_learnability_proposes_the_tasks_solved_about_half_the_time_and_follows_a_learning_student():
    space = build_task_space(TASKS)
    teacher = build_teacher("learnability", space, {"top_k": 4}, 0)
    rng = np.random.default_rng(0)
    # Tasks 0-19 never solved, 20-35 always, 36-39 half the time; after 1500 episodes tasks 0-3
    # become learnable (the student got better) and 36-39 are mastered.
    def success(i, t):
        p = 0.0 if i < 20 else 1.0 if i < 36 else 0.5
        if t >= 1500:
            p = 0.5 if i < 4 else 1.0 if i >= 36 else p
        return float(rng.random() < p)

    first = np.array(run(teacher, success, 1500))
    assert np.mean(first[-500:] >= 36) > 0.6  # uniform: 0.1
    second = np.array(run(teacher, success, 1000, start=1500))
    assert np.mean(second[-400:] < 4) > 0.6 and np.mean(second[-400:] >= 36) < 0.15
    state = teacher.describe()
    assert {task["index"] for task in state["top"][:4]} == {0, 1, 2, 3}
    json.dumps(state)


def test_learnability_in_a_box_by_grid_cells():
    space = build_task_space(BoxTaskSpace(low=[0, 0], high=[1, 2]))
    teacher = build_teacher("learnability", space, {"grid_bins": 4, "top_k": 2}, 0)
    rng = np.random.default_rng(0)
    # Learnable only where x in [0.5, 0.75) and y in [1.5, 2): one cell of 16.
    tasks = run(teacher, lambda v, t: float(0.5 <= v[0] < 0.75 and v[1] >= 1.5 and rng.random() < 0.5), 1500)
    inside = [0.5 <= v[0] < 0.75 and v[1] >= 1.5 for v in tasks[-500:]]
    assert np.mean(inside) > 0.35, np.mean(inside)  # uniform: 1/16; half of the top 2 plus exploration
    top = teacher.describe()["top"][0]
    assert top["low"] == [0.5, 1.5] and top["high"] == [0.75, 2.0]
    with pytest.raises(ValueError, match="use fewer grid_bins"):
        build_teacher("learnability", build_task_space(BoxTaskSpace(low=[0] * 6, high=[1] * 6)), {"grid_bins": 10}, 0)


def test_plr_tries_every_task_then_replays_by_rank_and_staleness():
    space = build_task_space(TASKS)
    teacher = build_teacher("plr", space, {}, 0)
    scores = np.linspace(0.0, 1.0, 40)  # task 39 has the highest score
    first = run(teacher, lambda i, t: float(scores[i]), 80)
    assert teacher.describe()["seen"] == 40 and len(set(first)) == 40
    later = np.array(run(teacher, lambda i, t: float(scores[i]), 400, start=80))
    # Rank prioritization with temperature 0.1 puts nearly all of the 0.9 score share on task 39;
    # the 0.1 staleness share goes to the tasks not reported for long.
    assert 0.8 < np.mean(later == 39) < 0.95
    probs = np.array(teacher.describe()["replay_probabilities"])
    assert abs(probs.sum() - 1) < 1e-9 and probs.argmax() == 39
    ranks = 40 - np.arange(40)
    by_score = (1 / ranks) ** 10
    staleness = teacher.reports - teacher.last_report
    assert np.allclose(probs, 0.9 * by_score / by_score.sum() + 0.1 * staleness / staleness.sum())


def test_plr_box_buffer_keeps_the_highest_scores():
    space = build_task_space(BoxTaskSpace(low=[0], high=[1]))
    teacher = build_teacher("plr", space, {"buffer_size": 4, "replay_prob": 0.5}, 0)
    # The score of a level is its x: the buffer ends with high-x levels.
    run(teacher, lambda v, t: float(v[0]), 400)
    assert teacher.describe()["seen"] == 4
    assert np.min(teacher.levels) > 0.9, teacher.levels
    # A replayed level whose slot was taken meanwhile counts as new: it enters the buffer only in
    # place of the lowest-scored level, and only if it scores higher.
    levels, scores = teacher.levels.copy(), teacher.scores.copy()
    teacher.update([Experience(1000, "s", 1000, None, [0.01], {"replay": True, "slot": 0}, 0.0)])
    assert np.array_equal(teacher.levels, levels) and np.array_equal(teacher.scores, scores)
    teacher.update([Experience(1001, "s", 1001, None, [0.02], {"replay": True, "slot": 0}, 5.0)])
    lowest = int(np.argmin(scores))
    assert teacher.levels[lowest, 0] == 0.02 and teacher.scores[lowest] == 5.0
    others = np.arange(4) != lowest
    assert np.array_equal(teacher.levels[others], levels[others]) and np.array_equal(teacher.scores[others], scores[others])


def test_plr_never_replays_before_a_level_is_seen():
    space = build_task_space(BoxTaskSpace(low=[0], high=[1]))
    teacher = build_teacher("plr", space, {"replay_prob": 1.0}, 0)
    assert all(teacher.propose(Context()).teacher_input == {"replay": False, "slot": None} for _ in range(20))


def test_bad_parameters_are_refused():
    space = build_task_space(TASKS)
    for algorithm, params in [("plr", {"temperature": 0}), ("learnability", {"explore": 2}), ("plr", {"x": 1})]:
        with pytest.raises(pydantic.ValidationError):
            build_teacher(algorithm, space, params, 0)


def test_learning_progress_follows_the_tasks_being_learned():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"t{i}"} for i in range(20)]))
    teacher = build_teacher("learning-progress", space, {}, 0)
    rng = np.random.default_rng(0)
    skill = np.zeros(20)

    # Tasks 0-3 are learned with practice (success probability +0.05 per episode on them), 4-7 are coin
    # flips that never change, the rest are always failed or always solved.
    def success(i, t):
        if i < 4:
            skill[i] = min(skill[i] + 0.05, 1.0)
            return float(rng.random() < skill[i])
        return float(rng.random() < (0.5 if i < 8 else 0.0 if i < 14 else 1.0))

    tasks = np.array(run(teacher, success, 800))
    assert np.mean(tasks[400:] < 4) > 0.4, np.mean(tasks[400:] < 4)  # uniform: 0.2
    # Coin flips look like progress too (the averages' noise): early on they take most proposals.
    assert np.mean((tasks[:200] >= 4) & (tasks[:200] < 8)) > 0.4
    state = teacher.describe()
    assert abs(sum(state["probabilities"]) - 1) < 1e-9
    json.dumps(state)
    with pytest.raises(ValueError, match="discrete task space"):
        build_teacher("learning-progress", build_task_space(BoxTaskSpace(low=[0], high=[1])), {}, 0)
    with pytest.raises(pydantic.ValidationError, match="must be below fast_rate"):
        build_teacher("learning-progress", space, {"fast_rate": 0.01}, 0)
