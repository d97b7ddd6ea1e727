"""The torch device a student trains on."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; a clear error where it asks for a GPU this machine lacks."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but torch finds no CUDA GPU "
                         f"(torch {torch.__version__}); use device='cpu'")
    return device
