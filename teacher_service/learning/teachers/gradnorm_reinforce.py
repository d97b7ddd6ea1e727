"""`gradnorm-reinforce`: the paper's teacher (arXiv 2312.13565), done right.

A policy over tasks, trained by REINFORCE with a learned value baseline to propose the tasks whose
reported signal (by default the student's mean actor gradient norm) is largest.

- Policy: MLP 2x64 tanh. Categorical over a discrete space; over a box, a Gaussian with a learnable
  state-independent std whose sample is squashed by tanh into the box.
- Observation (if `use_context`): the student's last return (signed log scale), a flag saying
  whether there was a last episode, and the last task's coordinates scaled to [-1, 1]. Without
  context the observation is a constant and the policy is a plain distribution over tasks.
- Rewards: each proposal is rewarded with the signal of the episode trained on *that* proposal.
- Credit, and why the default horizon is 1: a task changes the student's next state only through
  its training, which the teacher cannot model from one number per episode, so by default each
  proposal is its own one-step trajectory (a contextual bandit) and is credited with its own reward.
  The paper chained 5 episodes of one student (discount 1, reward-to-go): with always-positive
  rewards such as gradient norms the reward-to-go then falls along the trajectory, and batch-
  normalized advantages credited a proposal for its position rather than its task (the best task
  came last in a trajectory of equal rewards and got the most negative advantage). With
  `horizon` > 1 the baseline therefore also sees the proposal's position in its trajectory, which
  removes that slope from the advantages (a baseline may depend on anything but the action).
- Update: once `batch_size` (at least 2) episodes in complete trajectories are waiting. Advantages
  = reward-to-go minus baseline, normalized over the batch (so one episode alone would teach
  nothing); one Adam step on the policy; `baseline_steps` Adam steps on the baseline, which
  predicts the batch-normalized reward-to-go.
- Stale proposals: with many students a proposal may be reported several teacher versions after
  it was drawn. Its log-probability under the policy that drew it is kept with the proposal, and
  its policy-gradient term is weighted by the truncated importance ratio min(pi/mu, `max_ratio`)
  (V-trace's rho-bar; 1 when the policy has not changed).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams
from teacher_service.learning.trajectories import positions, reward_to_go


class ReinforceParams(TeacherParams):
    # Bounded: the networks are built from these numbers and stored at every update (the paper's are 2x64).
    hidden_sizes: list[Annotated[int, Field(ge=1, le=256)]] = Field(default=[64, 64], min_length=1, max_length=4)
    lr: float = Field(default=5e-3, gt=0, le=1)
    baseline_lr: float = Field(default=5e-3, gt=0, le=1)
    baseline_steps: int = Field(default=5, ge=0, le=100)
    batch_size: int = Field(default=10, le=10_000, description="Episodes per update; at least 2.")
    horizon: int = Field(default=1, ge=1, le=1_000, description="Episodes of one student per trajectory.")
    use_context: bool = True
    normalize_advantages: bool = True
    init_log_std: float = Field(default=0.0, ge=-5, le=2)
    max_ratio: float = Field(default=1.0, ge=1, le=100, description="Truncation of the importance ratio.")

    @field_validator("batch_size")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be at least 2: advantages are normalized within a batch, so one episode teaches nothing")
        return value


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, size), nn.Tanh()]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def signed_log(x: float) -> float:
    """Keeps returns of any scale in a range a tanh network can use."""
    return math.copysign(math.log1p(abs(x)), x)


class GradNormReinforceTeacher(Teacher):
    name = "gradnorm-reinforce"
    Params = ReinforceParams

    def __init__(self, space, params: ReinforceParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self.discrete = isinstance(space, DiscreteSpace)
        self.obs_dim = 2 + space.feature_dim if params.use_context else 1
        out_dim = space.size if self.discrete else space.dim
        with torch.random.fork_rng():  # seeded initialisation without touching the process's generator
            torch.manual_seed(seed)
            self.policy = mlp(self.obs_dim, params.hidden_sizes, out_dim)
            # With trajectories longer than one episode the baseline also sees the position (see above).
            self.baseline = mlp(self.obs_dim + int(params.horizon > 1), params.hidden_sizes, 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((space.dim,), params.init_log_std))
        # Fused Adam: a third less time per step for networks this small, and an update takes six steps.
        self.policy_opt = torch.optim.Adam(self._policy_parameters(), lr=params.lr, fused=True)
        self.baseline_opt = torch.optim.Adam(self.baseline.parameters(), lr=params.baseline_lr, fused=True)

    @property
    def uses_context(self) -> bool:
        return self.params.use_context

    @property
    def horizon(self) -> int:
        return self.params.horizon

    @property
    def batch_size(self) -> int:
        return self.params.batch_size

    def _policy_parameters(self) -> list[nn.Parameter]:
        params = list(self.policy.parameters())
        return params if self.discrete else params + [self.log_std]

    def observation(self, context: Context) -> list[float]:
        if not self.params.use_context:
            return [1.0]
        if context.last_return is None:
            return [0.0, 0.0] + [0.0] * self.space.feature_dim
        if context.last_task_features is None:  # a student that gave its return but not its task
            return [signed_log(context.last_return), 1.0] + [0.0] * self.space.feature_dim
        return [signed_log(context.last_return), 1.0, *map(float, context.last_task_features)]

    def _distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.policy(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def propose(self, context: Context) -> Decision:
        return self.propose_many([context])[0]

    @torch.no_grad()
    def propose_many(self, contexts: list[Context]) -> list[Decision]:
        """One policy forward for all the contexts; the same draws, in order, as one propose() per context."""
        obs = [self.observation(context) for context in contexts]
        out = self.policy(torch.tensor(obs, dtype=torch.float32))
        if self.discrete:  # sampled from the logits directly: building a Categorical costs more than the network
            probs = torch.softmax(out, -1)
            # Row by row from the generator, as len(contexts) single draws would be.
            indices = torch.multinomial(probs, 1, generator=self.generator)
            chosen = probs.gather(1, indices).squeeze(1).tolist()
            return [
                Decision(task_index=index, teacher_input={"obs": o, "action": index, "log_prob": math.log(p)})
                for o, index, p in zip(obs, indices.squeeze(1).tolist(), chosen)
            ]
        std = self.log_std.exp()
        # One draw per context: a single randn over all of them would use another order of random numbers.
        noise = torch.stack([torch.randn(self.space.dim, generator=self.generator) for _ in contexts])
        raw = out + std * noise  # the pre-squash sample; its log-prob is what REINFORCE needs
        values = self.space.from_unit(torch.tanh(raw).double().numpy())
        log_probs = torch.distributions.Normal(out, std.expand_as(out)).log_prob(raw).sum(-1)
        return [
            Decision(task_values=v, teacher_input={"obs": o, "action": a, "log_prob": lp})
            for o, v, a, lp in zip(obs, values.tolist(), raw.tolist(), log_probs.tolist())
        ]

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        obs = torch.tensor([exp.teacher_input["obs"] for exp in batch], dtype=torch.float32)
        actions = torch.tensor(
            [exp.teacher_input["action"] for exp in batch], dtype=torch.long if self.discrete else torch.float32
        )
        rewards = torch.tensor([exp.reward for exp in batch], dtype=torch.float32)
        rtg = reward_to_go(batch)
        baseline_obs = obs
        if self.params.horizon > 1:
            baseline_obs = torch.cat([obs, positions(batch)[:, None] / self.params.horizon], dim=1)

        # The baseline predicts normalized reward-to-go; de-normalize it with this batch's statistics.
        rtg_mean, rtg_std = rtg.mean(), rtg.std(unbiased=False) + 1e-8
        with torch.no_grad():
            values = self.baseline(baseline_obs).squeeze(-1) * rtg_std + rtg_mean
        advantages = rtg - values
        if self.params.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std(unbiased=False) + 1e-8)

        log_prob = self._distribution(obs).log_prob(actions)
        if not self.discrete:
            log_prob = log_prob.sum(-1)
        # Proposals drawn by an older policy: truncated importance weights (1 for those drawn by this one,
        # and for proposals stored before behaviour log-probabilities were kept).
        behaviour = torch.tensor(
            [exp.teacher_input.get("log_prob", lp) for exp, lp in zip(batch, log_prob.detach().tolist())],
            dtype=torch.float32,
        )
        ratios = (log_prob.detach() - behaviour).exp().clamp(max=self.params.max_ratio)
        policy_loss = -(ratios * log_prob * advantages).mean()
        self.policy_opt.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_opt.step()

        targets = (rtg - rtg_mean) / rtg_std
        baseline_loss = torch.tensor(0.0)
        for _ in range(self.params.baseline_steps):
            baseline_loss = nn.functional.mse_loss(self.baseline(baseline_obs).squeeze(-1), targets)
            self.baseline_opt.zero_grad(set_to_none=True)
            baseline_loss.backward()
            self.baseline_opt.step()

        self.updates += 1
        return {
            "policy_loss": policy_loss.item(),
            "baseline_loss": baseline_loss.item(),
            "baseline_mean": float(values.mean()),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "reward_min": float(rewards.min()),
            "reward_max": float(rewards.max()),
            "episodes": len(batch),
            "importance_ratio_mean": float(ratios.mean()),
            "importance_ratio_min": float(ratios.min()),
            **self._distribution_summary(),
        }

    @torch.no_grad()
    def _distribution_summary(self) -> dict[str, Any]:
        """The policy at the context of a student's first episode (no last task)."""
        dist = self._distribution(torch.tensor(self.observation(Context()), dtype=torch.float32))
        if self.discrete:
            probs = dist.probs
            return {"probabilities": [round(float(p), 6) for p in probs], "entropy": float(dist.entropy())}
        return {
            "mean": self.space.from_unit(torch.tanh(dist.mean).double().numpy()).tolist(),
            "std": dist.stddev.tolist(),
        }

    def describe(self) -> dict[str, Any]:
        return {"updates": self.updates, **self._distribution_summary()}

    @torch.no_grad()
    def sample_values(self, n: int, seed: int = 0) -> np.ndarray:
        """Samples of the box policy at the first-episode context, for histograms; own generator."""
        dist = self._distribution(torch.tensor(self.observation(Context()), dtype=torch.float32))
        noise = torch.randn(n, self.space.dim, generator=torch.Generator().manual_seed(seed))
        return self.space.from_unit(torch.tanh(dist.mean + dist.stddev * noise).double().numpy())

    def extra_state(self) -> dict[str, Any]:
        state = {
            "policy": self.policy.state_dict(),
            "baseline": self.baseline.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "baseline_opt": self.baseline_opt.state_dict(),
        }
        if not self.discrete:
            state["log_std"] = self.log_std.detach().clone()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.baseline.load_state_dict(state["baseline"])
        if not self.discrete:
            with torch.no_grad():
                self.log_std.copy_(state["log_std"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.baseline_opt.load_state_dict(state["baseline_opt"])
