"""Gradient-norm probes against a linear model whose MSE gradient is computed by hand."""

import numpy as np
import pytest
import torch

from student_client.probes import GradNormAccumulator, GradNormTracker

torch.set_num_threads(1)


def hand_gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d/d(w, b) of mean_i ||w x_i + b - y_i||^2 as one vector."""
    err = x @ w.T + b - y  # (B, out)
    dw = 2 * err.T @ x / len(x) / err.shape[1]
    db = 2 * err.sum(0) / len(x) / err.shape[1]
    return np.concatenate([dw.ravel(), db])


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64))
            for _ in range(n)]


def expected(model: torch.nn.Linear, data) -> tuple[float, float]:
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    grads = [hand_gradient(w, b, x.numpy(), y.numpy()) for x, y in data]
    return float(np.mean([np.linalg.norm(g) for g in grads])), float(np.linalg.norm(np.mean(grads, axis=0)))


def test_accumulator_matches_hand_gradients_and_survives_zeroing():
    model = torch.nn.Linear(3, 2).double()
    acc = GradNormAccumulator(model.parameters())
    data = batches(3)
    for x, y in data:
        model.zero_grad(set_to_none=False)  # in-place zeroing: what overwrote the paper's stored views
        torch.nn.functional.mse_loss(model(x), y).backward()
        acc.record()
    # Zero and then overwrite .grad in place before reading the statistics.
    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        p.grad.add_(123.0)
    mean, episode = expected(model, data)
    stats = acc.pop()
    assert stats.updates == 3
    assert stats.mean == pytest.approx(mean, rel=1e-9)
    assert stats.episode == pytest.approx(episode, rel=1e-9)
    assert stats.episode < stats.mean  # the batches' gradients point in different directions


def test_accumulator_reports_none_without_updates_and_restarts_after_pop():
    model = torch.nn.Linear(3, 2).double()
    acc = GradNormAccumulator(model.parameters())
    assert acc.pop().mean is None and acc.pop().episode is None and acc.pop().updates == 0
    data = batches(2)
    for x, y in data:
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        acc.record()
    acc.pop()
    model.zero_grad()
    torch.nn.functional.mse_loss(model(data[1][0]), data[1][1]).backward()
    acc.record()
    mean, episode = expected(model, data[1:])
    stats = acc.pop()
    assert (stats.updates, stats.mean, stats.episode) == (1, pytest.approx(mean), pytest.approx(episode))


def test_tracker_hooks_optimizer_steps():
    model = torch.nn.Linear(3, 2).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradNormTracker()
    tracker.attach(optimizer, "actor")
    data = batches(4)
    grads = []
    for x, y in data:  # the weights change between steps: compute each gradient at the weights it saw
        w, b = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
        grads.append(hand_gradient(w, b, x.numpy(), y.numpy()))
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    stats = tracker.pop()["actor"]
    assert stats.updates == 4
    assert stats.mean == pytest.approx(np.mean([np.linalg.norm(g) for g in grads]), rel=1e-9)
    assert stats.episode == pytest.approx(np.linalg.norm(np.mean(grads, axis=0)), rel=1e-9)
    tracker.detach()
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(data[0][0]), data[0][1]).backward()
    optimizer.step()
    assert tracker.pop()["actor"].updates == 0
