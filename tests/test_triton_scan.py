"""Triton selective scan (kernels/triton_*.py) against the float64 reference.

Every case draws fresh random inputs (seeded from the test id, so a run is
reproducible) and compares the forward outputs and the gradients of every input
(u, Δ, A, B, C, D, z, Δ bias, initial state, override values) with
``backend="reference"`` by ‖x − ref‖ / ‖ref‖. NaN never passes.

On the CPU the kernels run under Triton's interpreter, in fp32 on tiny shapes. The
interpreter must be switched on before ``triton`` is first imported (its own
``tl.sum``, ``tl.cdiv`` ... are jit functions decided at import): this module does
that when it is the first to import triton; if triton was already imported compiled
in this process, the CPU cases run in a fresh subprocess instead. Tests marked
``gpu`` run the compiled kernels in bf16, fp16 and fp32 (also from
``benchmarks/scan.py --check``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA and "triton" not in sys.modules:
    _prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton  # noqa: F401  (imported here, under the interpreter switch)

    # Leave the process environment as found: the tests set the switch themselves
    # (fixture below), other test modules must not see it.
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

from ssmlens.kernels import triton_scan  # noqa: E402
from ssmlens.kernels.scan import selective_scan  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    if not _CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


# name: (b, L, d, n, groups, options, plan overrides)
# options: D, z, bias, softplus, h0, states (None | "all" | positions), ov (positions)
ALL = dict(D=True, z=True, bias=True, softplus=True, h0=True)
CPU_CASES = {
    "all_options": (2, 37, 5, 4, None, dict(ALL, states=[0, 17, 36], ov=[5, 36]), {}),
    "L1_n1": (1, 1, 3, 1, None, dict(ALL, states="all", ov=[0]), {}),
    "minimal_n16": (1, 19, 3, 16, None, dict(softplus=False), {}),
    "grouped_BC": (2, 23, 6, 4, 3, dict(ALL, states="all", ov=[0, 11]), {}),
    "segments": (1, 45, 7, 4, None, dict(ALL, states=[44, 3, 20], ov=[20, 30]), dict(n_seg=3, T=8, T_bwd=4)),
    "segments_grouped": (2, 30, 4, 2, 2, dict(ALL, states="all"), dict(n_seg=2, T=4, T_bwd=4)),
    "two_blocks_odd_d": (1, 16, 33, 4, None, dict(z=True, h0=True, ov=[15]), {}),
    "n64": (1, 9, 2, 64, None, dict(ALL, states=[8]), {}),
    # n == NP, L a multiple of T, d of BD: the kernels' unmasked (EVEN) path.
    "even": (2, 32, 32, 4, None, dict(ALL, states=[0, 17, 31], ov=[16]), {}),
}


def _rng(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _inputs(case, dtype, device, gen):
    """Leaves (dict) and the selective_scan keyword arguments for one case."""
    b, L, d, n, g, opt, _ = case
    f32 = torch.float32

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dt)

    bc_shape = (b, L, n) if g is None else (b, L, g, n)
    x = dict(
        u=rnd(b, L, d),
        delta=rnd(b, L, d, scale=0.5, shift=-1.0) if opt.get("softplus") else
        (torch.rand(b, L, d, generator=gen) * 0.3 + 0.01).to(device=device, dtype=dtype),
        A=-torch.exp(rnd(d, n, scale=0.5, dt=f32)),
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
    )
    if opt.get("D"):
        x["D"] = rnd(d, dt=f32)
    if opt.get("z"):
        x["z"] = rnd(b, L, d)
    if opt.get("bias"):
        x["delta_bias"] = rnd(d, scale=0.5, dt=f32)
    if opt.get("h0"):
        x["initial_state"] = rnd(b, d, n, dt=f32)
    ov = opt.get("ov")
    if ov is not None:
        x["ov_values"] = rnd(b, len(ov), d, n, dt=f32)
    for t in x.values():
        t.requires_grad_(True)
    kw = {k: v for k, v in x.items() if k not in ("u", "delta", "A", "B", "C", "ov_values")}
    kw.update(delta_softplus=bool(opt.get("softplus")), return_final_state=True,
              state_positions=opt.get("states"))
    if ov is not None:
        kw["state_override"] = (ov, x["ov_values"])
    return x, kw


def _run(x, kw, backend, plan_overrides, gen_w):
    with triton_scan.override_plan(**plan_overrides):
        r = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend=backend, **kw)
    outs = [r.out, r.final_state] + ([r.states] if r.states is not None else [])
    loss = sum((o.double() * w).sum() for o, w in zip(outs, gen_w(outs)))
    leaves = list(x.values())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(v) if gr is None else gr for v, gr in zip(leaves, grads)]
    return outs, dict(zip(x.keys(), grads))


def _rel(a, ref) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    den = ref.norm().item()
    return (a - ref).norm().item() / den if den > 0 else a.norm().item()


def _check_case(case, dtype, device, request, tol):
    gen = _rng(request)
    x, kw = _inputs(case, dtype, device, gen)
    weights = {}

    def gen_w(outs):  # the same random loss weights for both backends
        key = tuple(tuple(o.shape) for o in outs)
        if key not in weights:
            weights[key] = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device) for o in outs]
        return weights[key]

    outs, grads = _run(x, kw, "triton", case[6], gen_w)
    ref_outs, ref_grads = _run(x, kw, "reference", {}, gen_w)
    assert outs[0].dtype == x["u"].dtype and outs[1].dtype == torch.float32
    errors = {f"out{i}": _rel(o, r) for i, (o, r) in enumerate(zip(outs, ref_outs))}
    errors.update({f"d{k}": _rel(grads[k], ref_grads[k]) for k in grads})
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors over {tol}: {bad}"


@pytest.mark.skipif(_CUDA, reason="CPU interpreter cases; on CUDA the gpu cases run")
@pytest.mark.parametrize("name", list(CPU_CASES))
def test_interpreter_matches_reference(name, request):
    if not _CPU_IN_PROCESS:
        pytest.skip("triton was imported before the interpreter switch: run by test_interpreter_subprocess")
    _check_case(CPU_CASES[name], torch.float32, "cpu", request, tol=1e-5)


@pytest.mark.skipif(_CUDA or _CPU_IN_PROCESS or _IN_SUBPROCESS,
                    reason="only when triton was already imported compiled in this process")
def test_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", SSMLENS_TRITON_SUBPROCESS="1")
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "interpreter_matches_reference or interpreter_no_grad or interpreter_nan_inf"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(_CUDA, reason="CPU only")
def test_interpreter_no_grad_path_and_plan():
    """Without gradients no checkpoints are kept; segments are planned only when the
    sequence is long next to the number of programs."""
    if not _CPU_IN_PROCESS:
        pytest.skip("interpreter not active in this process")
    p = triton_scan.plan(1, 8192, 64, 16, 1, torch.device("cpu"))
    assert p.n_seg > 1 and p.seg_len % p.T == 0 and p.seg_len * p.n_seg >= 8192
    assert triton_scan.plan(64, 8192, 4096, 16, 1, torch.device("cpu")).n_seg == 1
    gen = torch.Generator().manual_seed(5)
    u, dl, z = (torch.randn(2, 11, 3, generator=gen) for _ in range(3))
    A = -torch.rand(3, 4, generator=gen) - 0.5
    B, C = (torch.randn(2, 11, 4, generator=gen) for _ in range(2))
    with torch.no_grad():
        r = selective_scan(u, dl, A, B, C, z=z, return_final_state=True, backend="triton")
        ref = selective_scan(u, dl, A, B, C, z=z, return_final_state=True, backend="reference")
    assert _rel(r.out, ref.out) < 1e-5 and _rel(r.final_state, ref.final_state) < 1e-5


# NaN and ±inf (issue 12, item 3): where the reference gives NaN or ±inf, so must the
# Triton kernels, forward and backward; finite values agree as usual. Spots: a NaN and
# ±inf in the raw Δ, NaN in u; or a NaN in the Δ bias (a whole channel).
NONFINITE = {
    "delta": dict(delta=[((0, 3, 1), float("nan")), ((1, 7, 2), float("inf")), ((0, 10, 4), -float("inf"))],
                  u=[((1, 15, 0), float("nan"))]),
    "bias": dict(delta_bias=[((3,), float("nan"))]),
}


def _check_nonfinite(spots, plan_overrides, dtype, device, request):
    gen = _rng(request)
    b, L, d, n = 2, 24, 5, 4
    case = (b, L, d, n, None, dict(ALL, states="all"), plan_overrides)
    x, kw = _inputs(case, dtype, device, gen)
    with torch.no_grad():
        for name, where in spots.items():
            for idx, value in where:
                x[name][idx] = value
    weights = {}

    def gen_w(outs):
        key = tuple(tuple(o.shape) for o in outs)
        if key not in weights:
            weights[key] = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device) for o in outs]
        return weights[key]

    got = _run(x, kw, "triton", plan_overrides, gen_w)
    want = _run(x, kw, "reference", {}, gen_w)
    names = [f"out{i}" for i in range(len(got[0]))] + [f"d{k}" for k in got[1]]
    pairs = list(zip(got[0], want[0])) + [(got[1][k], want[1][k]) for k in got[1]]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    saw_nan = False
    for name, (a, r) in zip(names, pairs):
        a, r = a.detach().double().cpu(), r.detach().double().cpu()
        assert torch.equal(a.isnan(), r.isnan()), f"{name}: NaN at other places than the reference"
        assert torch.equal(a == float("inf"), r == float("inf")), f"{name}: +inf differs"
        assert torch.equal(a == -float("inf"), r == -float("inf")), f"{name}: -inf differs"
        fin = r.isfinite()
        assert _rel(a[fin], r[fin]) <= tol, name
        saw_nan |= bool(r.isnan().any())
    assert saw_nan  # the case did reach the outputs


@pytest.mark.skipif(_CUDA, reason="CPU interpreter cases; on CUDA the gpu cases run")
@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("spots", list(NONFINITE))
def test_interpreter_nan_inf_propagate(spots, segments, request):
    if not _CPU_IN_PROCESS:
        pytest.skip("triton was imported before the interpreter switch: run by test_interpreter_subprocess")
    plan = dict(n_seg=3, T=4, T_bwd=4) if segments else {}
    _check_nonfinite(NONFINITE[spots], plan, torch.float32, "cpu", request)


# ----------------------------------------------------------------------------- GPU
GPU_CASES = {
    "all_options": (2, 301, 70, 16, None, dict(ALL, states=[0, 150, 300], ov=[7, 150]), {}),
    "L1": (1, 1, 33, 4, None, dict(ALL, states="all", ov=[0]), {}),
    "n1_states_all": (3, 77, 65, 1, None, dict(ALL, states="all"), {}),
    "n4_minimal": (1, 129, 31, 4, None, dict(softplus=False), {}),
    "n64": (2, 67, 40, 64, None, dict(ALL, states=[66], ov=[3]), {}),
    "grouped": (2, 200, 96, 16, 4, dict(ALL, states=[1, 199], ov=[100]), {}),
    "grouped_odd": (1, 50, 9, 16, 3, dict(ALL, ov=[49]), {}),
    "segments": (1, 1000, 45, 16, None, dict(ALL, states=[999, 3, 500], ov=[400, 501]), dict(n_seg=5)),
    "auto_segments": (1, 4099, 16, 16, None, dict(ALL, states="all"), {}),
    # n == NP (a multiple of 4), L a multiple of T, d of BD: no masks, and states,
    # checkpoints and override values move as 16-byte vectors (inline PTX).
    "even": (2, 256, 64, 16, None, dict(ALL, states=[0, 100, 255], ov=[50, 200]), {}),
    "even_states_all": (2, 128, 32, 16, None, dict(ALL, states="all"), {}),
    "even_segments": (1, 512, 32, 8, None, dict(ALL, states=[3, 300], ov=[100, 511]), dict(n_seg=4)),
}


# fp32 on every case; half precision where the loads and stores differ (each dtype and
# option set is a separate compile, so not the full product).
GPU_RUNS = [(name, torch.float32) for name in GPU_CASES] + [
    (name, torch.bfloat16) for name in ("all_options", "n64", "grouped", "segments", "L1", "even", "even_segments")
] + [(name, torch.float16) for name in ("all_options", "n1_states_all")]


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name, dtype", GPU_RUNS, ids=[f"{n}-{str(t)[6:]}" for n, t in GPU_RUNS])
def test_gpu_matches_reference(name, dtype, request):
    # Poison the allocator's cache so that an element the kernels never write shows up.
    torch.full((1 << 26,), float("nan"), device="cuda")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    _check_case(GPU_CASES[name], dtype, "cuda", request, tol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
def test_gpu_unaligned_views(request):
    """Inputs that are views starting off a 16-byte boundary (the kernels' vector
    accesses need aligned rows: such inputs are copied first)."""
    gen = _rng(request)
    b, L, d, n = 2, 64, 32, 16

    def view(*shape, dt=torch.float32):  # a contiguous view 4 bytes into its storage
        numel = 1
        for s_ in shape:
            numel *= s_
        return torch.randn(numel + 1, generator=gen).to("cuda", dt)[1:].view(*shape)

    u, dl, z = view(b, L, d), view(b, L, d), view(b, L, d)
    A = -torch.exp(view(d, n))
    B, C, h0 = view(b, L, n), view(b, L, n), view(b, d, n)
    ov = view(b, 1, d, n)
    kw = dict(z=z, initial_state=h0, return_final_state=True, state_positions=[5, 63], state_override=([20], ov))
    tri = selective_scan(u, dl, A, B, C, backend="triton", **kw)
    ref = selective_scan(u, dl, A, B, C, backend="reference", **kw)
    for a, r in zip((tri.out, tri.final_state, tri.states), (ref.out, ref.final_state, ref.states)):
        assert _rel(a, r) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
def test_gpu_auto_backend_is_triton():
    gen = torch.Generator().manual_seed(3)
    u, dl, z = (torch.randn(2, 64, 32, generator=gen).cuda() for _ in range(3))
    A = -torch.rand(32, 16, generator=gen).cuda() - 0.5
    B, C = (torch.randn(2, 64, 16, generator=gen).cuda() for _ in range(2))
    auto = selective_scan(u, dl, A, B, C, z=z, backend="auto")
    tri = selective_scan(u, dl, A, B, C, z=z, backend="triton")
    assert torch.equal(auto.out, tri.out)


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("spots", list(NONFINITE))
def test_gpu_nan_inf_propagate(spots, dtype, request):
    _check_nonfinite(NONFINITE[spots], dict(n_seg=3), dtype, "cuda", request)
