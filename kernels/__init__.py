"""Selective scan kernels: public API, torch backend, float64 reference (DESIGN §3).

Knows nothing about models. ``import kernels`` needs torch and einops only.
"""

from kernels.linear_recurrence import linear_recurrence, linear_recurrence_reference
from kernels.scan import BACKENDS, ScanInputError, ScanResult, selective_scan

__all__ = [
    "BACKENDS",
    "ScanInputError",
    "ScanResult",
    "selective_scan",
    "linear_recurrence",
    "linear_recurrence_reference",
]
