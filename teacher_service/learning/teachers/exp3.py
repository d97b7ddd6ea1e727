"""`exp3`: the Exp3.S non-stationary bandit over discrete tasks, as in Graves et al. (2017),
"Automated Curriculum Learning for Neural Networks".

Each task is an arm with a weight w_i. The reward can be any reported signal (a gradient norm, a
return, a derived progress signal); the bandit only needs it to be larger for better arms.

- Policy: pi_i = (1 - gamma) softmax(w)_i + gamma / N; `gamma` keeps every task explored.
- Reward rescaling: the raw reward r is mapped to [-1, 1] by the 20th and 80th percentiles (q_lo,
  q_hi) of the last `reward_window` raw rewards (this one included): -1 below q_lo, 1 above q_hi,
  linear in between (Graves: "adaptive" rewards, so the bandit works whatever the signal's scale).
- Update for the played arm a, with the importance-weighted reward r~ = r_hat / pi_a (pi_a as it
  was when the task was proposed) and r~_j = 0 for the other arms:
      w_i <- log[(1 - alpha) exp(w_i + eta r~_i) + alpha / (N - 1) sum_{j != i} exp(w_j + eta r~_j)]
  The `alpha` share of weight passed between arms lets a task that became useful win again quickly
  (the "S" of Exp3.S: tracking a best arm that changes).
- Step size: the importance-weighted reward r_hat / pi_a makes each report move one weight by up
  to eta N (N tasks), so on equal rewards the weights random-walk with variance about T eta^2 N
  after T reports, and a large eta locks onto an arbitrary task (eta 0.1: 42 equally rewarded
  tasks, 200 reports, top probability 0.87). Graves et al. ran a much smaller step over hundreds
  of thousands of steps; ours are thousands of episodes, and eta 0.01 stays near uniform on equal rewards
  (top probability about 2x uniform at 42 tasks, 200 reports) and still moves to a better task
  within a few hundred reports of it.
- It learns from every reported episode (batch_size 1, horizon 1), so the number of students does
  not change its dynamics. Box task spaces are rejected: use alp-gmm, learnability or
  gradnorm-reinforce there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams


class Exp3Params(TeacherParams):
    eta: float = Field(default=0.01, gt=0, le=10, description="Step size of the weight update.")
    gamma: float = Field(default=0.05, ge=0, le=1, description="Share of uniform exploration.")
    alpha: float = Field(default=0.01, ge=0, lt=1, description="Share of weight passed between arms per update.")
    reward_window: int = Field(default=1_000, ge=2, le=100_000, description="Recent raw rewards for the quantiles.")
    quantiles: tuple[float, float] = Field(default=(0.2, 0.8), description="Low and high quantile of the rescaling.")

    @field_validator("quantiles")
    @classmethod
    def _ordered_quantiles(cls, quantiles: tuple[float, float]) -> tuple[float, float]:
        low, high = quantiles
        if not 0 <= low < high <= 1:
            raise ValueError(f"must satisfy 0 <= low < high <= 1, got {list(quantiles)}")
        return quantiles


def log_softmax(w: np.ndarray) -> np.ndarray:
    shifted = w - w.max()
    return shifted - np.log(np.exp(shifted).sum())


class Exp3Teacher(Teacher):
    name = "exp3"
    Params = Exp3Params

    def __init__(self, space, params: Exp3Params, seed: int) -> None:
        if not isinstance(space, DiscreteSpace):
            raise ValueError(
                "exp3 needs a discrete task space (a list of tasks or a maze preset); "
                "for a box use alp-gmm or gradnorm-reinforce"
            )
        if space.size < 2:
            raise ValueError("exp3 needs at least 2 tasks")
        super().__init__(space, params, seed)
        self.weights = np.zeros(space.size)
        self.recent_rewards = np.zeros(0)

    batch_size = 1  # learns from every report

    def probabilities(self) -> np.ndarray:
        n = len(self.weights)
        return (1 - self.params.gamma) * np.exp(log_softmax(self.weights)) + self.params.gamma / n

    def propose(self, context: Context) -> Decision:
        probs = self.probabilities()
        index = int(torch.multinomial(torch.as_tensor(probs), 1, generator=self.generator))
        return Decision(task_index=index, teacher_input={"probability": float(probs[index])})

    def rescale(self, reward: float) -> float:
        q_lo, q_hi = np.quantile(self.recent_rewards, self.params.quantiles)
        if q_hi == q_lo:
            return float(np.sign(reward - q_lo))
        return float(np.clip(2 * (reward - q_lo) / (q_hi - q_lo) - 1, -1, 1))

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        n, alpha = len(self.weights), self.params.alpha
        scaled = []
        for exp in sorted(batch, key=lambda e: e.seq):
            self.recent_rewards = np.append(self.recent_rewards[-(self.params.reward_window - 1) :], exp.reward)
            r_hat = self.rescale(exp.reward)
            scaled.append(r_hat)
            logits = self.weights.copy()
            logits[exp.task_index] += self.params.eta * r_hat / exp.teacher_input["probability"]
            e = np.exp(logits - logits.max())
            shared = (1 - alpha) * e + alpha / (n - 1) * (e.sum() - e)
            # Without sharing (alpha 0) a losing arm's weight could underflow to -inf for good; keep it finite.
            self.weights = np.log(np.maximum(shared, 1e-300))
            self.weights -= self.weights.max()  # only differences matter; keeps the numbers small
        self.updates += 1
        probs = self.probabilities()
        q_lo, q_hi = np.quantile(self.recent_rewards, self.params.quantiles)
        return {
            "episodes": len(batch),
            "reward_mean": float(np.mean([exp.reward for exp in batch])),
            "scaled_reward_mean": float(np.mean(scaled)),
            "quantile_low": float(q_lo),
            "quantile_high": float(q_hi),
            "best_task": int(probs.argmax()),
            "best_probability": float(probs.max()),
            "entropy": float(-(probs * np.log(probs)).sum()),
        }

    def describe(self) -> dict[str, Any]:
        probs = self.probabilities()
        return {
            "updates": self.updates,
            "weights": self.weights.tolist(),
            "probabilities": probs.tolist(),
            "best_task": {"index": int(probs.argmax()), "name": self.space.names[int(probs.argmax())]},
            "reward_quantiles": np.quantile(self.recent_rewards, self.params.quantiles).tolist()
            if len(self.recent_rewards)
            else None,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "recent_rewards": self.recent_rewards}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.weights, self.recent_rewards = state["weights"], state["recent_rewards"]
