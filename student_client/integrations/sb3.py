"""Stable-Baselines3 glue: a callback that installs gradient-norm probes on an unmodified SAC/TD3."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

from student_client.probes import GradNormTracker


class GradNormCallback(BaseCallback):
    """Hooks ``model.actor.optimizer`` and ``model.critic.optimizer`` into a `GradNormTracker`."""

    def __init__(self, tracker: GradNormTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def _on_training_start(self) -> None:
        self.tracker.attach(self.model.actor.optimizer, "actor")
        self.tracker.attach(self.model.critic.optimizer, "critic")

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.tracker.detach()
