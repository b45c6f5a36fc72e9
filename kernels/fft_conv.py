"""Causal long convolution by FFT, with the direct float64 convolution beside it.

Per channel c, a kernel k ``[channel, lag]`` applied causally to x ``[batch, pos, channel]``:

    y[b, t, c] = Σ_{l=0}^{t} k[c, l] · x[b, t − l, c]

i.e. the lower-triangular Toeplitz matrix T[c, t, s] = k[c, t − s] (``causal_toeplitz``)
applied along positions. ``fft_causal_conv`` computes it as
irfft(rfft(x, n) · rfft(k, n))[:L] with n ≥ 2L: zero padding to 2L makes the circular
convolution equal the linear one on the first L outputs, O(L log L) per channel
instead of O(L²). H3 (its diagonal-SSM kernel) and Hyena (its implicit filters) use it.
``causal_conv_reference`` is the direct sum in float64 that it must equal.

An FFT spreads a NaN or inf over every output; so that they propagate as in the
direct sum (to positions at and after them only), inputs with non-finite values take
the direct sum instead (one check per call).

Knows nothing about models.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


def _check(x: Tensor, kernel: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"causal conv: x must be [batch, pos, channel], got shape {tuple(x.shape)}")
    if kernel.ndim != 2 or kernel.shape[0] != x.shape[2]:
        raise ValueError(f"causal conv: kernel must be [channel={x.shape[2]}, lag], got shape {tuple(kernel.shape)}")


def fft_causal_conv(x: Float[Tensor, "batch pos channel"],
                    kernel: Float[Tensor, "channel lag"]) -> Float[Tensor, "batch pos channel"]:
    """Causal convolution of x with ``kernel`` by FFT (module docstring), in fp32 at
    least (half-precision inputs are computed in fp32 and cast back). A kernel longer
    than the sequence is cut to L lags; a shorter one is zero-padded. Differentiable."""
    _check(x, kernel)
    L = x.shape[1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    k = kernel[:, :L].to(dtype)
    if not bool(torch.isfinite(x).all() & torch.isfinite(k).all()):
        return _direct(x.to(dtype), k).to(x.dtype)
    n = 2 * L  # ≥ L + (lags) − 1: no wrap-around into the first L outputs
    x_f = torch.fft.rfft(rearrange(x.to(dtype), "b l c -> b c l"), n=n)
    k_f = torch.fft.rfft(k, n=n)
    y = torch.fft.irfft(x_f * k_f, n=n)[..., :L]
    return rearrange(y, "b c l -> b l c").to(x.dtype)


def _direct(x: Tensor, kernel: Tensor) -> Tensor:
    """y[b, t, c] = Σ_{l≤t} k[c, l]·x[b, t−l, c], one shifted multiply-add per lag."""
    L = x.shape[1]
    y = torch.zeros_like(x)
    for lag in range(min(L, kernel.shape[1])):
        y[:, lag:] = y[:, lag:] + kernel[:, lag] * x[:, : L - lag]
    return y


def causal_conv_reference(x: Tensor, kernel: Tensor) -> Tensor:
    """The direct sum y[b, t, c] = Σ_{l≤t} k[c, l]·x[b, t−l, c] in float64: what
    ``fft_causal_conv`` must equal."""
    _check(x, kernel)
    return _direct(x.double(), kernel.double())


def causal_toeplitz(kernel: Float[Tensor, "channel lag"], length: int | None = None
                    ) -> Float[Tensor, "channel pos_out pos_in"]:
    """The matrix form of the causal convolution: T[c, t, s] = k[c, t − s] for s ≤ t,
    0 above the diagonal (``length`` positions, default the kernel's lags). For
    token-mixing matrices: y[:, :, c] = T[c] @ x[:, :, c]."""
    L = kernel.shape[1] if length is None else int(length)
    if kernel.shape[1] < L:
        kernel = torch.nn.functional.pad(kernel, (0, L - kernel.shape[1]))
    t = torch.arange(L, device=kernel.device)
    lag = t[:, None] - t[None, :]  # pos_out pos_in
    T = kernel[:, lag.clamp(min=0)]
    return T * (lag >= 0).to(T.dtype)
