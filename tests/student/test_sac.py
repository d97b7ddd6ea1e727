"""SAC: the TD target reads the target critics, updates run, probes and checkpoints work."""

import math

import numpy as np
import pytest
import torch

from student_client.sac.buffer import ReplayBuffer
from student_client.sac.agent import SAC, EnsembleLinear, PointMazePreset, SmallPreset, make_buffer

torch.set_num_threads(1)
OBS, ACT = 6, 2


def make_agent(n_critics: int = 2, alpha: float | None = 0.1) -> tuple[SAC, ReplayBuffer]:
    torch.manual_seed(0)
    config = SmallPreset(n_critics=n_critics, alpha=alpha, batch_size=32)
    agent = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), config)
    buffer = ReplayBuffer(200, OBS, ACT, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        buffer.add(rng.normal(size=OBS).astype(np.float32), rng.uniform(-1, 1, ACT).astype(np.float32),
                   float(rng.normal()), rng.normal(size=OBS).astype(np.float32), bool(rng.random() < 0.1))
    return agent, buffer


def test_td_target_reads_target_networks_not_online_critics():
    agent, buffer = make_agent()
    batch = buffer.sample(32)
    torch.manual_seed(1)
    target = agent.td_target(batch)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)  # changing the online critics...
    torch.manual_seed(1)
    assert torch.equal(agent.td_target(batch), target)  # ...does not change the target
    torch.manual_seed(1)
    loss = agent.critic_loss(batch)
    with torch.no_grad():
        for p in agent.critic_target.parameters():
            p.mul_(1.5)  # changing the target critics changes target and loss
    torch.manual_seed(1)
    assert not torch.allclose(agent.td_target(batch), target)
    torch.manual_seed(1)
    assert not torch.isclose(agent.critic_loss(batch), loss)


def test_updates_are_finite_and_target_follows_by_polyak():
    agent, buffer = make_agent(alpha=None)  # also exercises the auto-tuned temperature
    before = [p.clone() for p in agent.critic_target.parameters()]
    for _ in range(5):
        losses = agent.update(buffer.sample(32))
        assert all(math.isfinite(float(v)) for v in losses.values())
    moved = [not torch.equal(a, b) for a, b in zip(before, agent.critic_target.parameters())]
    assert all(moved)
    # Each target step is a lerp of size tau towards the online critic: the target stays close.
    for t, o in zip(agent.critic_target.parameters(), agent.critic.parameters()):
        assert not t.requires_grad and not torch.equal(t, o)
    actor, critic = agent.pop_grad_stats()
    assert actor.updates == critic.updates == 5
    assert 0 < actor.episode <= actor.mean and 0 < critic.episode <= critic.mean
    assert agent.log_alpha.item() != 0.0


def test_fused_critics_are_independent_networks():
    agent, buffer = make_agent(n_critics=2)
    batch = buffer.sample(32)
    q = agent.critic(batch.obs, batch.actions)
    assert q.shape == (2, 32)
    assert not torch.allclose(q[0], q[1])
    loss = q[0].sum()  # the first critic's output has no gradient into the second one's weights
    loss.backward()
    assert all(p.grad[1].abs().sum() == 0 for p in agent.critic.parameters())


def test_pointmaze_preset_and_checkpoint_roundtrip():
    config = PointMazePreset()
    assert (config.hidden, config.n_critics, config.batch_size, config.alpha) == ((128, 128, 128), 1, 128, 0.2)
    agent, buffer = make_agent()
    agent.update(buffer.sample(32))
    clone, _ = make_agent()
    clone.load_state_dict(agent.state_dict())
    obs = torch.randn(4, OBS)
    assert torch.equal(clone.actor.deterministic(obs), agent.actor.deterministic(obs))
    restored = ReplayBuffer(200, OBS, ACT)
    restored.load_state_dict(buffer.state_dict())
    assert torch.equal(restored.sample(8).obs, buffer.sample(8).obs)


def test_log_prob_matches_torch_distributions():
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import AffineTransform, TanhTransform

    torch.manual_seed(0)
    agent = SAC(OBS, ACT, np.array([-2.0, 0.0]), np.array([2.0, 1.0]), SmallPreset())
    obs = torch.randn(16, OBS)
    torch.manual_seed(1)
    actions, log_prob = agent.actor.sample(obs)
    mean, log_std = agent.actor(obs)
    dist = TransformedDistribution(Normal(mean, log_std.exp()),
                                   [TanhTransform(), AffineTransform(agent.actor.action_bias, agent.actor.action_scale)])
    torch.testing.assert_close(log_prob, dist.log_prob(actions).sum(-1), atol=2e-3, rtol=1e-4)
    assert torch.all(actions[:, 0].abs() <= 2) and torch.all((actions[:, 1] >= 0) & (actions[:, 1] <= 1))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_in_place_activations_give_the_plain_networks_values_and_gradients(activation):
    """The actor and critics (tanh as 2 sigmoid(2x) - 1, ReLU in place) against the same weights run with torch's
    own out-of-place tanh and ReLU: same outputs and the same gradients of every weight and of the actions."""
    torch.manual_seed(0)
    config = SmallPreset(hidden=(16, 16), activation=activation)
    agent = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), config)
    obs, actions = torch.randn(32, OBS), torch.rand(32, ACT).mul(2).sub(1).requires_grad_()
    plain_fn = torch.tanh if activation == "tanh" else torch.relu

    def plain(layers: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = plain_fn(x) if not isinstance(layer, (torch.nn.Linear, EnsembleLinear)) else layer(x)
        return x

    def outputs(use_plain: bool) -> list[torch.Tensor]:
        for p in [*agent.actor.parameters(), *agent.critic.parameters()]:
            p.grad = None
        actions.grad = None
        trunk = plain(agent.actor.trunk, obs) if use_plain else agent.actor.trunk(obs)
        x = torch.cat([obs, actions], -1).expand(config.n_critics, -1, -1)
        q = plain(agent.critic.net, x) if use_plain else agent.critic.net(x)
        (trunk.square().sum() + q.sum()).backward()
        grads = [p.grad.clone() for p in [*agent.actor.trunk.parameters(), *agent.critic.parameters()]]
        return [trunk.detach(), q.detach(), actions.grad.clone(), *grads]

    for ours, reference in zip(outputs(use_plain=False), outputs(use_plain=True), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_device_option_trains_acts_and_checkpoints_across_devices(device, tmp_path):
    """Networks, optimizer states, buffer and probes on ``device``; act() in numpy; a checkpoint saved
    there loads on every device with map_location."""
    torch.manual_seed(0)
    config = SmallPreset(batch_size=16, hidden=(16, 16), alpha=None)
    agent = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), config, device=device)
    buffer = make_buffer(config, 100, OBS, ACT, seed=0, device=device)
    rng = np.random.default_rng(0)
    for _ in range(40):
        obs = rng.normal(size=OBS).astype(np.float32)
        action = agent.act(obs)
        assert isinstance(action, np.ndarray) and action.shape == (ACT,)
        buffer.add(obs, action, float(rng.normal()), rng.normal(size=OBS).astype(np.float32), False)
    for _ in range(3):
        agent.update(buffer.sample(16))
    tensors = [*agent.actor.parameters(), *agent.critic_target.parameters(), agent.log_alpha, buffer.obs,
               *(v for s in agent.critic_optimizer.state.values() for v in s.values() if v.dim())]
    assert {t.device.type for t in tensors} == {torch.device(device).type}
    assert agent.pop_grad_stats()[1].updates == 3
    torch.save({"agent": agent.state_dict(), "buffer": buffer.state_dict()}, tmp_path / "checkpoint.pt")
    obs = rng.normal(size=OBS).astype(np.float32)
    for target in DEVICES:
        state = torch.load(tmp_path / "checkpoint.pt", map_location=target, weights_only=False)
        clone = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), config, device=target)
        clone.load_state_dict(state["agent"])
        restored = make_buffer(config, 100, OBS, ACT, seed=5, device=target)
        restored.load_state_dict(state["buffer"])
        np.testing.assert_allclose(clone.act(obs, deterministic=True), agent.act(obs, deterministic=True),
                                   atol=1e-6)
        torch.testing.assert_close(restored.sample(8).obs.cpu(), buffer.sample(8).obs.cpu())
        batch = restored.sample(16)
        clone.update(batch)  # the optimizer states moved with the weights


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), SmallPreset(), device="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        make_buffer(SmallPreset(), 100, OBS, ACT, seed=0, device="cuda:0")


def test_adam_step_is_torch_fused_adams_step():
    """The update's Adam step (torch's fused kernel called directly) moves weights and moments exactly
    as torch.optim.Adam(fused=True).step() does."""
    from student_client.sac.agent import adam_step

    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    ours = torch.optim.Adam(weights, lr=1e-2, fused=True)
    torch_s = torch.optim.Adam(copies, lr=1e-2, fused=True)
    for _ in range(4):
        x = torch.randn(7, 5)
        for params, step in ((weights, lambda: adam_step(ours)), (copies, torch_s.step)):
            for p in params:
                p.grad = None
            ((x @ params[0] + params[1]).tanh().square().sum()).backward()
            step()
    for a, b in zip(weights, copies):
        assert torch.equal(a, b) and not torch.equal(a, torch.zeros_like(a))
    for a, b in zip(ours.state.values(), torch_s.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert float(ours.state[weights[0]]["step"]) == 4


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "betas": (0.8, 0.95), "eps": 1e-6, "maximize": True},
                                     {"amsgrad": True}, {"decoupled_weight_decay": True, "weight_decay": 0.1}])
def test_adam_step_resumes_from_a_state_dict_as_torch_does(options):
    """Two steps, a checkpoint round trip into a new optimizer, two more: weights, moments and step counts
    as torch's own step() gives them, whatever the group's options (bias correction counts the resumed steps)."""
    from student_client.sac.agent import adam_step

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    runs = []
    for step in (adam_step, torch.optim.Adam.step):
        params = [w.clone().requires_grad_() for w in start]
        optimizer = torch.optim.Adam(params, lr=1e-2, fused=True, **options)
        torch.manual_seed(1)
        for k in range(4):
            if k == 2:  # resume: a fresh optimizer loads the checkpoint
                saved = optimizer.state_dict()
                optimizer = torch.optim.Adam(params, lr=1e-2, fused=True, **options)
                optimizer.load_state_dict(saved)
            for p in params:
                p.grad = None
            ((torch.randn(7, 5) @ params[0] + params[1]).tanh().square().sum()).backward()
            step(optimizer)
        runs.append((params, optimizer))
    (ours, ours_opt), (theirs, theirs_opt) = runs
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours_opt.state.values(), theirs_opt.state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert float(a["step"]) == 4


@pytest.mark.parametrize("members", [None, 3])
def test_buffer_batches_keep_each_transition_whole(members):
    """Sampled rows are stored transitions, field for field (one storage tensor, views per field)."""
    lead = (members,) if members else ()
    buffer = ReplayBuffer(10, OBS, ACT, seed=[1, 2, 3] if members else 1)
    rng = np.random.default_rng(0)
    for t in range(12):  # wraps around
        obs = np.full((*lead, OBS), t, dtype=np.float32)
        obs[..., 1] = np.arange(members or 1).reshape(lead)  # the member that stored it
        done = rng.random(lead) < 0.5 if members else bool(rng.random() < 0.5)
        buffer.add(obs, obs[..., :ACT] + 0.5, obs[..., 0] + 0.25, obs + 100, done)
    batch = buffer.sample(32)
    assert batch.obs.shape == (*lead, 32, OBS) and batch.dones.shape == (*lead, 32)
    torch.testing.assert_close(batch.actions, batch.obs[..., :ACT] + 0.5)
    torch.testing.assert_close(batch.rewards, batch.obs[..., 0] + 0.25)
    torch.testing.assert_close(batch.next_obs, batch.obs + 100)
    stored_by = torch.arange(members, dtype=torch.float32).unsqueeze(1).expand(members, 32) if members else 0
    assert torch.all(batch.obs[..., 1] == stored_by)  # each member samples its own rows
    assert set(batch.obs[..., 0].flatten().tolist()) <= set(range(2, 12))  # steps 0 and 1 were overwritten
    assert set(batch.dones.flatten().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("capacity, kept", [(10, range(2, 12)), (16, range(2, 12)), (4, range(8, 12))])
def test_a_buffer_checkpoint_loads_into_a_buffer_of_another_capacity(capacity, kept):
    """A run resumed with a larger --steps has a larger buffer (sized to the run) than its checkpoint's, which once
    failed the resume. The rows go to the new buffer oldest first (the newest that fit, if it is smaller); with the
    same capacity they stay where they were, and the buffer goes on writing over the oldest."""
    buffer = ReplayBuffer(10, OBS, ACT, seed=1)
    for t in range(12):  # wraps around: steps 0 and 1 overwritten, the oldest row (step 2) at position 2
        obs = np.full(OBS, t, dtype=np.float32)
        buffer.add(obs, obs[:ACT], float(t), obs + 100, False)
    resumed = ReplayBuffer(capacity, OBS, ACT, seed=1)
    resumed.load_state_dict(buffer.state_dict())
    rows = resumed.obs[:resumed.size, 0].tolist()
    assert (rows if capacity != 10 else rows[2:] + rows[:2]) == list(kept)
    assert resumed.next_obs[:resumed.size, 0].tolist() == [r + 100 for r in rows]  # each transition whole
    resumed.add(np.full(OBS, 12, dtype=np.float32), np.zeros(ACT), 12.0, np.zeros(OBS), False)
    steps = resumed.obs[:resumed.size, 0].tolist()
    assert sorted(steps) == sorted([*kept, 12])[-capacity:]  # the oldest step is the one written over, if any
