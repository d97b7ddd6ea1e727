"""Episode-local signals: a hand computation, no side effects, only the episode's transitions, and the
worker's and the SB3 wrapper's reports carry them."""

import copy
import math

import gymnasium as gym
import gymnasium_robotics
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC as SB3SAC
from stable_baselines3.common.buffers import DictReplayBuffer

from student_client import TeacherClient
from student_client.episode_signals import agent_signals, local_signals
from student_client.integrations.gym_wrapper import TeacherCurriculumWrapper
from student_client.integrations.sb3 import GradNormCallback, replay_tail, sb3_nets
from student_client.sac.agent import SAC, SmallPreset
from student_client.sac.buffer import ReplayBuffer
from student_client.sac.ensemble import EnsembleSAC
from tests.student_helpers import create_curriculum, episode_log, start_worker, stored_proposals, wait_exit

gym.register_envs(gymnasium_robotics)
torch.set_num_threads(1)
OBS, ACT = 3, 2
LOCAL_KEYS = ("grad_norm_local", "critic_grad_norm_local", "positive_value_loss")


def random_transition(rng: np.random.Generator) -> tuple:
    return (rng.normal(size=OBS).astype(np.float32), rng.uniform(-1, 1, ACT).astype(np.float32),
            float(rng.normal()), rng.normal(size=OBS).astype(np.float32), bool(rng.random() < 0.2))


def tiny_sac(alpha: float | None = 0.1, batch_size: int = 4) -> SAC:
    torch.manual_seed(0)
    return SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), SmallPreset(hidden=(8, 8), n_critics=2, alpha=alpha,
                                                                   batch_size=batch_size))


def filled_buffer(transitions: list[tuple], capacity: int, seed: int = 0) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity, OBS, ACT, seed=seed)
    for t in transitions:
        buffer.add(*t)
    return buffer


# ---------------------------------------------------------------- by hand


def q_by_hand(critics: torch.nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Each critic's MLP written out from its stacked weights: (n_critics, B)."""
    out = []
    for i in range(critics.n):
        x = torch.cat([obs, actions], dim=-1)
        for layer in critics.net:
            x = x @ layer.weight[i] + layer.bias[i, 0] if hasattr(layer, "weight") else layer(x)
        out.append(x.squeeze(-1))
    return torch.stack(out)


def policy_by_hand(actor: torch.nn.Module, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(u), u = mean + std eps; log pi(a|s) = log N(u; mean, std) - sum log(1 - tanh(u)^2)."""
    mean, log_std = actor(obs)
    u = mean + log_std.exp() * eps
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    return torch.tanh(u), log_prob - torch.log(1 - torch.tanh(u) ** 2).sum(-1)


def grad_norm(params) -> float:
    return math.sqrt(sum(float((p.grad ** 2).sum()) for p in params if p.grad is not None))


@pytest.mark.parametrize("episode_len", [7, 3])  # a batch of 4 drawn from 7 transitions; all of 3
def test_local_signals_equal_a_hand_computation(episode_len):
    agent = tiny_sac()
    with torch.no_grad():  # target critics unlike the online ones, as after training
        for p in agent.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    buffer = filled_buffer([random_transition(rng) for _ in range(20)], capacity=32)
    generator_state = buffer.generator.get_state()
    torch.manual_seed(7)
    got = agent_signals(agent, buffer, episode_len)

    rows = torch.arange(20 - episode_len, 20)
    obs, actions, rewards = buffer.obs[rows], buffer.actions[rows], buffer.rewards[rows]
    next_obs, dones = buffer.next_obs[rows], buffer.dones[rows]
    g = torch.Generator()
    g.set_state(generator_state)
    batch = torch.randperm(episode_len, generator=g)[:4] if episode_len > 4 else torch.arange(episode_len)
    torch.manual_seed(7)
    eps_next, eps = torch.randn(episode_len, ACT), torch.randn(len(batch), ACT)
    actor, critic, target = copy.deepcopy(agent.actor), copy.deepcopy(agent.critic), copy.deepcopy(agent.critic_target)
    gamma, alpha = 0.99, 0.1
    with torch.no_grad():
        next_actions, next_log_prob = policy_by_hand(actor, next_obs, eps_next)
        y = rewards + gamma * (1 - dones) * (q_by_hand(target, next_obs, next_actions).min(0).values
                                             - alpha * next_log_prob)
        q_min = q_by_hand(critic, obs, actions).min(0).values
    td_errors = [float(y[t] - q_min[t]) for t in range(episode_len)]
    assert got.positive_value_loss == pytest.approx(sum(max(d, 0.0) for d in td_errors) / episode_len, rel=1e-5)

    q = q_by_hand(critic, obs[batch], actions[batch])
    (0.5 * sum(((q[i] - y[batch]) ** 2).mean() for i in range(2))).backward()
    assert got.critic_grad_norm_local == pytest.approx(grad_norm(critic.parameters()), rel=1e-4)

    new_actions, log_prob = policy_by_hand(actor, obs[batch], eps)
    (alpha * log_prob - q_by_hand(critic, obs[batch], new_actions).min(0).values).mean().backward()
    assert got.grad_norm_local == pytest.approx(grad_norm(actor.parameters()), rel=1e-4)


def test_computing_them_changes_no_parameter_optimizer_state_or_grad():
    agent = tiny_sac(alpha=None)  # auto temperature: its optimizer too
    rng = np.random.default_rng(2)
    buffer = filled_buffer([random_transition(rng) for _ in range(40)], capacity=64)
    for _ in range(3):
        agent.update(buffer.sample(4))  # optimizer states and .grad exist
    state = copy.deepcopy(agent.state_dict())
    modules = (agent.actor, agent.critic, agent.critic_target)
    grads = [None if p.grad is None else p.grad.clone() for m in modules for p in m.parameters()]
    assert any(g is not None for g in grads)
    flags = [p.requires_grad for m in modules for p in m.parameters()]

    agent_signals(agent, buffer, 10)

    after = agent.state_dict()
    for key in ("actor", "critic", "critic_target", "actor_optimizer", "critic_optimizer", "alpha_optimizer"):
        assert_same(state[key], after[key])
    assert torch.equal(state["log_alpha"], after["log_alpha"]) and agent.log_alpha.grad is not None
    for before, p in zip(grads, (p for m in modules for p in m.parameters())):
        assert (before is None and p.grad is None) or torch.equal(before, p.grad)
    assert flags == [p.requires_grad for m in modules for p in m.parameters()]


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_they_depend_only_on_the_episodes_transitions():
    agent = tiny_sac(batch_size=8)
    rng = np.random.default_rng(3)
    history = [random_transition(rng) for _ in range(60)]
    episode = history[-15:]  # a ring of 50: the episode wraps around its end (rows 45..49, 0..9)
    full = filled_buffer(history, capacity=50, seed=5)
    alone = filled_buffer(episode, capacity=15, seed=5)  # the same generator, nothing else in the buffer
    torch.manual_seed(3)
    with_history = agent_signals(agent, full, 15)
    torch.manual_seed(3)
    assert agent_signals(agent, alone, 15) == with_history

    changed = filled_buffer([*history[:-15], *[(o, a, r + 1.0, n, d) for o, a, r, n, d in episode]], 50, seed=5)
    torch.manual_seed(3)
    assert agent_signals(agent, changed, 15) != with_history  # the episode's own rewards do matter


def test_an_empty_buffer_gives_no_signals_and_an_ensemble_a_clear_error():
    assert agent_signals(tiny_sac(), ReplayBuffer(8, OBS, ACT), 5).as_dict() == dict.fromkeys(LOCAL_KEYS)
    ensemble = EnsembleSAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), SmallPreset(), seeds=[0, 1])
    with pytest.raises(ValueError, match="single SAC"):
        agent_signals(ensemble, ReplayBuffer(8, OBS, ACT), 5)


# ---------------------------------------------------------------- the worker


def test_worker_reports_carry_the_local_signals_once_learning_started(service, tmp_path):
    create_curriculum(service, "local")
    d = tmp_path / "w"
    wait_exit(start_worker(service, d, "local", 400, 5, "--learning-starts", "350", "--eval-every", "0"), d)
    first, second = episode_log(d)
    stored = stored_proposals(service, "local")
    assert (first["grad_updates"], second["grad_updates"]) == (0, 51)
    assert all(stored[first["proposal_id"]]["signals"][k] is None for k in LOCAL_KEYS)  # before learning
    for key in LOCAL_KEYS:
        value = second[key]
        assert math.isfinite(value) and value > 0, key
        assert stored[second["proposal_id"]]["signals"][key] == pytest.approx(value)


# ---------------------------------------------------------------- Stable-Baselines3


def sb3_model(env: gym.Env, **kwargs) -> SB3SAC:
    return SB3SAC("MultiInputPolicy", env, batch_size=64, policy_kwargs=dict(net_arch=[32, 32]), seed=0,
                  device="cpu", **kwargs)


def test_replay_tail_reads_the_last_transitions_of_an_sb3_buffer():
    env = gym.make("PointMaze_UMaze-v3")
    buffer = DictReplayBuffer(8, env.observation_space, env.action_space, device="cpu")
    rng = np.random.default_rng(4)
    added = []
    for i in range(11):  # wraps around the ring of 8
        obs = {k: rng.normal(size=(1, *s.shape)) for k, s in env.observation_space.spaces.items()}
        next_obs = {k: rng.normal(size=(1, *s.shape)) for k, s in env.observation_space.spaces.items()}
        action, reward = rng.uniform(-1, 1, (1, 2)), rng.normal(size=1)
        done, timeout = i in (6, 9), i == 9  # 9 ends by a time limit: no terminal transition
        buffer.add(obs, next_obs, action, reward, np.array([done]), [{"TimeLimit.truncated": timeout}])
        added.append((obs, action, reward, next_obs, done and not timeout))
    tail = replay_tail(buffer, 5)
    for t, (obs, action, reward, next_obs, terminal) in enumerate(added[-5:]):
        for k in obs:
            assert torch.allclose(tail.obs[k][t], torch.as_tensor(obs[k][0]))
            assert torch.allclose(tail.next_obs[k][t], torch.as_tensor(next_obs[k][0]))
        assert torch.allclose(tail.actions[t], torch.as_tensor(action[0], dtype=torch.float32))
        assert float(tail.rewards[t]) == pytest.approx(float(reward[0]))
        assert float(tail.dones[t]) == float(terminal)


def test_sb3_critic_signals_equal_sb3s_own_loss_on_the_episode():
    env = gym.make("PointMaze_UMaze-v3")
    model = sb3_model(env, ent_coef=0.2)
    with torch.no_grad():
        for p in model.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, info = env.step(action)
        model.replay_buffer.add({k: v[None] for k, v in obs.items()}, {k: v[None] for k, v in next_obs.items()},
                                action[None], np.array([reward]), np.array([terminated]), [info])
        obs = next_obs
    episode = replay_tail(model.replay_buffer, 20)
    torch.manual_seed(11)
    got = local_signals(sb3_nets(model), episode, batch_size=64)  # 20 < 64: the whole episode

    # SB3's SAC.train, line by line, on the episode's transitions
    critic = copy.deepcopy(model.critic)
    torch.manual_seed(11)
    with torch.no_grad():
        next_actions, next_log_prob = model.actor.action_log_prob(episode.next_obs)
        next_q = torch.cat(model.critic_target(episode.next_obs, next_actions), dim=1).min(1, keepdim=True).values
        next_q = next_q - 0.2 * next_log_prob.reshape(-1, 1)
        target_q = episode.rewards.reshape(-1, 1) + (1 - episode.dones.reshape(-1, 1)) * model.gamma * next_q
    current_q = critic(episode.obs, episode.actions)
    (0.5 * sum(torch.nn.functional.mse_loss(q, target_q) for q in current_q)).backward()
    params = [p for name, p in critic.named_parameters() if "features_extractor" not in name]
    assert got.critic_grad_norm_local == pytest.approx(grad_norm(params), rel=1e-4)
    with torch.no_grad():
        min_q = torch.cat(model.critic(episode.obs, episode.actions), dim=1).min(1, keepdim=True).values
    assert got.positive_value_loss == pytest.approx(float((target_q - min_q).clamp_min(0).mean()), rel=1e-5)
    assert got.grad_norm_local > 0


def test_sb3_wrapper_reports_carry_the_local_signals(service):
    create_curriculum(service, "sb3-local")
    client = TeacherClient(service.url, service.student_token)
    env = TeacherCurriculumWrapper(gym.make("PointMaze_UMaze-v3"), client, "sb3-local", "sb3-0")
    model = sb3_model(env, learning_starts=350)
    model.learn(400, callback=GradNormCallback(env.tracker))
    env.close()  # reports the last, cut-short episode
    rows = sorted((r for r in stored_proposals(service, "sb3-local").values() if r["signals"]),
                  key=lambda r: r["reported_at"])
    first, second = (r["signals"] for r in rows)
    assert (first["env_steps"], second["env_steps"]) == (300, 100)
    assert first["grad_updates"] == 0 and all(first[k] is None for k in LOCAL_KEYS)
    assert second["grad_updates"] > 0
    assert all(math.isfinite(second[k]) and second[k] > 0 for k in LOCAL_KEYS)
