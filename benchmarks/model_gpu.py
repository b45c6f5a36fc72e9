"""The whole Mamba model on the GPU, ours against mamba_ssm's fused model (issue 16).

    python benchmarks/model_gpu.py                       # the table, 130m 8×2048 and 1.4b 4×2048, bf16
    python benchmarks/model_gpu.py --check               # first: fused path against the module path
    python benchmarks/model_gpu.py --sizes 130m --dtypes bfloat16 float32 --profile 130m

Random models of mamba-130m size (d_model 768, 24 layers) and mamba-1.4b size (2048,
48), vocab 50280, forward without grad, scan backend ``auto`` (Triton). Columns:

- no hooks: ``model(tokens)``; every hook point is there, nothing listens (the fused
  path: ``ssmlens.models.fast_path``);
- every hook idle: ``model.run_with_hooks(tokens, fwd_hooks=[])``, TransformerLens'
  hook context entered and left around the same forward;
- module path: ``model(tokens)`` under ``fused_ops(False)``, each module called and
  each value materialized (what the forward did before issue 16);
- every layer's resid cached: ``run_with_cache`` of every ``hook_resid_pre`` and
  ``hook_resid_post``;
- every layer's Δ, B, C cached: ``run_with_cache`` of every ``mixer.hook_delta``,
  ``hook_B``, ``hook_C`` (Δ is then materialized);
- one layer's states cached: ``run_with_cache`` of the middle layer's
  ``mixer.hook_ssm_state`` (every fp32 state of that layer);
- mamba_ssm: its ``MambaLMHeadModel`` (fused add-norm, ``mamba_inner_fn``) of the same
  size when ``mamba_ssm`` imports, else the issue's numbers, measured on the same H200
  type (quoted, marked so).

Timings: medians of ``triton.testing.do_bench`` over forwards that rotate through
four token batches. ``--check`` compares, at each benchmark size, every column's
logits with the module path's in fp32 (relative error): each at most 1.25× the module
path's error in the same dtype; the columns that change no arithmetic equal the plain
forward. ``--conv-sweep`` times the conv kernel's tile shapes. Host times (the CPU
time to enqueue one forward) are printed beside the table. Measures; asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from ssmlens.models import Mamba, MambaConfig
from ssmlens.models.fast_path import fused_ops

SIZES = {"130m": (dict(d_model=768, n_layers=24), 8), "1.4b": (dict(d_model=2048, n_layers=48), 4)}
SEQ = 2048
VOCAB = 50280
DEV = "cuda"
# mamba_ssm's fused model and ours before issue 16, NVIDIA H200, ms (issue 16's table).
ISSUE = {("130m", "bfloat16"): (27.6, 45.7), ("130m", "float32"): (109.5, 131.8),
         ("1.4b", "bfloat16"): (66.0, 132.9), ("1.4b", "float32"): (515.6, 570.2)}
COLUMNS = ["no hooks", "every hook idle", "module path", "resid cached", "Δ,B,C cached", "1 layer's states"]


def build(size: str, dtype: torch.dtype) -> Mamba:
    cfg = MambaConfig(vocab_size=VOCAB, **SIZES[size][0])
    torch.manual_seed(0)
    with torch.device(DEV):
        model = Mamba(cfg)
    return model.to(dtype).eval()


def token_sets(batch: int, k: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEV).manual_seed(1)
    return [torch.randint(0, VOCAB, (batch, SEQ), device=DEV, generator=gen) for _ in range(k)]


def variants(model: Mamba) -> dict:
    """Column name -> forward(tokens) for one model."""
    n = model.cfg.n_layers
    resid = [f"blocks.{l}.hook_resid_{w}" for l in range(n) for w in ("pre", "post")]
    dbc = [f"blocks.{l}.mixer.hook_{k}" for l in range(n) for k in ("delta", "B", "C")]
    states = [f"blocks.{n // 2}.mixer.hook_ssm_state"]

    def module_path(t):
        with fused_ops(False):
            return model(t)

    return {
        "no hooks": lambda t: model(t),
        "every hook idle": lambda t: model.run_with_hooks(t, fwd_hooks=[]),
        "module path": module_path,
        "resid cached": lambda t: model.run_with_cache(t, names_filter=resid)[0],
        "Δ,B,C cached": lambda t: model.run_with_cache(t, names_filter=dbc)[0],
        "1 layer's states": lambda t: model.run_with_cache(t, names_filter=states)[0],
    }


def bench(fn, tokens: list[torch.Tensor]) -> float:
    import triton.testing

    i = [0]

    def run():
        with torch.no_grad():
            fn(tokens[i[0] % len(tokens)])
        i[0] += 1

    return triton.testing.do_bench(run, warmup=300, rep=1500, return_mode="median")


def mamba_ssm_ms(size: str, dtype: torch.dtype, tokens) -> float | None:
    """mamba_ssm's fused model of the same size, or None when it does not import."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig as MSConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except ImportError:
        return None
    cfg = MSConfig(d_model=SIZES[size][0]["d_model"], n_layer=SIZES[size][0]["n_layers"], vocab_size=VOCAB,
                   rms_norm=True, residual_in_fp32=True, fused_add_norm=True)
    model = MambaLMHeadModel(cfg, device=DEV, dtype=dtype).eval()
    ms = bench(lambda t: model(t), tokens)
    del model
    return ms


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()  # fp32 norms: the logits are ~10^9 elements
    return float((a - b).norm() / b.norm())


def check(size: str, dtype: torch.dtype, log) -> bool:
    """Every column's logits in ``dtype`` against the fp32 module path's: the fused
    path's and each hooked variant's error at most 1.25× the module path's in the same
    dtype (and under 5e-2); the variants whose numerics do not change (hook context,
    cached residuals) equal the plain forward. True when every comparison passes."""
    batch = SIZES[size][1]
    tokens = token_sets(batch, 1)[0]
    ok = True
    with torch.no_grad():
        ref_model = build(size, torch.float32)
        with fused_ops(False):
            ref = ref_model(tokens)
        del ref_model
        model = build(size, dtype)
        runs = variants(model)
        plain = runs["no hooks"](tokens)
        e_slow = _rel(runs["module path"](tokens), ref)
        log(f"check {size} {str(dtype)[6:]}: logits vs the fp32 module path: module path {e_slow:.2e}")
        for name, fn in runs.items():
            if name == "module path":
                continue
            got = plain if name == "no hooks" else fn(tokens)
            e = _rel(got, ref)
            good = math.isfinite(e) and e <= 1.25 * e_slow and e < 5e-2
            if name in ("every hook idle", "resid cached"):
                good &= _rel(got, plain) == 0.0
            ok &= good
            log(f"check {size} {str(dtype)[6:]}: {name}: {e:.2e} ({e / e_slow:.2f}× the module path's)"
                f"{', equal to no hooks' if _rel(got, plain) == 0.0 else ''} -> {'ok' if good else 'FAIL'}")
        del model, ref, plain
    torch.cuda.empty_cache()
    return ok


def profile(size: str, dtype: torch.dtype, log, rows: int = 22) -> None:
    model = build(size, dtype)
    tokens = token_sets(SIZES[size][1], 1)[0]
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.no_grad():
        for _ in range(3):
            model(tokens)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(5):
                model(tokens)
            torch.cuda.synchronize()
    log(f"profile {size} {str(dtype)[6:]}, 5 forwards, no hooks:")
    log(prof.key_averages().table(sort_by="device_time_total", row_limit=rows, max_name_column_width=60))
    del model
    torch.cuda.empty_cache()


def host_ms(fn, tokens: torch.Tensor) -> float:
    """Median host time to enqueue one forward from an idle GPU (its syncs return at
    once), ms."""
    times = []
    with torch.no_grad():
        for _ in range(7):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn(tokens)
            times.append((time.perf_counter() - t) * 1e3)
            torch.cuda.synchronize()
    return sorted(times)[3]


def conv_sweep(log) -> None:
    """The conv kernel's (BL, BD, num_warps) tiles at the two model sizes' shapes."""
    import triton.testing

    from ssmlens.kernels import conv1d_triton
    from ssmlens.kernels.conv1d import causal_conv1d

    default = conv1d_triton.BLOCK
    for b, d in ((8, 1536), (4, 4096)):
        x = torch.randn(b, SEQ, d, device=DEV, dtype=torch.bfloat16)
        w = torch.randn(d, 4, device=DEV, dtype=torch.bfloat16)
        bias = torch.randn(d, device=DEV, dtype=torch.bfloat16)
        floor = 2 * x.numel() * 2 / 4.3e9  # ms at 4.3 TB/s (KINDS.md's copy rate on the H200)
        cells = []
        for blk in ((32, 128, 4), (64, 128, 4), (16, 256, 4), (64, 64, 4), (128, 64, 8), (32, 256, 8)):
            conv1d_triton.BLOCK = blk
            ms = triton.testing.do_bench(lambda: causal_conv1d(x, w, bias), warmup=50, rep=300,
                                         return_mode="median")
            cells.append(f"{blk}: {ms * 1e3:.1f} µs")
        log(f"conv ({b}, {SEQ}, {d}) bf16, floor {floor * 1e3:.1f} µs: " + "; ".join(cells))
    conv1d_triton.BLOCK = default


def diagnose(size: str, dtype: torch.dtype, log) -> None:
    """Where a cached column's extra time goes: its device time per forward (profiler)
    against the no-hooks forward's, and its wall time with Python's garbage collector
    paused (TransformerLens makes many small objects per call)."""
    import gc

    model = build(size, dtype)
    tokens = token_sets(SIZES[size][1])
    runs = variants(model)
    acts = [torch.profiler.ProfilerActivity.CUDA]
    for name in ("no hooks", "resid cached", "Δ,B,C cached"):
        fn = runs[name]
        wall = bench(fn, tokens)
        gc.disable()
        try:
            wall_nogc = bench(fn, tokens)
        finally:
            gc.enable()
        with torch.no_grad(), torch.profiler.profile(activities=acts) as prof:
            for i in range(3):
                fn(tokens[i])
            torch.cuda.synchronize()
        kernels = torch.autograd.DeviceType.CUDA  # the kernels' own rows (ops' rows repeat their time)
        events = [e for e in prof.key_averages() if e.device_type == kernels]
        dev = sum(e.self_device_time_total for e in events) / 3e3
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:6]
        log(f"diagnose {size} {name}: wall {wall:.2f} ms, with gc paused {wall_nogc:.2f} ms, device time "
            f"{dev:.2f} ms per forward; top: " + "; ".join(f"{e.key[:40]} {e.self_device_time_total / 3e3:.2f}"
                                                           for e in top))
    del model
    torch.cuda.empty_cache()


def table(size: str, dtype: torch.dtype, log) -> list[str]:
    """One markdown row per (size, dtype): our columns, mamba_ssm's, ratios."""
    batch = SIZES[size][1]
    tokens = token_sets(batch)
    model = build(size, dtype)
    ms = {}
    for name, fn in variants(model).items():
        t0 = time.time()
        ms[name] = bench(fn, tokens)
        log(f"  {size} {str(dtype)[6:]} {name}: {ms[name]:.2f} ms ({time.time() - t0:.0f} s); host "
            f"{host_ms(fn, tokens[0]):.2f} ms to enqueue one forward")
    del model
    torch.cuda.empty_cache()
    theirs = mamba_ssm_ms(size, dtype, tokens)
    issue_theirs, issue_ours = ISSUE.get((size, str(dtype)[6:]), (None, None))
    if theirs is None:
        theirs_txt = f"{issue_theirs} (issue 16, same H200 type)" if issue_theirs else "-"
        theirs = issue_theirs
    else:
        theirs_txt = f"{theirs:.1f} (measured here)"
    base = ms["no hooks"]
    ratio = f"{base / theirs:.2f}×" if theirs else "-"
    cells = [f"{ms[c]:.1f}" for c in COLUMNS]
    rel = [f"{ms[c] / base:.3f}×" for c in ("resid cached", "Δ,B,C cached", "1 layer's states")]
    before = f"{issue_ours}" if issue_ours else "-"
    return [f"| {size}, {batch} × {SEQ} | {str(dtype)[6:]} | {theirs_txt} | {before} | " + " | ".join(cells)
            + f" | {ratio} | " + " | ".join(rel) + " |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["130m", "1.4b"], choices=sorted(SIZES))
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    ap.add_argument("--check", action="store_true", help="correctness first (fused vs module path, hooks)")
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--conv-sweep", action="store_true", help="time the conv kernel's tile shapes")
    ap.add_argument("--diagnose", nargs="*", default=[], choices=sorted(SIZES),
                    help="device time and gc-paused wall time of the cached columns")
    ap.add_argument("--profile", nargs="*", default=[], choices=sorted(SIZES), help="torch profiler of these sizes")
    ap.add_argument("--log", default=None, help="also append every line to this file")
    args = ap.parse_args()
    out = open(args.log, "a") if args.log else None

    def log(line: str) -> None:
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    dev = torch.cuda.get_device_name()
    log(f"device: {dev}; torch {torch.__version__}")
    ok = True
    for size in args.sizes:
        for dt in args.dtypes:
            if args.check:
                ok &= check(size, getattr(torch, dt), log)
    if args.conv_sweep:
        conv_sweep(log)
    for size in args.diagnose:
        diagnose(size, getattr(torch, args.dtypes[0]), log)
    for size in args.profile:
        profile(size, getattr(torch, args.dtypes[0]), log)
    if not args.no_table:
        head = ("| size, batch × length | dtype | mamba_ssm fused ms | ours before (issue 16) ms | "
                + " | ".join(f"ours, {c} ms" for c in COLUMNS)
                + " | no hooks / mamba_ssm | resid cached / no hooks | Δ,B,C cached / no hooks | "
                  "1 layer's states / no hooks |")
        rows = [head, "|" + "---|" * (head.count("|") - 1)]
        for size in args.sizes:
            for dt in args.dtypes:
                rows += table(size, getattr(torch, dt), log)
        log(f"\nDevice: **{dev}**; forward, no grad; medians of do_bench (ms).\n")
        log("\n".join(rows))
    if args.check and not ok:
        log("CHECK FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
