"""GET /curricula/{name}/informativeness through a real service: which signals tell the task apart."""

from __future__ import annotations

import numpy as np

TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}"} for i in range(5)]}
BOX = {"kind": "box", "low": [0, 0], "high": [1, 1]}


def create(client, name, task_space):
    body = {"name": name, "task_space": task_space, "teacher": {"algorithm": "random"}}
    assert client.post("/curricula", json=body).status_code == 201


def episode(client, name, signals_of):
    proposal = client.post("/propose", json={"curriculum": name, "student_id": "s"}).json()
    signals = signals_of(proposal["task"])
    body = {"proposal_id": proposal["proposal_id"], "student_id": "s", "signals": signals}
    assert client.post("/report", json=body).status_code == 200


def test_a_signal_that_depends_on_the_task_is_told_from_one_that_only_drifts(service):
    client = service.client()
    create(client, "line", TASKS)
    rng = np.random.default_rng(0)
    for step in range(200):
        drift = 5 * np.exp(-step / 60)  # both signals shrink over training
        episode(client, "line", lambda task: {
            "grad_norm_mean": 3 + drift + task["index"] + 0.5 * float(rng.standard_normal()),
            "episode_return": drift + 0.5 * float(rng.standard_normal()),
        })
    body = client.get("/curricula/line/informativeness",
                      params={"signal": ["grad_norm_mean", "episode_return", "success"]}).json()
    assert body["episodes"] == 200 and body["grouping"] == "task"
    informative, drifting = body["signals"]["grad_norm_mean"], body["signals"]["episode_return"]
    assert informative["r2"] > 0.8 and informative["p_value"] < 0.01 and informative["tasks"] == 5
    assert drifting["adjusted_r2"] < 0.05 and drifting["p_value"] > 0.01
    assert body["signals"]["success"] == {"reports": 0, "tasks": 0, "r2": None, "adjusted_r2": None,
                                          "p_value": None, "trend_r2": None, "window": None}


def test_box_tasks_by_grid_cells_and_bad_queries(service):
    client = service.client()
    create(client, "box", BOX)
    for _ in range(30):
        episode(client, "box", lambda task: {"grad_norm_mean": 10 * task["values"][0]})
    body = client.get("/curricula/box/informativeness", params={"bins": 2, "signal": "grad_norm_mean"}).json()
    assert body["grouping"] == "grid of 2 cells per dimension" and 2 <= body["signals"]["grad_norm_mean"]["tasks"] <= 4
    assert body["signals"]["grad_norm_mean"]["r2"] > 0.5
    assert client.get("/curricula/nope/informativeness").status_code == 404
    # No task to tell apart: env-default proposes none.
    client.post("/curricula", json={"name": "own", "task_space": TASKS, "teacher": {"algorithm": "env-default"}})
    episode(client, "own", lambda task: {"episode_return": 1.0})
    body = client.get("/curricula/own/informativeness").json()
    assert body["episodes"] == 0 and body["signals"]["episode_return"]["r2"] is None
    for bad in ({"bins": 0}, {"last": 5}, {"permutations": 10**6}, {"signal": "nope"}):
        assert client.get("/curricula/box/informativeness", params=bad).status_code == 422, bad
