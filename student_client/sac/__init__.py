"""Soft Actor-Critic: the agent with its presets (agent.py) and its replay buffer (buffer.py)."""

from student_client.sac.agent import PRESETS, SAC, SACConfig, make_buffer, preset_for_env
from student_client.sac.buffer import Batch, ReplayBuffer

__all__ = ["PRESETS", "SAC", "Batch", "ReplayBuffer", "SACConfig", "make_buffer", "preset_for_env"]
