"""Ensemble SAC: member k is a single SAC with seed k, fed member k's batches, to float tolerance."""

import numpy as np
import pytest
import torch

from student_client.sac.agent import SAC, SmallPreset
from student_client.sac.buffer import Batch, ReplayBuffer
from student_client.sac.ensemble import EnsembleSAC

torch.set_num_threads(1)
OBS, ACT = 6, 2
LOW, HIGH = np.array([-2.0, -1.0]), np.array([2.0, 1.0])
SEEDS = [3, 11, 7]


def batches(n: int, size: int, member: int) -> list[Batch]:
    g = torch.Generator().manual_seed(100 + member)
    return [Batch(torch.randn(size, OBS, generator=g), torch.rand(size, ACT, generator=g) * 2 - 1,
                  torch.randn(size, generator=g), torch.randn(size, OBS, generator=g),
                  (torch.rand(size, generator=g) < 0.1).float()) for _ in range(n)]


def stack(member_batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(fields) for fields in zip(*member_batches)))


def assert_state_close(single: dict, member: dict) -> None:
    for key in ("actor", "critic", "critic_target"):
        for name, value in single[key].items():
            torch.testing.assert_close(member[key][name], value, rtol=2e-4, atol=2e-5, msg=f"{key}.{name}")
    for key in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
        for i, entry in single.get(key, {"state": {}})["state"].items():
            for name, value in entry.items():
                torch.testing.assert_close(member[key]["state"][i][name], value, rtol=2e-4, atol=1e-6,
                                           msg=f"{key}[{i}].{name}")
    torch.testing.assert_close(member["log_alpha"], single["log_alpha"], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("n_critics, alpha", [(2, None), (1, 0.2)])
def test_members_equal_single_sacs_over_many_updates(n_critics, alpha):
    """Same weights, same batches, same noise stream: same weights, Adam moments, alpha and gradient
    norms after every one of 200 updates. A gradient leaking between members, a mean over members
    (1/K gradients) or a shared Adam statistic breaks it."""
    config = SmallPreset(n_critics=n_critics, alpha=alpha, batch_size=16, hidden=(32, 32))
    updates = 200
    data = [batches(updates, config.batch_size, k) for k in range(len(SEEDS))]
    ensemble = EnsembleSAC(OBS, ACT, LOW, HIGH, config, SEEDS)

    singles, norms = [], []
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)  # what a single student with this seed does: its weights and noise
        single = SAC(OBS, ACT, LOW, HIGH, config)
        assert_state_close(single.state_dict(), ensemble.member_state_dict(k))
        member_norms = []
        for batch in data[k]:
            single.update(batch)
            member_norms.append(single.pop_grad_stats())
        singles.append(single)
        norms.append(member_norms)

    for t in range(updates):
        ensemble.update(stack([data[k][t] for k in range(len(SEEDS))]))
        for k in range(len(SEEDS)):
            actor, critic = ensemble.pop_grad_stats(k)
            single_actor, single_critic = norms[k][t]
            assert actor.updates == critic.updates == 1
            assert actor.mean == pytest.approx(single_actor.mean, rel=2e-3), (t, k)
            assert critic.mean == pytest.approx(single_critic.mean, rel=2e-3), (t, k)
    for k, single in enumerate(singles):
        assert_state_close(single.state_dict(), ensemble.member_state_dict(k))
    # The members really are different students.
    assert not torch.allclose(ensemble.actor.head.weight[0], ensemble.actor.head.weight[1])


def test_episode_statistics_are_per_member():
    """pop(k) returns member k's mean and episode norms and resets only member k."""
    config = SmallPreset(batch_size=8, hidden=(16,))
    ensemble = EnsembleSAC(OBS, ACT, LOW, HIGH, config, [0, 1])
    data = [batches(3, 8, k) for k in range(2)]
    for t in range(3):
        ensemble.update(stack([data[0][t], data[1][t]]))
    actor0, critic0 = ensemble.pop_grad_stats(0)
    assert actor0.updates == 3 and 0 < actor0.episode <= actor0.mean and 0 < critic0.episode <= critic0.mean
    ensemble.update(stack([data[0][0], data[1][0]]))
    assert ensemble.pop_grad_stats(0)[0].updates == 1
    assert ensemble.pop_grad_stats(1)[0].updates == 4
    assert ensemble.pop_grad_stats(1)[0].updates == 0


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_acting_and_checkpoint_roundtrip(device):
    """On ``device``; member 1 continues as a single student on the CPU."""
    config = SmallPreset(batch_size=8, hidden=(16, 16), alpha=None)
    ensemble = EnsembleSAC(OBS, ACT, LOW, HIGH, config, [0, 1, 2], device=device)
    buffer = ReplayBuffer(50, OBS, ACT, seed=[0, 1, 2], device=device)
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs = rng.normal(size=(3, OBS)).astype(np.float32)
        action = ensemble.act(obs)
        assert action.shape == (3, ACT) and np.all(np.abs(action) <= HIGH)
        buffer.add(obs, action, rng.normal(size=3), rng.normal(size=(3, OBS)).astype(np.float32), rng.random(3) < .1)
    batch = buffer.sample(8)
    assert batch.obs.shape == (3, 8, OBS) and batch.rewards.shape == (3, 8)
    ensemble.update(batch)
    clone = EnsembleSAC(OBS, ACT, LOW, HIGH, config, [5, 6, 7], device=device)
    clone.load_state_dict(ensemble.state_dict())
    obs = rng.normal(size=(3, OBS)).astype(np.float32)
    np.testing.assert_array_equal(clone.act(obs, deterministic=True), ensemble.act(obs, deterministic=True))
    np.testing.assert_array_equal(clone.act(obs), ensemble.act(obs))  # the noise streams resumed too
    batch = buffer.sample(8)
    assert torch.equal(clone.update(batch)["critic_loss"], ensemble.update(batch)["critic_loss"])
    restored = ReplayBuffer(50, OBS, ACT, seed=[9, 9, 9], device=device)
    restored.load_state_dict(buffer.state_dict())
    assert torch.equal(restored.sample(8).obs, buffer.sample(8).obs)
    # Member 1 as a single student continues exactly where it was.
    single = SAC(OBS, ACT, LOW, HIGH, config)
    single.load_state_dict(ensemble.member_state_dict(1))
    torch.testing.assert_close(single.actor.deterministic(torch.from_numpy(obs[1:2]))[0],
                               torch.from_numpy(ensemble.act(obs, deterministic=True)[1]))
