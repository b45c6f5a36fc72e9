"""Helpers shared by several test modules (on sys.path through pytest's ``pythonpath``)."""

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (NaN never passes: NaN compares false)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
