"""Helpers shared by several test modules (on sys.path through pytest's ``pythonpath``)."""

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (NaN never passes: NaN compares false)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def written_ns(run_dir) -> int:
    """When a local run's root metadata was last written, in ns (its ``created_at`` has a
    resolution of one second: too coarse to tell a rewrite apart in a fast test)."""
    from pathlib import Path

    return (Path(run_dir) / "zarr.json").stat().st_mtime_ns
