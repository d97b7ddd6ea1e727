"""An unmodified Stable-Baselines3 SAC trained on the teacher's PointMaze curriculum.

    export TEACHER_URL=... TEACHER_TOKEN=...   # the line `make run` (acl-run) prints
    .venv/bin/python examples/sb3_pointmaze.py

The curriculum must exist (task space ``{"kind": "preset", "env_id": "PointMaze_UMaze-v3"}``); `make run`
creates ``umaze-gradnorm`` from curricula.yaml.
"""

import argparse

import gymnasium as gym
from stable_baselines3 import SAC

from student_client import TeacherClient
from student_client.integrations.gym_wrapper import TeacherCurriculumWrapper
from student_client.integrations.sb3 import GradNormCallback

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--curriculum", default="umaze-gradnorm")
parser.add_argument("--student-id", default="sb3-pointmaze")
parser.add_argument("--env", default="PointMaze_UMaze-v3")
parser.add_argument("--steps", type=int, default=20_000)
parser.add_argument("--learning-starts", type=int, default=1_000)
args = parser.parse_args()

# --- the user code: wrap the env, add the callback ---
env = TeacherCurriculumWrapper(gym.make(args.env), TeacherClient(), args.curriculum, args.student_id)
model = SAC("MultiInputPolicy", env, learning_starts=args.learning_starts, verbose=0)
model.learn(args.steps, callback=GradNormCallback(env.tracker))
env.close()  # reports the last episode (the one cut short as stopped) and releases an unused proposal
