"""`alp-gmm`: Absolute Learning Progress with Gaussian Mixtures (Portelas et al., CoRL 2019).

The teacher proposes tasks where the student's reward is changing fastest, in either direction.

- Coordinates: every task is a point of [-1, 1]^d (a box scaled to it; a discrete task's values
  scaled the same way, see DiscreteSpace.features).
- Absolute learning progress (ALP) of a reported episode: |reward - reward of the nearest task
  that the same student reported before|, nearest in those coordinates, the most recent one among
  equally near ones (so a discrete task is compared with the student's own last report of it). 0 for
  a student's first episode. Only the same student's reports: two students of different skill
  taking turns on a task would otherwise look like progress while neither learns.
  The teacher keeps the last `history_size` (student, task, reward, ALP) rows.
- Fit: every `fit_rate` episodes, Gaussian mixtures with 2 to `max_components` full-covariance
  components are fitted (scikit-learn) on the last `fit_rate` (task, ALP) pairs; the one with the
  lowest AIC is kept. ALP is scaled by its window maximum for the fit, so that the fit does not depend
  on the reward's units; each component's mean ALP is kept in reward units.
- Propose: uniformly at random until the first fit and with probability `random_share` after it;
  otherwise pick a component with probability proportional to its mean ALP, draw a point from its
  Gaussian over task coordinates, clip it to the space, and (discrete spaces) take the nearest task.
- It learns from every reported episode (batch_size 1, horizon 1); the proposals' randomness comes from
  the teacher's own generator, so a restored checkpoint proposes exactly what the original would have.
  Its checkpoint holds the history, so the service stores it every `checkpoint_every` updates and replays
  the updates since from stored reports (fits are seeded by their index, so a replay is exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams


class ALPGMMParams(TeacherParams):
    fit_rate: int = Field(default=250, ge=10, le=100_000, description="Episodes between fits; also the fit's window.")
    random_share: float = Field(default=0.2, ge=0, le=1, description="Share of tasks proposed uniformly at random.")
    max_components: int = Field(default=10, ge=2, le=20)
    history_size: int = Field(
        default=2_000, ge=10, le=100_000, description="Reported tasks kept for the nearest-task lookup."
    )

    @model_validator(mode="after")
    def _history_holds_a_window(self) -> "ALPGMMParams":
        if self.history_size < self.fit_rate:
            raise ValueError(f"history_size ({self.history_size}) must be at least fit_rate ({self.fit_rate})")
        return self


class ALPGMMTeacher(Teacher):
    name = "alp-gmm"
    Params = ALPGMMParams

    def __init__(self, space, params: ALPGMMParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self.discrete = isinstance(space, DiscreteSpace)
        dim = space.feature_dim
        if self.discrete:
            self.task_features = np.stack([space.features(i) for i in range(space.size)])
        # History of reported episodes, oldest first.
        self.features = np.zeros((0, dim))
        self.rewards = np.zeros(0)
        self.students = np.zeros(0, dtype=object)
        self.alps = np.zeros(0)
        self.episodes = 0
        self.since_fit = 0
        self.fits = 0
        # The fitted mixture over task coordinates (None until the first fit).
        self.gmm: dict[str, np.ndarray] | None = None

    batch_size = 1  # learns from every report
    # The checkpoint holds up to `history_size` episodes (~100 KB at 2,000): stored every 50 updates; the
    # service replays the few updates since then (history appends, and a fit if one falls among them).
    checkpoint_every = 50

    # ------------------------------------------------------------------ propose

    def propose(self, context: Context) -> Decision:
        if self.gmm is None or float(torch.rand(1, generator=self.generator)) < self.params.random_share:
            decision = self.uniform_decision()
            decision.teacher_input = {"component": None}
            return decision
        weights = self.gmm["mean_alp"] if self.gmm["mean_alp"].sum() > 0 else self.gmm["weights"]
        k = int(torch.multinomial(torch.as_tensor(weights), 1, generator=self.generator))
        noise = torch.randn(self.space.feature_dim, generator=self.generator, dtype=torch.float64).numpy()
        point = np.clip(self.gmm["means"][k] + np.linalg.cholesky(self.gmm["covariances"][k]) @ noise, -1.0, 1.0)
        if self.discrete:
            index = int(np.argmin(np.linalg.norm(self.task_features - point, axis=1)))
            return Decision(task_index=index, teacher_input={"component": k})
        return Decision(task_values=self.space.from_unit(point).tolist(), teacher_input={"component": k})

    # ------------------------------------------------------------------ learn

    def _features_of(self, exp: Experience) -> np.ndarray:
        if self.discrete:
            return self.task_features[exp.task_index]
        return self.space.features_of_values(exp.task_values)

    def _alp(self, student: str, features: np.ndarray, reward: float) -> float:
        own = np.flatnonzero(self.students == student)
        if len(own) == 0:
            return 0.0
        distances = np.linalg.norm(self.features[own] - features, axis=1)
        nearest = own[len(own) - 1 - int(np.argmin(distances[::-1]))]  # the most recent among ties
        return abs(reward - float(self.rewards[nearest]))

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        alps = []
        for exp in sorted(batch, key=lambda e: e.seq):
            features = self._features_of(exp)
            alp = self._alp(exp.student_id, features, exp.reward)
            keep = self.params.history_size - 1
            self.features = np.concatenate([self.features[-keep:], features[None]])
            self.rewards = np.append(self.rewards[-keep:], exp.reward)
            self.students = np.append(self.students[-keep:], np.array([exp.student_id], dtype=object))
            self.alps = np.append(self.alps[-keep:], alp)
            alps.append(alp)
        self.episodes += len(batch)
        self.since_fit += len(batch)
        self.updates += 1
        stats: dict[str, Any] = {
            "episodes": len(batch),
            "reward_mean": float(np.mean([exp.reward for exp in batch])),
            "alp_mean": float(np.mean(alps)),
            "fitted": False,
        }
        if self.since_fit >= self.params.fit_rate:
            stats.update(fitted=True, **self._fit())
        return stats

    def _fit(self) -> dict[str, Any]:
        window = self.params.fit_rate
        alps = self.alps[-window:]
        scale = float(alps.max()) if alps.max() > 0 else 1.0
        data = np.column_stack([self.features[-window:], alps / scale])
        # Seeded by the fit's index, not the generator (which proposals draw from too): an update replayed
        # from stored reports (see checkpoint_every) fits exactly what the original did.
        seed = self.fits
        best, best_aic = None, np.inf
        # Imported here: scikit-learn takes about 2 s to import, which every service process and update worker
        # would pay at start-up, most of them for curricula without ALP-GMM.
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        # A few hundred points: thread pools only add overhead (100x on a busy machine), so use one thread.
        with threadpool_limits(1):
            for k in range(2, min(self.params.max_components, len(data)) + 1):
                gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed).fit(data)
                aic = gmm.aic(data)
                if aic < best_aic:
                    best, best_aic = gmm, aic
        # Keep plain arrays: the task-coordinate marginal of each component, and its mean ALP.
        self.gmm = {
            "weights": best.weights_.copy(),
            "means": best.means_[:, :-1].copy(),
            "covariances": best.covariances_[:, :-1, :-1].copy(),
            "mean_alp": best.means_[:, -1] * scale,
        }
        self.since_fit = 0
        self.fits += 1
        return {"components": best.n_components, "aic": float(best_aic), "window_alp_mean": float(alps.mean())}

    # ------------------------------------------------------------------ inspection

    def _to_task_coordinates(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Affine map from [-1, 1]^d back to the task's own coordinates: (offset, scale per unit)."""
        if self.discrete:
            low, high = self.space.values.min(axis=0), self.space.values.max(axis=0)
        else:
            low, high = self.space.low, self.space.high
        half_span = np.where(high > low, high - low, 0.0) / 2
        return low + (features + 1.0) * half_span, half_span

    def describe(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "updates": self.updates,
            "episodes": self.episodes,
            "fits": self.fits,
            "episodes_until_fit": self.params.fit_rate - self.since_fit,
            "random_share": self.params.random_share if self.gmm is not None else 1.0,
            "recent_alp_mean": float(self.alps[-self.params.fit_rate :].mean()) if len(self.alps) else None,
            "components": [],
        }
        if self.gmm is None:
            return state
        mean_alp = self.gmm["mean_alp"]
        pick = mean_alp / mean_alp.sum() if mean_alp.sum() > 0 else self.gmm["weights"]
        for k in range(len(mean_alp)):
            mean, half_span = self._to_task_coordinates(self.gmm["means"][k])
            component = {
                "weight": float(self.gmm["weights"][k]),
                "mean_alp": float(mean_alp[k]),
                "probability": float(pick[k] * (1 - self.params.random_share)),
                "mean": mean.tolist(),
                "std": (np.sqrt(np.diag(self.gmm["covariances"][k])) * half_span).tolist(),
                "covariance": self.gmm["covariances"][k].tolist(),  # in [-1, 1] task coordinates
            }
            if self.discrete:
                index = int(np.argmin(np.linalg.norm(self.task_features - self.gmm["means"][k], axis=1)))
                component["nearest_task"] = {"index": index, "name": self.space.names[index]}
            state["components"].append(component)
        return state

    # ------------------------------------------------------------------ checkpoints

    def extra_state(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "rewards": self.rewards,
            "students": self.students,
            "alps": self.alps,
            "episodes": self.episodes,
            "since_fit": self.since_fit,
            "fits": self.fits,
            "gmm": self.gmm,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.features, self.rewards, self.alps = state["features"], state["rewards"], state["alps"]
        # Checkpoints from before per-student progress have no students: their history counts for nobody.
        self.students = state.get("students", np.full(len(self.rewards), "", dtype=object))
        self.episodes, self.since_fit, self.fits = state["episodes"], state["since_fit"], state["fits"]
        self.gmm = state["gmm"]
