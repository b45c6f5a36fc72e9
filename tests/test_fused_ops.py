"""Fused ops of the Mamba block (kernels/conv1d*.py, kernels/norm*.py) against their
references, and the block's fused path (models/fast_path.py) against the module path.

Kernels: on the CPU under Triton's interpreter (fp32, tiny shapes), fresh random
inputs each case, strided inputs and NaN/±inf included; gpu-marked cases in bf16 and
fp32. Model: outputs, gradients, hooks and state edits with fused paths on and off.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

_CUDA = torch.cuda.is_available()
if not _CUDA and "triton" not in sys.modules:  # the interpreter must be on before triton's first import
    _prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton  # noqa: F401
    if _prev is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _prev


def _interpreter_ready() -> bool:
    import triton.language.standard as tls
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tls.cdiv, InterpretedFunction)


_CPU_IN_PROCESS = not _CUDA and _interpreter_ready()
_IN_SUBPROCESS = os.environ.get("SSMLENS_TRITON_SUBPROCESS") == "1"

from helpers import rel_err  # noqa: E402

from ssmlens.kernels.conv1d import causal_conv1d, causal_conv1d_reference  # noqa: E402
from ssmlens.kernels.norm import rms_norm, rms_norm_reference  # noqa: E402
from ssmlens.models import Mamba  # noqa: E402
from ssmlens.models.fast_path import fused_ops  # noqa: E402

interpreted = pytest.mark.skipif(_CUDA, reason="CPU interpreter cases; on CUDA the gpu cases run")


def _need_interpreter():
    if not _CPU_IN_PROCESS:
        pytest.skip("triton was imported before the interpreter switch: run by test_interpreter_subprocess")


@pytest.fixture
def _interpret(monkeypatch):
    if not _CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _same_nonfinite(a, r):
    for test in (torch.isnan, lambda t: t == float("inf"), lambda t: t == -float("inf")):
        assert torch.equal(test(a), test(r))


def _conv_case(b, L, d, K, bias, silu, strided, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, L, 2 * d + 3, generator=gen).to(device, dtype)
    x = wide[..., 3:d + 3] if strided else wide[..., :d].contiguous()  # a view like in_proj's half
    w = (torch.randn(d, K, generator=gen) * 0.5).to(device, dtype)
    bb = torch.randn(d, generator=gen).to(device, dtype) if bias else None
    return x, w, bb


@interpreted
@pytest.mark.usefixtures("_interpret")
@pytest.mark.parametrize("b, L, d, K, bias, silu, strided", [
    (2, 45, 130, 4, True, True, True),  # two position and two channel blocks, a strided view
    (1, 3, 5, 4, False, True, False),  # fewer positions than taps
    (2, 33, 7, 2, True, False, False),
])
def test_interpreter_conv_matches_reference(b, L, d, K, bias, silu, strided):
    _need_interpreter()
    x, w, bb = _conv_case(b, L, d, K, bias, silu, strided, torch.float32, "cpu", seed=L * d + K)
    got = causal_conv1d(x, w, bb, silu=silu, backend="triton")
    want = causal_conv1d_reference(x, w, bb, silu=silu)
    assert got.shape == want.shape and got.is_contiguous()
    assert rel_err(got, want) < 1e-5


@interpreted
@pytest.mark.usefixtures("_interpret")
def test_interpreter_conv_nan_inf():
    """A NaN or ±inf in x reaches the K outputs after it in its channel, as in F.conv1d."""
    _need_interpreter()
    x, w, bb = _conv_case(2, 20, 6, 4, True, True, False, torch.float32, "cpu", seed=7)
    x[0, 5, 1], x[1, 9, 3], x[1, 0, 0] = float("nan"), float("inf"), -float("inf")
    got = causal_conv1d(x, w, bb, silu=False, backend="triton")
    want = causal_conv1d_reference(x, w, bb, silu=False)
    _same_nonfinite(got, want)
    assert got.isnan().sum() >= 4
    fin = want.isfinite()
    assert rel_err(got[fin], want[fin]) < 1e-5


@interpreted
@pytest.mark.usefixtures("_interpret")
@pytest.mark.parametrize("shape, strided", [((2, 7, 40), True), ((3, 768), False), ((1, 1, 5), False)])
def test_interpreter_rms_norm_matches_reference(shape, strided):
    _need_interpreter()
    gen = torch.Generator().manual_seed(sum(shape))
    D = shape[-1]
    x = torch.randn(*shape[:-1], 2 * D, generator=gen)[..., :D] if strided else torch.randn(*shape, generator=gen)
    w = torch.randn(D, generator=gen)
    x[(0,) * (len(shape) - 1)][0] = float("nan")  # a NaN makes its whole row NaN
    got = rms_norm(x, w, 1e-5, backend="triton")
    want = rms_norm_reference(x, w, 1e-5)
    _same_nonfinite(got, want)
    fin = want.isfinite()
    assert rel_err(got[fin], want[fin]) < 1e-5


@pytest.mark.skipif(_CUDA or _CPU_IN_PROCESS or _IN_SUBPROCESS,
                    reason="only when triton was already imported compiled in this process")
def test_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", SSMLENS_TRITON_SUBPROCESS="1")
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "interpreter and not subprocess"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_auto_backends_and_errors():
    """On the CPU auto is the reference; bad shapes and a gradient through the kernels
    are refused with a message naming the problem."""
    x, w, bb = _conv_case(1, 9, 4, 3, True, True, False, torch.float32, "cpu", seed=1)
    assert torch.equal(causal_conv1d(x, w, bb), causal_conv1d_reference(x, w, bb))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, w[:3], bb)
    with pytest.raises(ValueError, match="backward"):
        causal_conv1d(x.requires_grad_(), w, bb, backend="triton")
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(x, torch.ones(5), 1e-5)
    with pytest.raises(ValueError, match="unknown backend"):
        rms_norm(x, torch.ones(4), 1e-5, backend="cuda")


# ----------------------------------------------------------------------------- model
V = 40


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return Mamba(vocab_size=V, d_model=24, n_layers=2, d_state=4).eval()


def test_fused_path_matches_module_path(model):
    """Outputs and every parameter's gradient agree with fused paths on and off."""
    tokens = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        fast = model(tokens)
        with fused_ops(False):
            slow = model(tokens)
    assert rel_err(fast, slow) < 1e-6
    grads = []
    for on in (True, False):
        model.zero_grad()
        with fused_ops(on):
            model(tokens, return_type="loss").backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(*grads))


def test_hooks_on_bypassed_modules_still_fire(model):
    """A torch hook on the norm, the conv or in_proj makes the block call that module."""
    tokens = torch.randint(0, V, (2, 9))
    seen = []
    names = ("blocks.0.norm", "blocks.1.mixer.conv1d", "blocks.1.mixer.in_proj")
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.append(n)) for n in names]
    try:
        with torch.no_grad():
            hooked = model(tokens)
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == sorted(names)
    with torch.no_grad():
        assert rel_err(hooked, model(tokens)) < 1e-6


def test_delta_hook_sees_softplus(model):
    """With hook_delta listened Δ is materialized: softplus(dt_proj(dt)), [b, L, d_inner]."""
    tokens = torch.randint(0, V, (2, 11))
    mixer = model.blocks[1].mixer
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, names_filter=["blocks.1.mixer.hook_delta",
                                                                "blocks.1.mixer.hook_conv"])
        dt = mixer.x_proj(cache["blocks.1.mixer.hook_conv"])[..., :mixer.cfg.rank]
        want = F.softplus(mixer.dt_proj(dt))
        plain = model(tokens)
    assert cache["blocks.1.mixer.hook_delta"].shape == (2, 11, 48)
    assert rel_err(cache["blocks.1.mixer.hook_delta"], want) < 1e-6
    assert rel_err(out, plain) < 1e-6


def test_state_edit_through_a_view_without_grad(model):
    """An in-place edit seen only through a view the hook returns is still an edit
    (no-grad path: the states are not copied for the hook, their version is checked)."""
    tokens = torch.randint(0, V, (2, 10))
    value = torch.randn(2, 48, 4)
    hook = "blocks.0.mixer.hook_ssm_state"

    def by_copy(h, hook):
        h = h.clone()
        h[:, 4] = value
        return h

    def via_view(h, hook):
        h[:, 4] = value
        return h.view(h.shape)

    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=[(hook, by_copy)])
        got = model.run_with_hooks(tokens, fwd_hooks=[(hook, via_view)])
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        plain = model(tokens)
    assert torch.equal(got, want) and not torch.allclose(got, plain, atol=1e-4)
    assert cache[hook].shape == (2, 10, 48, 4) and torch.isfinite(cache[hook]).all()


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_gpu_kernels_match_references(dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for b, L, d, K, strided in ((2, 300, 200, 4, True), (1, 7, 96, 4, False)):
        x, w, bb = _conv_case(b, L, d, K, True, True, strided, dtype, "cuda", seed=L)
        assert rel_err(causal_conv1d(x, w, bb), causal_conv1d_reference(x, w, bb)) < tol
        x[0, 3, 5] = float("nan")
        _same_nonfinite(causal_conv1d(x, w, bb, silu=False), causal_conv1d_reference(x, w, bb, silu=False))
    for shape in ((4, 33, 768), (5, 2048), (3, 4100)):
        x = torch.randn(shape, device="cuda").to(dtype)
        wn = torch.randn(shape[-1], device="cuda").to(dtype)
        assert rel_err(rms_norm(x, wn, 1e-5), rms_norm_reference(x, wn, 1e-5)) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
def test_gpu_model_fused_matches_module_path():
    torch.manual_seed(0)
    m = Mamba(vocab_size=V, d_model=64, n_layers=2).cuda().to(torch.bfloat16).eval()
    tokens = torch.randint(0, V, (2, 256), device="cuda")
    with torch.no_grad():
        fast = m(tokens)
        with fused_ops(False):
            slow = m(tokens)
        _, cache = m.run_with_cache(tokens)  # every hook listened: the module path, states included
    assert rel_err(fast.float(), slow.float()) < 1e-2
    assert cache["blocks.1.mixer.hook_ssm_state"].shape == (2, 256, 128, 16)
