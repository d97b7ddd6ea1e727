"""CleanRL's SAC (sac_continuous_action.py) attached to the teacher service, read top to bottom.

    TEACHER_URL=http://127.0.0.1:8000 TEACHER_TOKEN=... python examples/cleanrl_sac.py --curriculum umaze-gradnorm

What the teacher adds to CleanRL's loop, marked "teacher:" below:
1. before each episode, ``session.propose()`` and ``env.reset(options=reset_options(env, ...))``;
2. a `GradNormTracker` on the two optimizers (it records every ``step()``, the trainer is unchanged);
3. at each episode's end, *after* the update that follows its last step, ``tracker.pop()``: exactly that
   episode's updates, which go into the report's `Signals` with the episode's return, success and length.
The `TeacherSession` survives teacher outages as `student-worker` does: env-default tasks while the teacher
is away, reports kept in ``--outbox`` and delivered when it is back. As in CleanRL: two critics with target
networks, autotuned temperature; one actor update per env step (CleanRL's ``policy_frequency=1``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from student_client import TeacherClient
from student_client.envs import reset_options
from student_client.episode_signals import Transitions, cleanrl_signals
from student_client.probes import GradNormTracker
from student_client.session import TeacherSession, reportable
from teacher_service.wire import Signals


@dataclass
class Args:
    curriculum: str = "umaze-gradnorm"
    student_id: str = "cleanrl-0"
    env_id: str = "PointMaze_UMaze-v3"
    total_timesteps: int = 20_000
    max_episode_steps: int | None = None  # None: the environment's own limit (300 for PointMaze_UMaze)
    seed: int = 1
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    learning_starts: int = 5_000
    policy_lr: float = 3e-4
    q_lr: float = 1e-3
    hidden: int = 256
    outbox: str | None = None  # a file that keeps undelivered reports across restarts


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    optional = {"max_episode_steps": int, "outbox": str}  # the types of the fields that default to None
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=optional.get(name, type(default)), default=default)
    return Args(**vars(parser.parse_args()))


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.cat([x, a], 1)))
        return self.fc3(F.relu(self.fc2(x)))


LOG_STD_MAX, LOG_STD_MIN = 2, -5


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.spaces.Box, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        act_dim = int(np.prod(action_space.shape))
        self.fc_mean = nn.Linear(hidden, act_dim)
        self.fc_logstd = nn.Linear(hidden, act_dim)
        high, low = (torch.as_tensor(b, dtype=torch.float32) for b in (action_space.high, action_space.low))
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)

    def get_action(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t) - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean) * self.action_scale + self.action_bias


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(1)
    # Dict observations (mazes) flattened to one vector; reset_options reads the wrapped env's id.
    env = gym.wrappers.FlattenObservation(gym.make(args.env_id, max_episode_steps=args.max_episode_steps))
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]

    actor = Actor(obs_dim, env.action_space, args.hidden)
    qf1, qf2 = SoftQNetwork(obs_dim, act_dim, args.hidden), SoftQNetwork(obs_dim, act_dim, args.hidden)
    qf1_target, qf2_target = SoftQNetwork(obs_dim, act_dim, args.hidden), SoftQNetwork(obs_dim, act_dim, args.hidden)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
    target_entropy = -float(act_dim)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().item()
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr)

    # teacher: the session (client, outage policy, outbox) and the gradient-norm probes
    session = TeacherSession(TeacherClient(), args.curriculum, args.student_id, args.outbox)
    tracker = GradNormTracker()
    tracker.attach(actor_optimizer, "actor")
    tracker.attach(q_optimizer, "critic")

    # The replay buffer, sized to the run (no wrap-around): an episode's transitions are rows start..end.
    size = args.total_timesteps
    rb_obs, rb_next_obs = np.zeros((size, obs_dim), np.float32), np.zeros((size, obs_dim), np.float32)
    rb_actions = np.zeros((size, act_dim), np.float32)
    rb_rewards, rb_dones = np.zeros(size, np.float32), np.zeros(size, np.float32)

    def episode_transitions(start: int, end: int) -> Transitions:
        t = torch.as_tensor
        return Transitions(t(rb_obs[start:end]), t(rb_actions[start:end]), t(rb_rewards[start:end]),
                           t(rb_next_obs[start:end]), t(rb_dones[start:end]))

    def start_episode(seed: int | None = None):
        proposal = session.propose()  # teacher: None while the teacher is away (the env's default task)
        obs, _ = env.reset(seed=seed, options=reset_options(env, proposal.reset_options if proposal else None))
        return proposal, obs

    def episode_signals(start: int, end: int, ret: float, success: bool) -> Signals:
        """teacher: the report of the episode in rows start..end, trained on up to now."""
        stats = tracker.pop()  # exactly the updates since the last pop: this episode's
        actor_stats, critic_stats = stats["actor"], stats["critic"]
        local = {}
        if actor_stats.updates:  # episode-local signals: gradients on this episode's own transitions
            local = cleanrl_signals(actor, [qf1, qf2], [qf1_target, qf2_target], alpha, args.gamma,
                                    episode_transitions(start, end), args.batch_size).as_dict()
        # reportable: a value the schema refuses (a diverged NaN) is sent as absent, not raised.
        return reportable(Signals, session.student_id, grad_norm_mean=actor_stats.mean,
                          grad_norm_episode=actor_stats.episode, critic_grad_norm_mean=critic_stats.mean,
                          critic_grad_norm_episode=critic_stats.episode, grad_updates=actor_stats.updates,
                          episode_return=ret, success=success, env_steps=end - start, **local)

    proposal, obs = start_episode(seed=args.seed)
    start, ret, success = 0, 0.0, False
    for global_step in range(args.total_timesteps):
        if global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor.get_action(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        rb_obs[global_step], rb_next_obs[global_step], rb_actions[global_step] = obs, next_obs, action
        rb_rewards[global_step], rb_dones[global_step] = reward, float(terminated)
        obs = next_obs
        ret += float(reward)
        success |= bool(info.get("success", False))

        if global_step >= args.learning_starts:  # one update per env step, after the step
            idx = np.random.randint(0, global_step + 1, args.batch_size)
            b_obs, b_next_obs = torch.as_tensor(rb_obs[idx]), torch.as_tensor(rb_next_obs[idx])
            b_actions, b_rewards, b_dones = (torch.as_tensor(a[idx]) for a in (rb_actions, rb_rewards, rb_dones))
            with torch.no_grad():
                next_actions, next_log_pi, _ = actor.get_action(b_next_obs)
                min_next = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                min_next = min_next - alpha * next_log_pi
                next_q = b_rewards + (1 - b_dones) * args.gamma * min_next.view(-1)
            qf_loss = F.mse_loss(qf1(b_obs, b_actions).view(-1), next_q) + F.mse_loss(
                qf2(b_obs, b_actions).view(-1), next_q)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            pi, log_pi, _ = actor.get_action(b_obs)
            actor_loss = (alpha * log_pi - torch.min(qf1(b_obs, pi), qf2(b_obs, pi))).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            with torch.no_grad():
                _, log_pi, _ = actor.get_action(b_obs)
            alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
            a_optimizer.zero_grad()
            alpha_loss.backward()
            a_optimizer.step()
            alpha = log_alpha.exp().item()

            for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.data.copy_(args.tau * p.data + (1 - args.tau) * tp.data)

        if terminated or truncated:
            # teacher: here, after the update that followed the last step and before the next reset
            session.ended(proposal, ret)
            session.finish(proposal, episode_signals(start, global_step + 1, ret, success))
            proposal, obs = start_episode()
            start, ret, success = global_step + 1, 0.0, False

    # teacher: the episode the budget cut short is reported as stopped (it rewards no teacher)
    end = args.total_timesteps
    if end > start:
        session.finish(proposal, episode_signals(start, end, ret, success), "stopped")
    elif proposal is not None:
        session.release(proposal)
    session.drain(timeout=30)
    env.close()


if __name__ == "__main__":
    main()
