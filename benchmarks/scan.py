"""Selective-scan benchmark (issue 3): correctness, then timings against targets.

    python benchmarks/scan.py --tests 6          # the gpu tests (6 pytest-xdist workers)
    python benchmarks/scan.py --check            # fresh inputs at the benchmark shapes vs float64
    python benchmarks/scan.py --bench            # the full table -> benchmarks/RESULTS.md
    python benchmarks/scan.py --sweep            # launch-plan variants of the Triton kernels
    python benchmarks/scan.py --precompile 8     # compile every benchmarked kernel, 8 processes
    python benchmarks/scan.py --bench --core --modes none,all --shapes 0   # a subset, Triton only
    python benchmarks/scan.py --bench --triton-only      # every row, Triton column only
    python benchmarks/scan.py --sweep --fwd-only --shapes 0 --variants "n_seg=8;T=8,n_seg=16"

Timings are medians of ``triton.testing.do_bench`` (CUDA events, after warm-up, L2
flushed between runs); slow baselines (the ``torch`` backend, the sequential loop)
are the median of a few event-timed runs after one warm-up. Each row has its
memory-traffic floor: the bytes that must move (every input read once, every output
written once; forward+backward reads the inputs again and writes their gradients)
divided by the bandwidth of a device-to-device copy measured on the spot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from ssmlens.kernels import triton_scan
from ssmlens.kernels.scan import selective_scan

SHAPES = [(8, 2048, 1536, 16), (8, 512, 1536, 16), (1, 8192, 1536, 16)]
MODES = ["none", "all", "pos64", "ov64"]
# mamba_ssm's fused CUDA kernel on an H100 80GB, bf16 (from the issue), in ms.
MAMBA_FWD = {SHAPES[0]: 0.451, SHAPES[1]: 0.118, SHAPES[2]: 0.287}
MAMBA_FWDBWD = {SHAPES[0]: 2.29, SHAPES[1]: 0.547, SHAPES[2]: 1.32}


# ---------------------------------------------------------------------------- inputs
DEV = "cuda"


def make_inputs(shape, dtype, mode, grad, gen):
    """Fresh random inputs on the GPU like a Mamba layer's: Δ before softplus with a
    bias, A < 0, B, C per position, D skip, z gate; plus the mode's state options."""
    b, L, d, n = shape
    dev = DEV

    def rnd(*s, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*s, generator=gen, device=dev) * scale + shift).to(dt)

    x = dict(u=rnd(b, L, d), delta=rnd(b, L, d, scale=0.5, shift=-2.0),
             A=-torch.exp(rnd(d, n, scale=0.5, dt=torch.float32)), B=rnd(b, L, n), C=rnd(b, L, n),
             D=rnd(d, dt=torch.float32), z=rnd(b, L, d), delta_bias=rnd(d, scale=0.5, dt=torch.float32))
    kw = dict(delta_softplus=True, return_final_state=True)
    if mode == "all":
        kw["state_positions"] = "all"
    elif mode == "pos64":
        kw["state_positions"] = torch.randperm(L, generator=gen, device=dev)[:64].sort().values
    elif mode == "ov64":
        pos = torch.randperm(L, generator=gen, device=dev)[:64].sort().values
        x["ov"] = rnd(b, 64, d, n, dt=torch.float32)
        kw["state_override"] = (pos, x["ov"])
    if grad:
        for t in x.values():
            t.requires_grad_(True)
    return x, kw


def call(x, kw, backend):
    args = {k: v for k, v in x.items() if k not in ("u", "delta", "A", "B", "C", "ov")}
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend=backend, **args, **kw)


def sequential_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                    return_final_state=True, state_positions=None, state_override=None, **_):
    """The plain PyTorch loop: one step per position, fp32."""
    f32 = torch.float32
    dt = delta.to(f32) + delta_bias
    dt = torch.nn.functional.softplus(dt) if delta_softplus else dt
    uf, Bf, Cf = u.to(f32), B.to(f32), C.to(f32)
    ov = {}
    if state_override is not None:
        ov = {int(p): i for i, p in enumerate(state_override[0].tolist())}
    h = uf.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys, hs = [], []
    for t in range(u.shape[1]):
        if t in ov:
            h = state_override[1][:, ov[t]]
        else:
            h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * uf[:, t])[:, :, None] * Bf[:, t, None, :]
        ys.append((h * Cf[:, t, None, :]).sum(-1))
        if state_positions is not None:
            hs.append(h)
    y = torch.stack(ys, 1) + uf * D
    y = y * torch.nn.functional.silu(z.to(f32))
    states = None
    if state_positions is not None:
        states = torch.stack(hs, 1)
        if not isinstance(state_positions, str):
            states = states[:, state_positions]
    return y.to(u.dtype), h, states


def outputs(r):
    return [t for t in (r[0], r[1], r[2]) if t is not None]


# --------------------------------------------------------------------------- timing
def time_fast(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_slow(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def measure_bandwidth():
    """Device-to-device copy of 2 GiB, counting bytes read plus bytes written."""
    a = torch.empty(1 << 29, device="cuda", dtype=torch.float32).uniform_()
    b = torch.empty_like(a)
    ms = time_fast(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms * 1e-3)


def traffic_bytes(shape, dtype, mode, bwd):
    """Bytes that must move: inputs once, outputs once (fwd); again plus grads (bwd)."""
    b, L, d, n = shape
    s = torch.tensor([], dtype=dtype).element_size()
    P = {"none": 0, "all": L, "pos64": 64, "ov64": 64}[mode]
    big, bc, state, par = b * L * d * s, b * L * n * s, b * d * n * 4, (3 * d + d * n) * 4
    fwd = 3 * big + 2 * bc + par + big + state  # u, Δ, z, B, C, params -> y, final state
    fwd += P * b * d * n * 4 if mode != "none" else 0  # states written / override values read
    if not bwd:
        return fwd
    # backward: read u, Δ, z, B, C, dy (+ dstates / dfinal), write du, dΔ, dz, dB, dC, dparams
    back = 4 * big + 2 * bc + par + state + 3 * big + 2 * bc + par
    back += P * b * d * n * 4 if mode != "none" else 0  # dstates read / dvalues written
    return fwd + back


def fwd_fn(x, kw, impl):
    def run():
        with torch.no_grad():
            return sequential_loop(**x, **kw) if impl == "loop" else call(x, kw, impl)

    return run


def fwdbwd_fn(x, kw, impl, grads_out):
    leaves = list(x.values())

    def run():
        for t in leaves:
            t.grad = None
        r = sequential_loop(**x, **kw) if impl == "loop" else call(x, kw, impl)
        outs = outputs(r)
        torch.autograd.backward(outs, grads_out[: len(outs)])

    return run


def grads_for(x, kw, impl):
    with torch.no_grad():
        r = call(x, kw, "triton")
    return [torch.randn_like(t) for t in outputs(r)]


# ------------------------------------------------------------------------- commands
def cmd_tests(workers):
    """The ``gpu`` tests of tests/test_triton_scan.py (pytest-xdist workers if > 1)."""
    par = ["-n", str(workers)] if workers > 1 else []
    # -P: the checkout root stays off sys.path (its kernels/ would shadow Hugging Face's `kernels`)
    r = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *par, "-m", "gpu",
                        str(ROOT / "tests/test_triton_scan.py")], cwd=ROOT)
    print("GPU TESTS", "PASSED" if r.returncode == 0 else "FAILED", flush=True)
    return r.returncode == 0


def cmd_check():
    """Fresh random inputs at the benchmark shapes: forward of every mode against the
    float64 reference; gradients too at the smaller shape."""
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    for shape in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            for mode in MODES:
                grad = shape == SHAPES[1] and mode in ("none", "ov64")
                x, kw = make_inputs(shape, dtype, mode, grad, gen)
                res = {}
                for be in ("triton", "reference"):
                    r = call(x, kw, be)
                    outs = outputs(r)
                    if grad:
                        ws = [torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64) for o in outs] \
                            if be == "triton" else ws
                        loss = sum((o.double() * w).sum() for o, w in zip(outs, ws))
                        outs = outs + list(torch.autograd.grad(loss, list(x.values())))
                    res[be] = [o.detach() for o in outs]
                    del r, outs
                errs = [((a.double() - b.double()).norm() / b.double().norm()).item()
                        for a, b in zip(res["triton"], res["reference"])]
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                good = all(e <= tol for e in errs)  # NaN compares false
                ok &= good
                print(f"check {shape} {str(dtype)[6:]:8s} {mode:5s} {'fwd+grad' if grad else 'fwd':8s} "
                      f"max rel err {max(errs):.2e} (tol {tol:.0e}) {'ok' if good else 'FAIL'}", flush=True)
                del res, x
                torch.cuda.empty_cache()
    print("CHECK", "PASSED" if ok else "FAILED", flush=True)
    return ok


def cmd_bench(results_path, quick, core=False, modes=None, shapes=None, triton_only=False):
    bw = measure_bandwidth()
    dev = torch.cuda.get_device_name()
    print(f"device {dev}; copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for shape in shapes or SHAPES:
        for dtype in (torch.bfloat16,) if core else (torch.bfloat16, torch.float32):
            for mode in modes or (("none", "pos64") if core else MODES):
                for bwd in (False, True):
                    x, kw = make_inputs(shape, dtype, mode, bwd, gen)
                    row = dict(shape=shape, dtype=str(dtype)[6:], mode=mode, bwd=bwd,
                               floor=traffic_bytes(shape, dtype, mode, bwd) / bw * 1e3)
                    gout = grads_for(x, kw, "triton") if bwd else None
                    for impl in ("triton",) if core or triton_only else ("triton", "torch", "loop"):
                        if quick and impl == "loop" and mode != "none":
                            continue
                        fn = fwdbwd_fn(x, kw, impl, gout) if bwd else fwd_fn(x, kw, impl)
                        try:
                            row[impl] = time_fast(fn) if impl == "triton" else time_slow(fn, reps=2 if impl == "loop" else 3)
                        except torch.cuda.OutOfMemoryError:
                            row[impl] = None
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(fmt_row(row), flush=True)
                    del x, gout
                    torch.cuda.empty_cache()
    # The same first row again, on fresh inputs: the spread between two timings of one version.
    x, kw = make_inputs(SHAPES[0], torch.bfloat16, "none", False, gen)
    again = time_fast(fwd_fn(x, kw, "triton"))
    table = render(rows, dev, bw) + (f"\n\nRepeat of the first row (fresh inputs): triton {again:.3f} ms "
                                     f"(first: {rows[0]['triton']:.3f} ms).")
    tuned = sorted({(k[0], k[1], str(k[4])[6:], v[0]) for k, v in triton_scan._TUNED.items()})
    table += "\n\nSegments chosen by the runtime tuning (pass, shape, dtype, n_seg): " + \
        "; ".join(f"{p} {s} {d} {n}" for p, s, d, n in tuned) + "."
    print(table)
    if results_path:
        sub = "### Kernel timings, core rows" if core else "### Kernel timings"
        write_section(Path(results_path), sub, table, "benchmarks/scan.py --bench" + (" --core" if core else ""))
    return rows


def warm_configs():
    """Every kernel specialization the benchmark and the model benchmark launch: the
    same dtypes, flags and block constants on a tiny shape (sizes are not specialized)."""
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        for mode in MODES:
            for grad in (False, True):
                for n_seg in (1, 2):
                    out.append((dtype, mode, grad, n_seg))
    return out


def cmd_warm(index, count):
    """Worker ``index`` of ``count``: compile its share of ``warm_configs`` (the Triton
    cache is on disk, so the timed runs later find them compiled)."""
    gen = torch.Generator(device="cuda").manual_seed(index)
    for i, (dtype, mode, grad, n_seg) in enumerate(warm_configs()):
        if i % count != index:
            continue
        with triton_scan.override_plan(n_seg=n_seg):
            x, kw = make_inputs((1, 256, 32, 16), dtype, mode, grad, gen)
            if grad:
                fwdbwd_fn(x, kw, "triton", grads_for(x, kw, "triton"))()
            else:
                fwd_fn(x, kw, "triton")()
    if index == 0:  # the Mamba model's call: Δ already softplus'ed, no bias
        for states in (None, "all"):
            x, kw = make_inputs((1, 256, 32, 16), torch.bfloat16, "none", False, gen)
            del x["delta_bias"]
            kw.update(delta_softplus=False, state_positions=states)
            if states:
                del x["z"]
            for n_seg in (1, 2):
                with triton_scan.override_plan(n_seg=n_seg), torch.no_grad():
                    call(x, kw, "triton")
    torch.cuda.synchronize()


def cmd_precompile(workers):
    procs = [subprocess.Popen([sys.executable, __file__, "--warm", f"{i}/{workers}"]) for i in range(workers)]
    return all(p.wait() == 0 for p in procs)


def cmd_sweep(variants, shapes=None, fwd_only=False):
    """Triton forward and forward+backward (bf16, no states) under plan overrides."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    for shape in shapes or SHAPES:
        for ov in variants:
            with triton_scan.override_plan(**ov):
                p = triton_scan.plan(shape[0], shape[1], shape[2], shape[3], 1, torch.device("cuda"))
                x, kw = make_inputs(shape, torch.bfloat16, "none", False, gen)
                f = time_fast(fwd_fn(x, kw, "triton"))
                fb = float("nan")
                if not fwd_only:
                    x, kw = make_inputs(shape, torch.bfloat16, "none", True, gen)
                    fb = time_fast(fwdbwd_fn(x, kw, "triton", grads_for(x, kw, "triton")))
            print(f"sweep {shape} {ov} -> n_seg={p.n_seg} T={p.T} T_bwd={p.T_bwd}: fwd {f:.3f} ms, "
                  f"fwd+bwd {fb:.3f} ms", flush=True)


def parse_variants(spec):
    """'n_seg=1;n_seg=8,T=8' -> [{'n_seg': 1}, {'n_seg': 8, 'T': 8}]."""
    return [{k: int(v) for k, v in (kv.split("=") for kv in part.split(",") if kv)} if part else {}
            for part in spec.split(";")]


# -------------------------------------------------------------------------- report
def fmt(v):
    return "OOM" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def fmt_row(r):
    return (f"| {r['shape']} | {r['dtype']} | {r['mode']} | {'fwd+bwd' if r['bwd'] else 'fwd'} | "
            f"{r['floor']:.3f} | {fmt(r.get('triton'))} | {fmt(r['torch']) if 'torch' in r else '-'} | "
            f"{fmt(r['loop']) if 'loop' in r else '-'} | {target(r)} |")


def target(r):
    """The issue's target for this row, if any, and whether the Triton time meets it."""
    t = r.get("triton")
    if r["dtype"] != "bfloat16" or t is None:
        return ""
    shape, mode = r["shape"], r["mode"]
    if r["bwd"]:
        if mode == "none":
            lim = 2.3 if shape == SHAPES[0] else MAMBA_FWDBWD[shape]
            return f"≤ {lim} ms: {'met' if t <= lim else f'missed by {t - lim:.3f} ms'}"
        return ""
    if mode == "none":
        lim = 0.40 if shape == SHAPES[0] else MAMBA_FWD[shape]
        return f"≤ {lim} ms: {'met' if t <= lim else f'missed by {t - lim:.3f} ms'}"
    if mode == "all":
        return f"≤ 1.0 ms: {'met' if t <= 1.0 else f'missed by {t - 1.0:.3f} ms'}"
    if mode == "pos64":
        return f"within 10% of no states: see ratio below"
    return ""


def render(rows, dev, bw):
    head = ("| shape (b, L, d, n) | dtype | mode | pass | floor ms | triton ms | torch ms | loop ms | target |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"Device: **{dev}**; measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write).", "",
             "Modes: none = no states; all = every fp32 state; pos64 = 64 listed positions; "
             "ov64 = 64 state overrides. floor = bytes that must move ÷ that bandwidth. "
             "loop = plain sequential PyTorch loop (fp32).", "", head]
    lines += [fmt_row(r) for r in rows]
    ratios = []
    for r in rows:
        if r["mode"] == "pos64" and r.get("triton"):
            base = next((q for q in rows if q["shape"] == r["shape"] and q["dtype"] == r["dtype"]
                         and q["bwd"] == r["bwd"] and q["mode"] == "none"), None)
            if base and base.get("triton"):
                ratios.append(f"{r['shape']} {r['dtype']} {'fwd+bwd' if r['bwd'] else 'fwd'}: "
                              f"{r['triton'] / base['triton']:.3f}× no states")
    lines += ["", "64 positions against no states (target ≤ 1.10×): " + "; ".join(ratios)]
    return "\n".join(lines)


SECTION = "## Selective scan (Triton)"


def write_section(path: Path, sub_title: str, body: str, source: str):
    """Replace (or add) the subsection ``sub_title`` of this issue's section of
    RESULTS.md, leaving every other section and subsection as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n"
    start = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", start)
    end = nxt + 1 if nxt >= 0 else len(text)
    sec = text[start:end]
    sub = f"{sub_title}\n\nWritten by `{source}`.\n\n{body}\n\n"
    if sub_title in sec:
        a = sec.index(sub_title)
        b = sec.find("\n### ", a + len(sub_title))
        sec = sec[:a] + sub + (sec[b + 1:] if b >= 0 else "")
    else:
        sec = sec.rstrip("\n") + "\n\n" + sub
    path.write_text(text[:start] + sec.rstrip("\n") + "\n" + ("\n" + text[end:] if end < len(text) else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=0, metavar="N", help="run the gpu tests with N workers")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--quick", action="store_true", help="time the sequential loop on the 'none' rows only")
    ap.add_argument("--core", action="store_true", help="bf16, no states and 64 positions, Triton only")
    ap.add_argument("--modes", default=None, help="comma list of modes to bench (default: per --core)")
    ap.add_argument("--triton-only", action="store_true", help="--bench: time the Triton kernels only")
    ap.add_argument("--shapes", default=None, help="comma list of indices into SHAPES (default: all)")
    ap.add_argument("--variants", default=None, help="plan overrides for --sweep, e.g. 'n_seg=1;n_seg=8,T=8'")
    ap.add_argument("--fwd-only", action="store_true", help="--sweep: forward only")
    ap.add_argument("--precompile", type=int, default=0, metavar="N", help="compile every kernel in N processes")
    ap.add_argument("--warm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(ROOT / "benchmarks/RESULTS.md"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/scan.py needs a CUDA device")
    ok = True
    if args.warm:
        i, count = map(int, args.warm.split("/"))
        cmd_warm(i, count)
        return
    if args.precompile:
        ok = cmd_precompile(args.precompile)
    if args.tests:
        ok &= cmd_tests(args.tests)
    if args.check:
        ok &= cmd_check()
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else None
    if args.sweep:
        variants = parse_variants(args.variants) if args.variants else [
            {}, dict(n_seg=1), dict(n_seg=2), dict(n_seg=4), dict(n_seg=8), dict(n_seg=16), dict(n_seg=32),
            dict(T_bwd=4), dict(num_warps=2), dict(T=8)]
        cmd_sweep(variants, shapes, args.fwd_only)
    if args.bench:
        cmd_bench(args.results, args.quick, args.core, args.modes.split(",") if args.modes else None, shapes,
                  args.triton_only)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
