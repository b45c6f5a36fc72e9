"""Selective scan kernels: public API, torch backend, float64 reference (DESIGN §3).
Beside them, the Mamba block's fused ops with their references: ``kernels.conv1d``
(causal depthwise conv + bias + silu) and ``kernels.norm`` (RMSNorm).

Knows nothing about models. ``import ssmlens.kernels`` needs torch and einops only.
"""

from ssmlens.kernels.fft_conv import causal_conv_reference, causal_toeplitz, fft_causal_conv
from ssmlens.kernels.linear_recurrence import linear_recurrence, linear_recurrence_reference
from ssmlens.kernels.scan import BACKENDS, ScanInputError, ScanResult, selective_scan

__all__ = [
    "BACKENDS",
    "ScanInputError",
    "ScanResult",
    "selective_scan",
    "linear_recurrence",
    "linear_recurrence_reference",
    "fft_causal_conv",
    "causal_conv_reference",
    "causal_toeplitz",
]
