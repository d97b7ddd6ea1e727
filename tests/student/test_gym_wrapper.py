"""TeacherCurriculumWrapper against a real service: outages, exact attribution of updates to episodes in
vector envs, stopped and abandoned episodes, and the context it sends."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from student_client import TeacherClient
from student_client.integrations.gym_wrapper import RemoteGradCreditVectorEnv, TeacherCurriculumWrapper
from student_client.probes import GradNormTracker
from tests.servers import ServiceProcess
from tests.student_helpers import create_curriculum

ENV = "PointMaze_UMaze-v3"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One service for the tests that do not stop it (each uses its own curricula)."""
    proc = ServiceProcess(tmp_path_factory.mktemp("service")).start()
    yield proc
    proc.stop()


def history(service, curriculum: str) -> list[dict]:
    """The service's record of every proposal of a curriculum, with its report (GET .../history)."""
    with service.client() as http:
        response = http.get(f"/curricula/{curriculum}/history", params={"limit": 1000})
    response.raise_for_status()
    return response.json()["items"]


def reports(service, curriculum: str) -> dict[str, list[dict]]:
    """student_id -> the signals of its reported proposals, in proposal order."""
    by_student: dict[str, list[dict]] = {}
    for item in history(service, curriculum):
        if item["signals"] is not None:
            by_student.setdefault(item["student_id"], []).append(item["signals"])
    return by_student


def wrapper(service, curriculum: str, student_id: str, steps: int, **kwargs) -> TeacherCurriculumWrapper:
    client = TeacherClient(service.url, service.student_token, timeout_s=5, attempts=2, max_backoff_s=0.2)
    return TeacherCurriculumWrapper(gym.make(ENV, max_episode_steps=steps), client, curriculum, student_id, **kwargs)


class Learner:
    """A stand-in trainer's learner: one real optimizer step per call, recorded by every attached tracker."""

    def __init__(self, trackers: list[GradNormTracker]) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 2)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        for tracker in trackers:
            tracker.attach(self.optimizer, "actor")

    def update(self) -> None:
        self.optimizer.zero_grad()
        self.net(torch.randn(8, 4)).pow(2).mean().backward()
        self.optimizer.step()


def steps(env: gym.Env, n: int, learner: Learner) -> None:
    for _ in range(n):
        env.step(env.action_space.sample())
        learner.update()


def run_episodes(env: gym.Env, episodes: int, learner: Learner | None = None) -> list[dict]:
    """A plain trainer loop (reset after the end, update after each step); the infos of each reset."""
    infos = []
    for _ in range(episodes):
        _, info = env.reset()
        infos.append(info)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
            if learner:
                learner.update()
    return infos


def test_wrapper_trains_through_a_teacher_outage_and_delivers_later(service, tmp_path):
    create_curriculum(service, "outage")
    outbox = tmp_path / "outbox.json"
    env = wrapper(service, "outage", "w-0", 10, outbox=outbox, retry_every=0.2)
    with pytest.raises(ValueError, match="in use by another student"):  # another sub-environment given the same file
        wrapper(service, "outage", "w-1", 10, outbox=outbox)
    learner = Learner([env.tracker])
    assert all("proposal_id" in info for info in run_episodes(env, 2, learner))
    env.reset()
    service.stop()
    steps(env, 10, learner)  # the episode proposed before the outage ends while the teacher is away
    while_down = run_episodes(env, 3, learner)  # no TeacherUnavailableError: env-default tasks
    assert all("proposal_id" not in info for info in while_down)
    assert len(json.loads(outbox.read_text())["pending"]) == 1  # kept on disk while the teacher is away
    service.start()
    run_episodes(env, 2, learner)  # delivered at the next try, once retry_every has passed
    env.close()
    assert json.loads(outbox.read_text())["pending"] == []
    wrapper(service, "outage", "w-0", 10, outbox=outbox).close()  # closed, the first gave up its file
    items = history(service, "outage")
    assert len(items) == 5 and all(item["signals"] is not None for item in items)
    assert [item["signals"]["grad_updates"] for item in items] == [10] * 5


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_env_credits_each_update_to_the_episodes_it_followed(shared, mode):
    """Two sub-environments (episodes of 30 and 20 steps) share one learner that updates after every
    vector step: each episode is credited with exactly the updates that followed its own steps."""
    curriculum = f"vec-{mode.value.lower()}"
    create_curriculum(shared, curriculum)
    trackers = [GradNormTracker(), GradNormTracker()]
    lengths = (30, 20)
    envs = SyncVectorEnv([lambda i=i: wrapper(shared, curriculum, f"v-{i}", lengths[i], tracker=trackers[i])
                          for i in range(2)], autoreset_mode=mode)
    learner = Learner(trackers)
    envs.reset(seed=0)
    for _ in range(95):
        envs.step(envs.action_space.sample())
        learner.update()
    envs.close()
    by_student = reports(shared, curriculum)
    for i, length in enumerate(lengths):
        completed = [s for s in by_student[f"v-{i}"] if "outcome" not in s]
        assert len(completed) >= 3
        assert all(s["env_steps"] == length and s["grad_updates"] == length for s in completed)
        (stopped,) = [s for s in by_student[f"v-{i}"] if s.get("outcome") == "stopped"]  # cut by close()
        assert stopped["grad_updates"] == stopped["env_steps"] < length


def test_stopped_and_abandoned_episodes_reward_no_teacher(shared):
    create_curriculum(shared, "stops")
    env = wrapper(shared, "stops", "s-0", 10)
    learner = Learner([env.tracker])
    run_episodes(env, 1, learner)  # completed
    env.reset()
    steps(env, 4, learner)
    env.reset()  # in mid-episode: the 4 steps are reported as stopped, their updates go with them
    with pytest.warns(UserWarning, match="the teacher's task replaces the options passed"):
        env.reset(options={"reset_cell": [1, 1]})  # no step on the last proposal: released
    steps(env, 10, learner)  # completed
    env.reset()
    env.close()  # a proposal never stepped on: released
    items = history(shared, "stops")
    outcomes = [(it["signals"].get("outcome", "completed"), it["signals"].get("env_steps"),
                 it["signals"].get("grad_updates")) for it in items]
    assert outcomes == [("completed", 10, 10), ("stopped", 4, 4), ("abandoned", None, None),
                        ("completed", 10, 10), ("abandoned", None, None)]
    assert all((it["reward"] is None) == ("outcome" in it["signals"]) for it in items)


def test_success_is_reported_only_by_an_env_that_measures_it(shared):
    """CartPole's infos have no "success": its episodes report none, not a failure that a teacher rewarded with
    success (learnability) would learn from; a maze's episodes report theirs."""
    with shared.client() as http:
        spec = {"name": "no-success", "task_space": {"kind": "discrete", "tasks": [{"name": "a"}, {"name": "b"}]},
                "teacher": {"algorithm": "learnability"}, "reward_signal": "success"}
        assert http.post("/curricula", json=spec).status_code == 201
    client = TeacherClient(shared.url, shared.student_token, timeout_s=5, attempts=2, max_backoff_s=0.2)
    cartpole = TeacherCurriculumWrapper(gym.make("CartPole-v1"), client, "no-success", "cp-0")
    run_episodes(cartpole, 2)
    cartpole.close()
    items = [item for item in history(shared, "no-success") if "outcome" not in item["signals"]]
    assert len(items) == 2
    assert all(item["signals"]["success"] is None and item["reward"] is None for item in items)
    create_curriculum(shared, "with-success")
    maze = wrapper(shared, "with-success", "m-0", 5)
    run_episodes(maze, 1)
    maze.close()
    assert history(shared, "with-success")[0]["signals"]["success"] is False


def test_the_next_proposal_carries_the_finished_episodes_return_and_task(shared):
    create_curriculum(shared, "context")
    env = wrapper(shared, "context", "c-0", 10)
    sent = []
    env.session.client._http.event_hooks["request"].append(
        lambda request: sent.append(json.loads(request.content)) if request.url.path == "/propose" else None
    )
    run_episodes(env, 2)
    env.close()
    first, second = history(shared, "context")
    assert sent[0]["context"] == {}
    assert sent[1]["context"] == {"last_return": first["signals"]["episode_return"],
                                  "last_task": first["task_values"]}


def test_sb3_dummy_vec_env_credits_each_update_to_its_episodes(shared):
    """SB3 resets a sub-environment inside the step that ended its episode, and updates after the step:
    that update belongs to the ended episode. Both sub-environments share the learner: one tracker each."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import DummyVecEnv

    from student_client.integrations.sb3 import GradNormCallback

    create_curriculum(shared, "sb3-vec")
    lengths = (30, 20)
    vec = DummyVecEnv([lambda i=i: wrapper(shared, "sb3-vec", f"d-{i}", lengths[i]) for i in range(2)])
    model = SAC("MultiInputPolicy", vec, learning_starts=20, batch_size=32, policy_kwargs={"net_arch": [32, 32]},
                seed=0)
    # 2 envs: 2 timesteps per vector step; updates follow vector steps 11..70.
    model.learn(140, callback=CallbackList([GradNormCallback(env.tracker, local_signals=False) for env in vec.envs]))
    vec.close()
    by_student = reports(shared, "sb3-vec")
    for i, length in enumerate(lengths):
        first, *completed, stopped = by_student[f"d-{i}"]
        assert (first["env_steps"], first["grad_updates"]) == (length, length - 10)
        assert completed and all((s["env_steps"], s["grad_updates"]) == (length, length) for s in completed)
        assert stopped["outcome"] == "stopped" and stopped["grad_updates"] == stopped["env_steps"]


def test_sb3_training_in_several_learn_calls_credits_every_update(shared):
    """learn() again with reset_num_timesteps=False goes on with the running episode; the callback attaches its
    probes at each start, which dropped the updates the episode had before (20 updates reported as 10)."""
    from stable_baselines3 import SAC

    from student_client.integrations.sb3 import GradNormCallback

    create_curriculum(shared, "sb3-chunks")
    env = wrapper(shared, "sb3-chunks", "chunks-0", 20)
    model = SAC("MultiInputPolicy", env, learning_starts=5, batch_size=16, policy_kwargs={"net_arch": [16]}, seed=0)
    callback = GradNormCallback(env.tracker, local_signals=False)
    model.learn(30, callback=callback)  # the second episode is halfway through
    model.learn(30, callback=callback, reset_num_timesteps=False)
    env.close()
    first, *completed, abandoned = reports(shared, "sb3-chunks")["chunks-0"]
    assert (first["env_steps"], first["grad_updates"]) == (20, 15)  # updates follow steps 6 to 20
    assert [(s["env_steps"], s["grad_updates"]) for s in completed] == [(20, 20), (20, 20)]
    assert abandoned["outcome"] == "abandoned"  # the proposal of the reset after the last step


def make_wrapper(url: str, token: str, curriculum: str, student_id: str, steps: int) -> TeacherCurriculumWrapper:
    """For envs built in another process: only plain values cross the process boundary."""
    client = TeacherClient(url, token, timeout_s=5, attempts=2, max_backoff_s=0.2)
    return TeacherCurriculumWrapper(gym.make(ENV, max_episode_steps=steps), client, curriculum, student_id)


def assert_exact_credit(by_student: dict[str, list[dict]], prefix: str, lengths: tuple[int, ...]) -> None:
    """Each completed episode was credited with one update per step; the one close() cut, likewise."""
    assert len(by_student) == len(lengths)
    for i, length in enumerate(lengths):
        completed = [s for s in by_student[f"{prefix}-{i}"] if "outcome" not in s]
        assert len(completed) >= 3
        assert all(s["env_steps"] == length and s["grad_updates"] == length for s in completed)
        (stopped,) = [s for s in by_student[f"{prefix}-{i}"] if s.get("outcome") == "stopped"]
        assert stopped["grad_updates"] == stopped["env_steps"] < length


def test_async_vector_env_credits_updates_made_in_the_learners_process(shared):
    """AsyncVectorEnv: the wrappers live in worker processes, the optimizer here; RemoteGradCreditVectorEnv
    measures the gradients here and delivers each episode's statistics to its wrapper."""
    create_curriculum(shared, "async")
    lengths = (30, 20)
    envs = RemoteGradCreditVectorEnv(gym.vector.AsyncVectorEnv([
        lambda i=i, url=shared.url, token=shared.student_token: make_wrapper(url, token, "async", f"a-{i}", lengths[i])
        for i in range(2)]))
    learner = Learner(envs.credit.trackers)
    envs.reset(seed=0)
    for _ in range(95):
        envs.step(envs.action_space.sample())
        learner.update()
    envs.close()
    assert_exact_credit(reports(shared, "async"), "a", lengths)


def test_async_vector_env_without_autoreset_credits_updates_across_partial_resets(shared):
    """Autoreset disabled, the trainer resets the ended sub-environments itself (`reset_mask`): the others' episodes
    go on, and keep their updates (the reset delivered their statistics so far, which their end then replaced:
    a 30-step episode reported 10 updates)."""
    create_curriculum(shared, "async-masked")
    lengths = (30, 20)
    envs = RemoteGradCreditVectorEnv(gym.vector.AsyncVectorEnv([
        lambda i=i, url=shared.url, token=shared.student_token: make_wrapper(url, token, "async-masked", f"m-{i}",
                                                                              lengths[i])
        for i in range(2)], autoreset_mode=AutoresetMode.DISABLED))
    learner = Learner(envs.credit.trackers)
    envs.reset(seed=0)
    for _ in range(95):
        _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
        learner.update()
        if (ended := terminated | truncated).any():
            envs.reset(options={"reset_mask": ended})
    envs.close()
    assert_exact_credit(reports(shared, "async-masked"), "m", lengths)


def test_sb3_subproc_vec_env_credits_updates_made_in_the_learners_process(shared):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from student_client.integrations.sb3 import GradNormCallback, RemoteGradCreditVecEnv

    create_curriculum(shared, "sb3-subproc")
    lengths = (30, 20)
    vec = RemoteGradCreditVecEnv(SubprocVecEnv([
        lambda i=i, url=shared.url, token=shared.student_token: make_wrapper(url, token, "sb3-subproc", f"p-{i}",
                                                                              lengths[i])
        for i in range(2)]))
    model = SAC("MultiInputPolicy", vec, learning_starts=0, batch_size=32, policy_kwargs={"net_arch": [32, 32]},
                seed=0)
    model.learn(190, callback=CallbackList([GradNormCallback(t) for t in vec.credit.trackers]))
    vec.close()
    assert_exact_credit(reports(shared, "sb3-subproc"), "p", lengths)
