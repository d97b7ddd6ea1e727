"""Evaluation episodes of one or several students: a deterministic policy on the curriculum's target tasks,
or on the environment's default start and goal distribution when the curriculum names no target.

Which target task an episode runs on: with n target tasks and E episodes per evaluation, episode i of
evaluation j runs on task (j E + i) mod n, j = env step // eval-every (so a resumed student continues the
rotation). With n <= E every evaluation covers every task, each E // n or E // n + 1 times; with n > E
consecutive evaluations take consecutive windows of E tasks, so over n / gcd(n, E) evaluations every
task is evaluated equally often.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from student_client.envs import EnvAdapter, step_all
from student_client.session import TeacherSession
from teacher_service.wire import EvaluationRequest, TargetTasks


def target_options(target: TargetTasks | None, episodes: int, index: int) -> list[dict[str, Any] | None]:
    """The reset options of evaluation ``index``'s episodes (see the module docstring); None: env default."""
    if target is None:
        return [None] * episodes
    tasks = target.reset_options
    return [tasks[(index * episodes + i) % len(tasks)] for i in range(episodes)]


def run_episodes(envs: Sequence[EnvAdapter], act: Callable[[np.ndarray], np.ndarray],
                 options: Sequence[Sequence[dict[str, Any] | None]],
                 seeds: Sequence[int]) -> list[tuple[list[float], list[bool]]]:
    """Student k runs one episode per entry of ``options[k]`` (at least one) on ``envs[k]``, its first reset
    seeded with ``seeds[k]``; all students in lockstep: ``act`` maps the (K, obs_dim) observations to
    (K, act_dim) actions (a finished student's rows are ignored). Returns each student's (returns, successes)."""
    results: list[tuple[list[float], list[bool]]] = [([], []) for _ in envs]
    obs = [env.reset(opts[0], seed=seed) for env, opts, seed in zip(envs, options, seeds)]
    running = list(range(len(envs)))
    ret, success = [0.0] * len(envs), [False] * len(envs)
    while running:
        actions = act(np.stack(obs))
        steps = step_all([envs[k] for k in running], actions[running])
        for k, obs[k], reward, terminated, truncated, succ in zip(list(running), *steps):
            ret[k] += float(reward)
            success[k] |= bool(succ)
            if terminated or truncated:
                results[k][0].append(ret[k])
                results[k][1].append(success[k])
                ret[k], success[k] = 0.0, False
                done = len(results[k][0])
                if done < len(options[k]):
                    obs[k] = envs[k].reset(options[k][done])
                else:
                    running.remove(k)
    return results


def evaluation_request(session: TeacherSession, step: int, returns: list[float], successes: list[bool],
                       on_target: bool) -> EvaluationRequest:
    return EvaluationRequest(curriculum=session.curriculum, student_id=session.student_id, env_steps=step,
                             episodes=len(returns), success_rate=float(np.mean(successes)),
                             mean_return=float(np.mean(returns)), on_target=on_target)
