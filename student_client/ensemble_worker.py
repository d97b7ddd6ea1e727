"""K students in one process (``student-worker --students K`` or ``--seeds S1 S2 ...``).

K environments, K replay buffers (one buffer with a member dimension, each member sampling its own
rows from its own generator) and one `EnsembleSAC` whose every layer holds the K members' weights.
The K environments step in lockstep: one batched actor forward gives the K actions, each member's
transition goes to its own rows, and once past ``learning_starts`` one ensemble update per env step
gives every member exactly one update of its own per env step, as a single student gets.

Each member is a student of its own, as with `student-worker` alone: its student id, curriculum,
proposals, reports (its own signals, local ones included), evaluations, outbox, episode log and
checkpoint (``--checkpoint-dir``: one per member, or DIR/s<seed>). A member checkpoint has the
single worker's format; the members' are written one by one, each keeping its previous one, and a
restart resumes every member from the newest step they all have (a kill while they were written
leaves members one checkpoint apart). Members whose episodes end at the same step report and propose through the
batch verbs (``/report/batch``, ``/propose/batch``), with the session's outage policy: env-default
tasks while the teacher is down, reports in each member's outbox until it is back. A stop signal
ends every member's episode as ``stopped``, checkpoints all members and drains the outboxes.
"""

from __future__ import annotations

import argparse
import logging
import random
from typing import Any

import numpy as np
from tqdm import tqdm

from student_client.envs import TaskMismatchError, make_env, step_all
from student_client.episode_signals import LocalSignals, agent_signals
from student_client.evaluation import run_episodes, target_options
from student_client.sac.agent import make_buffer
from student_client.sac.buffer import FIELDS, ReplayBuffer, fitted
from student_client.sac.ensemble import EnsembleSAC
from student_client.session import drain_many, flush_many, propose_many, targets_many
from student_client.training import Episode, StudentFiles, StudentSpec, make_client, sac_config
from teacher_service.wire import Proposal, Signals

log = logging.getLogger("student_client.worker")


class Member:
    """One student of the ensemble: its environments, files and session, and its current episode."""

    def __init__(self, k: int, spec: StudentSpec, args: argparse.Namespace, files: StudentFiles) -> None:
        self.k, self.seed, self.files = k, spec.seed, files
        self.session = files.session
        self.env = make_env(args.env, **args.env_kwargs)
        self.eval_env = make_env(args.env, **args.env_kwargs)
        self.env.action_space.seed(spec.seed)
        self.proposal: Proposal | None = None
        self.episode = Episode()
        self.obs: np.ndarray | None = None


class EnsembleWorker:
    """The students of ``specs`` trained in lockstep in this process; see the module docstring."""

    def __init__(self, args: argparse.Namespace, specs: list[StudentSpec]) -> None:
        self.args = args
        seeds = [spec.seed for spec in specs]
        random.seed(seeds[0])
        np.random.seed(seeds[0])
        client = make_client(args)
        self.members = [Member(k, spec, args, StudentFiles(spec, client, args.retry_every))
                        for k, spec in enumerate(specs)]
        env = self.members[0].env
        self.config = sac_config(args)
        # Member k starts as a single SAC seeded with seeds[k] (ensemble.py).
        self.agent = EnsembleSAC(env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high, self.config,
                                 seeds, device=args.device)
        self.buffer = make_buffer(self.config, args.steps, env.obs_dim, env.act_dim, seeds, device=args.device)
        self.step = 0
        self.next_eval = args.eval_every
        self.next_checkpoint = args.checkpoint_every
        self.stop_requested = False
        self.load()

    # ------------------------------------------------------------ training

    def run(self) -> None:
        """Train until ``--steps`` env steps or a stop signal, then checkpoint and drain the outboxes."""
        bar = tqdm(total=self.args.steps, initial=self.step, unit="step", mininterval=1.0, dynamic_ncols=True,
                   disable=self.args.no_progress)
        try:
            # Asked once at the start (again at the next evaluation if down); inside the try, as the first propose was.
            targets_many([m.session for m in self.members])
            self.start(self.members)
            while self.step < self.args.steps and not self.stop_requested:
                self.env_step()
                bar.update(1)
                if self.args.eval_every and self.step >= self.next_eval:
                    self.evaluate()
                    self.next_eval = self.step + self.args.eval_every
                ended = [m for m in self.members if m.episode.ended]
                if ended and self.step < self.args.steps and not self.stop_requested:
                    self.finish(ended)
                    self.start(ended)
                if self.step >= self.next_checkpoint:
                    self.save()
                    self.next_checkpoint = self.step + self.args.checkpoint_every
            self.finish(self.members)  # ended at the last step, or cut: stopped
        finally:
            bar.close()
            self.save()
            drain_many([m.session for m in self.members], self.args.drain_timeout, stop=lambda: self.stop_requested)
            for m in self.members:
                m.files.close()

    def start(self, members: list[Member]) -> None:
        """Their next tasks (one batch call when several ask at once) and the envs reset on them."""
        proposals = propose_many([m.session for m in members])
        for k, (m, proposal) in enumerate(zip(members, proposals)):
            first = m.files.episodes == 0 and self.step == 0
            try:
                m.obs = m.env.reset(proposal.reset_options if proposal else {}, seed=m.seed if first else None)
            except TaskMismatchError:  # of another environment (worker.check_environment): none of the batch trained
                for member, unused in zip(members, proposals):  # those before k too: reset on theirs, not stepped
                    member.proposal = None
                    if unused is not None:
                        member.session.release(unused)
                raise
            m.proposal, m.episode = proposal, Episode()

    def env_step(self) -> None:
        """One step of every env (one batched actor forward), its transitions stored, one ensemble update."""
        members = self.members
        obs = np.stack([m.obs for m in members])
        if self.step < self.config.random_steps:
            actions = np.stack([m.env.action_space.sample() for m in members])
        else:
            actions = self.agent.act(obs)
        next_obs, rewards, terminated, truncated, success = step_all([m.env for m in members], actions)
        self.buffer.add(obs, actions, rewards, next_obs, terminated)
        self.step += 1
        for m, m.obs, reward, ends, cut, succeeded in zip(members, next_obs, rewards.tolist(), terminated.tolist(),
                                                          truncated.tolist(), success.tolist()):  # m.obs: the next obs
            m.episode.steps += 1
            m.episode.ret += reward
            m.episode.success |= succeeded
            m.episode.ended = ends or cut
        if self.step >= self.config.learning_starts and self.buffer.size >= self.config.batch_size:
            self.agent.update(self.buffer.sample(self.config.batch_size))

    def finish(self, members: list[Member]) -> None:
        """Report their episodes (one batch call when several end at once); a task not yet trained on is
        given back (abandoned)."""
        for m in members:
            if m.episode.steps == 0:
                m.session.finish(m.proposal, Signals(), "abandoned", deliver=False)
            else:
                grads = self.agent.pop_grad_stats(m.k)
                local = (agent_signals(self.agent, self.buffer, m.episode.steps, member=m.k) if grads[0].updates
                         else LocalSignals())
                m.files.report(m.proposal, m.episode, grads, local, self.step, self.step >= self.args.steps,
                               deliver=False)
            m.proposal, m.episode = None, Episode()
        flush_many([m.session for m in members])

    def evaluate(self) -> None:
        """Every member's deterministic policy, in lockstep, on its curriculum's target tasks or the env's
        default ones (`evaluation`); seeded by the step, as the single worker's."""
        targets = targets_many([m.session for m in self.members])
        index = self.step // self.args.eval_every
        results = run_episodes([m.eval_env for m in self.members],
                               lambda obs: self.agent.act(obs, deterministic=True),
                               [target_options(t, self.args.eval_episodes, index) for t in targets],
                               [m.seed * 1_000_003 + self.step for m in self.members])
        for m, target, (returns, successes) in zip(self.members, targets, results):
            m.files.evaluated(self.step, returns, successes, target is not None)

    # ------------------------------------------------------------ checkpoints

    def save(self) -> None:
        """Each member's checkpoint, in the single worker's format (a member can resume alone)."""
        members = [m for m in self.members if m.files.dir]
        for m in members:
            rng = {"python": random.getstate(), "numpy": np.random.get_state(),
                   "torch": self.agent.actor.generators[m.k].get_state(),
                   "action_space": m.env.action_space.np_random.bit_generator.state}
            state = m.files.checkpoint(self.args.env, self.step, self.next_eval, self.agent.member_state_dict(m.k),
                                       member_buffer_state(self.buffer, m.k), rng)
            m.files.save(state, keep_previous=True)

    def load(self) -> None:
        """Resume every member from its checkpoint at the newest step they all have, if there are any (each
        keeps its previous one: a kill while they were written leaves members one checkpoint apart)."""
        saved = [m.files.saved_all() for m in self.members]
        if not any(saved):
            return
        common = set.intersection(*({state["step"] for state in states} for states in saved))
        if not common:
            steps = [[state["step"] for state in states] for states in saved]
            raise SystemExit(f"student-worker: the members' checkpoints have no step in common (steps saved "
                             f"by member: {steps}); resume them one at a time, or start afresh")
        step = max(common)
        states = []
        for m, member_states in zip(self.members, saved):
            index = [state["step"] for state in member_states].index(step)
            if index:  # its newest checkpoint is of a step the others did not all reach
                log.warning("%s: its checkpoint of step %d is ahead of the other students'; resuming from its "
                            "previous one", m.files.dir, member_states[0]["step"])
                m.files.roll_back()
            states.append(member_states[index])
        self.agent.load_members([state["agent"] for state in states])
        for m, state in zip(self.members, states):
            m.files.restore(state, self.args.env)
            load_member_buffer(self.buffer, m.k, state["buffer"])
            self.agent.actor.generators[m.k].set_state(state["rng"]["torch"])
            m.env.action_space.np_random.bit_generator.state = state["rng"]["action_space"]
            m.env.reset(seed=m.seed + states[0]["step"])  # a fresh env stream, as the single worker's
        random.setstate(states[0]["rng"]["python"])
        np.random.set_state(states[0]["rng"]["numpy"])
        self.step, self.next_eval = states[0]["step"], states[0]["next_eval"]
        self.next_checkpoint = self.step + self.args.checkpoint_every
        log.info("resumed %d students from their checkpoints at step %d", len(self.members), self.step)

    def request_stop(self, signum: int, frame: Any) -> None:
        log.warning("signal %d: ending the episodes, checkpointing and exiting", signum)
        self.stop_requested = True


def member_buffer_state(buffer: ReplayBuffer, k: int) -> dict:
    """Member k's rows of an ensemble buffer as a single buffer's ``state_dict``."""
    n = buffer.size
    return {"capacity": buffer.capacity, "pos": buffer.pos, "size": n,
            **{key: getattr(buffer, key)[:n, k].to("cpu", copy=True) for key in FIELDS},
            "generator": buffer.generators[k].get_state()}


def load_member_buffer(buffer: ReplayBuffer, k: int, state: dict) -> None:
    """Member k's rows from a single buffer's ``state_dict`` (all members at the same position)."""
    state = fitted(state, buffer.capacity)
    n = state["size"]
    for key in FIELDS:
        getattr(buffer, key)[:n, k] = state[key]
    buffer.pos, buffer.size = state["pos"], n
    buffer.generators[k].set_state(state["generator"])
