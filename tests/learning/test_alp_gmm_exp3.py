"""ALP-GMM and Exp3.S: on synthetic students in process, through checkpoints (with learnability and PLR), and
over HTTP across a restart."""

from __future__ import annotations

import json

import numpy as np

from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import Context, Experience, build_teacher
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace

LINE = DiscreteTaskSpace(tasks=[{"name": f"t{i}", "values": [float(i)]} for i in range(20)])


def run(teacher, reward_of, episodes: int, start: int = 0) -> list:
    """Propose, reward and update once per episode, as the service does for batch_size 1."""
    tasks = []
    for t in range(start, start + episodes):
        d = teacher.propose(Context())
        task = d.task_index if d.task_index is not None else np.array(d.task_values)
        reward = reward_of(task, t)
        teacher.update([Experience(t, "s", t, d.task_index, d.task_values, d.teacher_input, reward)])
        tasks.append(task if d.task_index is not None else d.task_values)
    return tasks


def test_alp_gmm_box_concentrates_where_the_reward_changes():
    space = build_task_space(BoxTaskSpace(low=[0, 0], high=[1, 1]))
    teacher = build_teacher("alp-gmm", space, {"fit_rate": 100, "max_components": 6}, 0)
    rng = np.random.default_rng(0)
    # The student improves over time on x0 < 0.3 only; elsewhere its reward stays 0.
    tasks = run(teacher, lambda v, t: (0.01 * t if v[0] < 0.3 else 0.0) + 0.01 * rng.standard_normal(), 1000)
    share = np.mean([v[0] < 0.3 for v in tasks[-300:]])
    assert share > 0.6, share  # uniform sampling gives 0.3
    state = teacher.describe()
    assert state["fits"] == 10 and 2 <= len(state["components"]) <= 6
    top = max(state["components"], key=lambda c: c["mean_alp"])
    assert top["mean"][0] < 0.3 and abs(sum(c["weight"] for c in state["components"]) - 1) < 1e-6
    json.dumps(state)


def test_alp_gmm_discrete_follows_progress_when_it_moves():
    space = build_task_space(LINE)
    teacher = build_teacher("alp-gmm", space, {"fit_rate": 50, "max_components": 5}, 0)
    rng = np.random.default_rng(0)
    competence = np.zeros(20)

    def student(i, t):
        # Practice pays on tasks 0-4 during the first 600 episodes, then only on tasks 15-19.
        if (i < 5) if t < 600 else (i >= 15):
            competence[i] += 0.1
        return competence[i] + 0.01 * rng.standard_normal()

    first = np.array(run(teacher, student, 600))
    second = np.array(run(teacher, student, 600, start=600))
    # Uniform sampling gives 0.25 to each group of 5 tasks.
    assert np.mean(first[-200:] < 5) > 0.5
    assert np.mean(second[-200:] >= 15) > 0.5 and np.mean(second[-200:] < 5) < 0.2
    top = max(teacher.describe()["components"], key=lambda c: c["mean_alp"])
    assert top["nearest_task"]["index"] >= 15


def test_alp_gmm_alp_is_the_change_since_the_nearest_previous_task():
    space = build_task_space(LINE)
    teacher = build_teacher("alp-gmm", space, {"fit_rate": 10}, 0)
    for seq, (task, reward) in enumerate([(3, 1.0), (7, 5.0), (3, 1.5), (4, 4.0)]):
        teacher.update([Experience(seq, "s", seq, task, None, {"component": None}, reward)])
    # First report: 0; task 7 vs task 3; task 3 vs its own last report; task 4 vs task 3's latest (1.5).
    assert teacher.alps.tolist() == [0.0, 4.0, 0.5, 2.5]


def test_alp_gmm_progress_is_within_one_student():
    # Two students of different skill take turns on the same tasks; neither learns: no progress.
    space = build_task_space(LINE)
    teacher = build_teacher("alp-gmm", space, {"fit_rate": 10}, 0)
    rng = np.random.default_rng(0)
    for seq in range(200):
        student, skill = ("weak", 1.0) if seq % 2 else ("strong", 10.0)
        reward = skill + 0.05 * rng.standard_normal()
        teacher.update([Experience(seq, student, seq, seq // 2 % 3, None, {"component": None}, reward)])
    assert teacher.alps.mean() < 0.2, teacher.alps.mean()  # across students it would be about 9


def test_exp3_follows_a_best_arm_that_changes_halfway():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"arm{i}"} for i in range(5)]))
    teacher = build_teacher("exp3", space, {}, 0)
    rng = np.random.default_rng(0)

    def reward(i, t):
        return float(i == (1 if t < 1000 else 3)) + 0.1 * rng.standard_normal()

    first = np.bincount(run(teacher, reward, 1000), minlength=5)
    assert first.argmax() == 1
    second = np.bincount(run(teacher, reward, 1000, start=1000)[-300:], minlength=5)
    assert second.argmax() == 3 and second[3] > 0.4 * 300, second  # uniform: 0.2
    state = teacher.describe()
    assert state["best_task"] == {"index": 3, "name": "arm3"} and abs(sum(state["probabilities"]) - 1) < 1e-9
    json.dumps(state)


def test_exp3_stays_near_uniform_on_equal_noisy_rewards():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"t{i}"} for i in range(42)]))
    for seed in range(3):
        teacher = build_teacher("exp3", space, {}, seed)
        rng = np.random.default_rng(seed)
        run(teacher, lambda i, t: 1.0 + 0.1 * rng.standard_normal(), 200)
        # Uniform is 1/42 = 0.024; eta 0.1 reached 0.87 here.
        assert teacher.probabilities().max() < 0.1, teacher.probabilities().max()


def test_exp3_update_matches_the_exp3s_formula():
    space = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"arm{i}"} for i in range(4)]))
    params = {"eta": 0.5, "gamma": 0.2, "alpha": 0.1, "reward_window": 3}
    teacher = build_teacher("exp3", space, params, 0)
    for seq, reward in enumerate([0.0, 10.0, 4.0]):
        teacher.update([Experience(seq, "s", seq, 0, None, {"probability": 0.25}, reward)])
    w_before = teacher.weights.copy()
    stats = teacher.update([Experience(3, "s", 3, 2, None, {"probability": 0.4}, 8.0)])
    # Window (10, 4, 8), linear quantiles: q20 = 5.6, q80 = 9.2, so r_hat = 2 (8 - 5.6) / 3.6 - 1 = 1/3.
    assert abs(stats["scaled_reward_mean"] - 1 / 3) < 1e-9
    logits = w_before + np.array([0, 0, 0.5 * (1 / 3) / 0.4, 0])
    e = np.exp(logits)
    expected = np.log(0.9 * e + 0.1 / 3 * (e.sum() - e))
    assert np.allclose(teacher.weights, expected - expected.max())
    probs = np.exp(teacher.weights) / np.exp(teacher.weights).sum()
    assert np.allclose(teacher.describe()["probabilities"], 0.8 * probs + 0.2 / 4)


def test_checkpoints_resume_exactly():
    rng = np.random.default_rng(0)
    cases = [
        ("alp-gmm", build_task_space(BoxTaskSpace(low=[-1, 0, 2], high=[1, 1, 3])), {"fit_rate": 20}),
        ("alp-gmm", build_task_space(LINE), {"fit_rate": 20}),
        ("exp3", build_task_space(LINE), {}),
        ("learnability", build_task_space(LINE), {}),
        ("learnability", build_task_space(BoxTaskSpace(low=[-1, 0], high=[1, 1])), {}),
        ("plr", build_task_space(LINE), {}),
        ("plr", build_task_space(BoxTaskSpace(low=[-1, 0], high=[1, 1])), {"buffer_size": 8}),
        ("learning-progress", build_task_space(LINE), {}),
    ]
    for algorithm, space, params in cases:
        teacher = build_teacher(algorithm, space, params, 3)
        rewards = rng.standard_normal(200)
        run(teacher, lambda task, t: float(rewards[t]), 50)
        restored = build_teacher(algorithm, space, params, 99)
        restored.load_state_bytes(teacher.state_bytes())
        assert restored.describe() == teacher.describe()
        # Same state and generator: the same proposals and the same learning from here on.
        continued = run(teacher, lambda task, t: float(rewards[t]), 30, start=50)
        assert run(restored, lambda task, t: float(rewards[t]), 30, start=50) == continued
        assert restored.describe() == teacher.describe()


def test_service_restart_resumes_the_teachers_exactly(service):
    client = service.client()
    curricula = {
        "alp": ({"kind": "box", "low": [0, 0], "high": [1, 2]}, {"algorithm": "alp-gmm", "params": {"fit_rate": 20}}),
        "bandit": (LINE.model_dump(), {"algorithm": "exp3"}),
        "sfl": ({"kind": "box", "low": [0, 0], "high": [1, 2]}, {"algorithm": "learnability"}),
        "plr": (LINE.model_dump(), {"algorithm": "plr"}),
    }
    for name, (space, teacher) in curricula.items():
        signal = "success" if teacher["algorithm"] == "learnability" else "episode_return"  # what each learns from
        body = {"name": name, "task_space": space, "teacher": teacher, "reward_signal": signal}
        assert client.post("/curricula", json=body).status_code == 201
    pending = {}
    for name in curricula:
        for k in range(30):
            proposal = client.post("/propose", json={"curriculum": name, "student_id": "s"}).json()
            signals = {"episode_return": sum(proposal["task"]["values"]) + 0.1 * k, "success": k % 3 == 0}
            ack = client.post("/report", json={"proposal_id": proposal["proposal_id"], "student_id": "s", "signals": signals})
            assert ack.json()["teacher_updated"] is True
        pending[name] = client.post("/propose", json={"curriculum": name, "student_id": "s"}).json()
    before = {name: client.get(f"/curricula/{name}/teacher").json() for name in curricula}
    assert before["alp"]["state"]["fits"] == 1 and before["alp"]["state"]["components"]
    assert before["bandit"]["version"] == 30 and len(before["bandit"]["state"]["probabilities"]) == 20

    service.stop()
    service.start()
    client = service.client()
    for name in curricula:
        assert client.get(f"/curricula/{name}/teacher").json() == before[name]
        signals = {"episode_return": 1.0, "success": True}
        body = {"proposal_id": pending[name]["proposal_id"], "student_id": "s", "signals": signals}
        ack = client.post("/report", json=body).json()
        assert ack["teacher_updated"] is True and ack["teacher_version"] == 31
        assert client.get(f"/curricula/{name}/teacher").json()["state"]["updates"] == 31


def test_bad_parameters_get_422_with_a_clear_message(service):
    client = service.client()
    box = {"kind": "box", "low": [0], "high": [1]}
    cases = [
        (box, {"algorithm": "exp3"}, "teacher 'exp3': exp3 needs a discrete task space"),
        ({"kind": "discrete", "tasks": [{"name": "only"}]}, {"algorithm": "exp3"}, "exp3 needs at least 2 tasks"),
        (LINE.model_dump(), {"algorithm": "exp3", "params": {"quantiles": [0.8, 0.2]}},
         "teacher.params: quantiles: must satisfy 0 <= low < high <= 1, got [0.8, 0.2]"),
        (LINE.model_dump(), {"algorithm": "exp3", "params": {"gamma": 2}}, "teacher.params: gamma"),
        (box, {"algorithm": "alp-gmm", "params": {"random_share": 1.5}}, "teacher.params: random_share"),
        (box, {"algorithm": "alp-gmm", "params": {"fit_rate": 5000}},
         "teacher.params: history_size (2000) must be at least fit_rate (5000)"),
        (box, {"algorithm": "alp-gmm", "params": {"max_components": 1}}, "teacher.params: max_components"),
    ]
    for space, teacher, message in cases:
        response = client.post("/curricula", json={"name": "x", "task_space": space, "teacher": teacher})
        assert response.status_code == 422 and message in response.json()["detail"][0]["msg"], response.text
    assert client.get("/curricula").json() == []
