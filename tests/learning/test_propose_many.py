"""Teacher.propose_many: a batch's decisions are those of as many single proposes, random draws included."""

from __future__ import annotations

import numpy as np
import pytest

from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import REGISTRY, Context, build_teacher
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace

SPACES = {
    "discrete": DiscreteTaskSpace(tasks=[{"name": f"t{i}", "values": [i / 10, 1 - i / 10]} for i in range(11)]),
    "box": BoxTaskSpace(low=[-1.0, 0.0, 2.0], high=[1.0, 5.0, 3.0]),
}


def contexts(space, n: int) -> list[Context]:
    """First episodes, returns alone, and returns with tasks: every kind of observation."""
    rng = np.random.default_rng(0)
    kinds = [lambda: Context(), lambda: Context(float(rng.normal(5, 3)), None),
             lambda: Context(float(rng.normal(5, 3)), rng.uniform(-1, 1, space.feature_dim))]
    return [kinds[k % 3]() for k in range(n)]


@pytest.mark.parametrize("space_kind", SPACES)
@pytest.mark.parametrize("algorithm", sorted(REGISTRY))
def test_propose_many_gives_what_single_proposes_give(algorithm, space_kind):
    space = build_task_space(SPACES[space_kind])
    try:
        single, batch = (build_teacher(algorithm, space, {}, 7) for _ in range(2))
    except ValueError:  # a teacher for discrete spaces only
        pytest.skip(f"{algorithm} refuses a {space_kind} space")
    asked = contexts(space, 40)  # larger than 16: torch draws bulk normals in another order from there on
    expected = [single.propose(c) for c in asked]
    got = batch.propose_many(asked)
    assert [d.task_index for d in got] == [d.task_index for d in expected]
    assert np.allclose([d.task_values or [] for d in got], [d.task_values or [] for d in expected], atol=1e-6)
    for g, e in zip(got, expected):
        assert g.teacher_input.keys() == e.teacher_input.keys()
        for key, value in e.teacher_input.items():
            if isinstance(value, (float, list)):  # one forward for the batch rounds differently in the last bits
                assert np.allclose(g.teacher_input[key], value, atol=1e-5), key
            else:
                assert g.teacher_input[key] == value, key
    # The generators are in the same state: the next draws agree too.
    assert single.propose(Context()).task_index == batch.propose(Context()).task_index
    assert single.generator.get_state().equal(batch.generator.get_state())


def test_reinforce_batch_draws_spread_over_tasks_as_its_probabilities_say():
    space = build_task_space(SPACES["discrete"])
    teacher = build_teacher("gradnorm-reinforce", space, {"use_context": False}, 3)
    probabilities = np.array(teacher.describe()["probabilities"])
    drawn = [d.task_index for d in teacher.propose_many([Context()] * 20_000)]
    frequencies = np.bincount(drawn, minlength=space.size) / len(drawn)
    # 20,000 draws: each frequency within 5 standard errors of its probability.
    assert np.all(np.abs(frequencies - probabilities) < 5 * np.sqrt(probabilities * (1 - probabilities) / len(drawn)))
