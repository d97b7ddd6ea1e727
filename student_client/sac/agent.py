"""Soft Actor-Critic in torch, read top to bottom: presets, networks, the update.

Twin critics are one module whose layers hold the stacked weights of all critics, so the critics run
in one batched matmul per layer. With ``members=K`` every network holds K independent students the
same way (a leading member dimension on every tensor; see ``ensemble.py``); the single student is
``members=None``, with no member dimension. The TD targets read the *target* critics (the paper's
code updated its target networks but never read them: defect 4). Gradient-norm probes record the
actor's and the critic's whole gradient vector at every update (see ``probes.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from student_client.probes import GradNormAccumulator, GradStats
from student_client.sac.buffer import Batch, ReplayBuffer
from student_client.sac.device import resolve_device

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


# ---------------------------------------------------------------- presets


@dataclass
class SACConfig:
    """Hyperparameters of SAC; ``alpha=None`` tunes the entropy temperature automatically."""

    hidden: tuple[int, ...] = (256, 256, 256)
    activation: str = "relu"
    n_critics: int = 2
    batch_size: int = 256
    alpha: float | None = 0.05
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    buffer_size: int = 1_000_000
    random_steps: int = 5_000  # uniform random actions before the policy acts
    learning_starts: int = 10_000  # first gradient update; then one update per env step
    compile: bool = False  # torch.compile the update: not faster on CPU (0.95x eager, rounds 0.77x to 1.08x)


@dataclass
class PointMazePreset(SACConfig):
    """The paper's PointMaze student: 3x128 tanh, one critic, batch 128, alpha 0.2."""

    hidden: tuple[int, ...] = (128, 128, 128)
    activation: str = "tanh"
    n_critics: int = 1
    batch_size: int = 128
    alpha: float | None = 0.2


@dataclass
class AntMazePreset(SACConfig):
    """The paper's AntMaze student: 3x256, two critics with min, batch 256, alpha 0.05."""


@dataclass
class AdroitPreset(SACConfig):
    """The paper's AdroitHandRelocate student: 3x256, two critics with min, batch 256, alpha 0.05."""


@dataclass
class SmallPreset(SACConfig):
    """A fast CPU preset for experiments and tests."""

    hidden: tuple[int, ...] = (64, 64)
    batch_size: int = 64
    alpha: float | None = 0.1
    buffer_size: int = 100_000
    random_steps: int = 500
    learning_starts: int = 1_000


PRESETS: dict[str, type[SACConfig]] = {
    "pointmaze": PointMazePreset,
    "antmaze": AntMazePreset,
    "adroit": AdroitPreset,
    "small": SmallPreset,
}


def preset_for_env(env_id: str) -> str:
    """The paper's preset for an environment id."""
    if env_id.startswith("PointMaze"):
        return "pointmaze"
    if env_id.startswith("AntMaze"):
        return "antmaze"
    return "adroit"


# ---------------------------------------------------------------- networks

# Constants as 0-dim tensors: an op given a Python number wraps it in a tensor first, ~1 us per op, and an update
# makes dozens of such ops (128x128 tanh forward and backward: 33 us against 40).
TWO, MINUS_TWO, ONE = torch.tensor(2.0), torch.tensor(-2.0), torch.tensor(1.0)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1: on CPU torch's tanh kernel is ~3x slower than its sigmoid. With the
    backward too this form is still faster (128x128: 33 us against 46; 8x64x64: 53 against 82), though its
    backward is three ops where tanh's is one. In place where the backward allows: a product by a constant
    does not keep its result, the sigmoid does."""
    s = (x * TWO).sigmoid_()
    return (s.mul(TWO) if s.requires_grad else s.mul_(TWO)).sub_(ONE)


class FastTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_tanh(x)


# ReLU in place: a linear layer's backward does not need its output (ensemble of 8: 1.4% more steps/s).
ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "tanh": FastTanh}


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers run as one batched matmul: (n, B, in) -> (n, B, out)."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialization
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features).uniform_(-bound, bound))
        # A critic's head (one output) of several networks: a product and a sum, since a batched matmul with
        # one output column runs at a fifth of its usual speed (16 networks: 11 us against 34 forward, 57 against
        # 113 with the backward); one network, or more outputs, are as fast or faster as the matmul.
        self.one_output = n > 1 and out_features == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_output:
            return (x * self.weight.transpose(-1, -2)).sum(-1, keepdim=True) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


def linear(members: int | None, in_features: int, out_features: int) -> nn.Module:
    """A plain linear layer, or ``members`` of them stacked."""
    return nn.Linear(in_features, out_features) if members is None else EnsembleLinear(members, in_features,
                                                                                       out_features)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; one output layer gives mean and log-std.

    Observations are (B, obs_dim), or (members, B, obs_dim) with ``members``.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str,
                 action_low: np.ndarray, action_high: np.ndarray, members: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim
        for size in hidden:
            layers += [linear(members, last, size), ACTIVATIONS[activation]()]
            last = size
        self.trunk = nn.Sequential(*layers)
        self.head = linear(members, last, 2 * act_dim)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)
        self.unit_bounds = bool(torch.all(low == -1) and torch.all(high == 1))  # skip the affine map
        self.log_prob_offset = -float(act_dim) * (0.5 * math.log(2 * math.pi) + 2 * math.log(2)) - float(
            self.action_scale.log().sum())
        self.act_dim = act_dim
        self.generators: list[torch.Generator] | None = None  # one noise stream per member; None: torch's

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.trunk(obs)).split(self.act_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action in the env's bounds and its log-probability."""
        mean, log_std = self(obs)
        if self.generators is None:
            eps = torch.randn_like(mean)
        else:
            # the members' streams are CPU generators on every device: checkpoints move across devices
            # normal_ on unbound rows: randn's values in half the time of randn(out=...) over iterated rows
            eps = torch.empty(mean.shape)
            for member_eps, g in zip(eps.unbind(), self.generators):
                member_eps.normal_(generator=g)
            eps = eps.to(mean.device)
        u = torch.addcmul(mean, log_std.exp(), eps)
        # log N(u; mean, std) - log|d tanh(u)/du| - log scale, with the stable
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)); constants are folded into log_prob_offset.
        log_prob = (u + F.softplus(u * MINUS_TWO)).mul(TWO).sub_(torch.addcmul(log_std, eps, eps, value=0.5)).sum(-1)
        return self._squash(u), log_prob + self.log_prob_offset

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self._squash(self(obs)[0])

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        action = fast_tanh(u)
        return action if self.unit_bounds else action * self.action_scale + self.action_bias


class Critics(nn.Module):
    """``n`` Q-networks evaluated together; Q-values of shape (n, B), or (members, n, B).

    With ``members`` the layers hold members * n networks, member-major: member k's critics are
    the slices [k n, (k + 1) n) of every parameter.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str, n: int,
                 members: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim + act_dim
        for size in hidden:
            layers += [EnsembleLinear((members or 1) * n, last, size), ACTIVATIONS[activation]()]
            last = size
        layers.append(EnsembleLinear((members or 1) * n, last, 1))
        self.net = nn.Sequential(*layers)
        self.n = n

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        lead, rows = x.shape[:-2], x.shape[-2:]  # lead: () or (members,)
        x = x.unsqueeze(-3).expand(*lead, self.n, *rows).reshape(-1, *rows)
        return self.net(x).view(*lead, self.n, rows[0])

    def min_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The minimum over the critics, (B,) or (members, B)."""
        q = self(obs, actions)
        return q.squeeze(-2) if self.n == 1 else q.min(-2).values  # a single critic needs no min op


# ---------------------------------------------------------------- algorithm


def clear_grads(params: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad()`` (to None) without its ~50 us of Python."""
    for p in params:
        p.grad = None


def adam_step(optimizer: torch.optim.Adam) -> None:
    """``optimizer.step()`` of a fused Adam (one group, no AMSGrad): the same two kernels, without the
    ~50 us of Python that surround them in ``step`` (two steps per update). Its first call, which
    creates the moments, calls under torch.compile (which cannot trace the kernel called so) and any
    other kind of Adam are ``step`` itself."""
    group = optimizer.param_groups[0]
    states = [optimizer.state[p] for p in group["params"]]
    if (not states[0] or torch.compiler.is_compiling() or len(optimizer.param_groups) > 1 or not group["fused"]
            or group["amsgrad"] or group["decoupled_weight_decay"]):
        optimizer.step()
        return
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(group["params"], [p.grad for p in group["params"]], [state["exp_avg"] for state in states],
                       [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"],
                       beta1=group["betas"][0], beta2=group["betas"][1], weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"])


class SAC:
    """SAC agent: networks, optimizers, the update and the gradient-norm probes.

    ``members=K`` trains K independent students at once (``EnsembleSAC`` in ensemble.py): batches
    and observations get a leading member dimension, and every loss is the *sum* of the members'
    losses, so that member k's gradient, Adam step and temperature are exactly its own.

    Networks, optimizer states and probes live on ``device``; ``act`` takes and returns numpy arrays.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                 config: SACConfig, probes: bool = True, members: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.config = config
        self.members = members
        self.device = device = resolve_device(device)
        self.actor = Actor(obs_dim, act_dim, config.hidden, config.activation, action_low, action_high,
                           members).to(device)
        self.critic = Critics(obs_dim, act_dim, config.hidden, config.activation, config.n_critics,
                              members).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        adam = dict(lr=config.lr, fused=True)  # fused Adam: one kernel for all parameters
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), **adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), **adam)
        self.auto_alpha = config.alpha is None
        self.log_alpha = torch.zeros((members, 1) if members else (1,), device=device,
                                     requires_grad=self.auto_alpha)
        if self.auto_alpha:
            self.target_entropy = -float(act_dim)
            self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.lr)
        else:
            self.log_alpha.data.fill_(math.log(config.alpha))
        self.alpha = self.log_alpha.detach().exp()
        self.probes = probes
        self.actor_probe = GradNormAccumulator(self.actor.parameters(), members)
        self.critic_probe = GradNormAccumulator(self.critic.parameters(), members)
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        if config.compile:
            from torch._inductor import config as inductor

            inductor.fallback_random = True  # torch's own random streams: seeds reproduce
            self.update = torch.compile(self.update)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        x = torch.from_numpy(obs).to(self.device).unsqueeze(-2)  # a batch of one (per member)
        action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.squeeze(-2).cpu().numpy()

    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma (1 - done) (min_i Q_target_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s')."""
        next_actions, next_log_prob = self.actor.sample(batch.next_obs)
        next_q = torch.addcmul(self.critic_target.min_q(batch.next_obs, next_actions), self.alpha, next_log_prob,
                               value=-1)
        return torch.addcmul(batch.rewards, 1 - batch.dones, next_q, value=self.config.gamma)

    def critic_loss(self, batch: Batch) -> torch.Tensor:
        """Half the squared TD error, averaged over the batch and summed over critics (and members)."""
        q = self.critic(batch.obs, batch.actions)
        target = self.td_target(batch).unsqueeze(-2).expand_as(q)
        return F.mse_loss(q, target, reduction="sum") * (0.5 / q.shape[-1])

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step of critics, actor (and temperature), then Polyak averaging."""
        critic_loss = self.critic_loss(batch)
        clear_grads(self._critic_params)
        critic_loss.backward()
        if self.probes:
            self.critic_probe.record()
        adam_step(self.critic_optimizer)

        actions, log_prob = self.actor.sample(batch.obs)
        actor_loss = (self.alpha * log_prob - self.critic.min_q(batch.obs, actions)).mean(-1).sum()
        clear_grads(self._actor_params)
        # Through the critics to the actions, without the critics' weight gradients.
        actor_loss.backward(inputs=self._actor_params)
        if self.probes:
            self.actor_probe.record()
        adam_step(self.actor_optimizer)

        if self.auto_alpha:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean(-1).sum()
            self.log_alpha.grad = None
            alpha_loss.backward()
            self.alpha_optimizer.step()
            self.alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach()}

    def pop_grad_stats(self, member: int = 0) -> tuple[GradStats, GradStats]:
        """(actor, critic) gradient statistics since the last call, e.g. of one episode (of ``member``)."""
        return self.actor_probe.pop(member), self.critic_probe.pop(member)

    def state_dict(self) -> dict:
        state = {
            "config": asdict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
        }
        if self.auto_alpha:
            state["alpha_optimizer"] = self.alpha_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.log_alpha.data.copy_(state["log_alpha"])
        self.alpha = self.log_alpha.detach().exp()
        if self.auto_alpha:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])


def make_buffer(config: SACConfig, total_steps: int, obs_dim: int, act_dim: int,
                seed: int | list[int], device: str | torch.device = "cpu") -> ReplayBuffer:
    """A replay buffer sized to the run (one seed per member for an ensemble's), stored on ``device``."""
    return ReplayBuffer(min(config.buffer_size, total_steps), obs_dim, act_dim, seed=seed, device=device)
