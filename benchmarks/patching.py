"""Batched activation patching vs one forward per patch, side by side on the CPU.

For each configuration (a 2-layer model on associative recall, value corruption),
a full sweep over every layer × every position of the given hooks is run three ways:

- ``reference``: ``patching_sweep_reference``, one full forward (the whole batch)
  per (hook, layer, position) — what TransformerLens' ``generic_activation_patch``
  does;
- ``batched``: ``patching_sweep`` with its defaults (patches stacked along the batch
  axis in memory-bounded chunks, plus the exact shortcuts: no-op rows skipped,
  nothing after the query patched, every forward resumed at the patched block *and
  position* from the cached unpatched run — positions p … query only, from the cached
  SSM state, conv window and attention keys/values — single-position SSM state
  patches added in closed form without a scan, a last Mamba block computing only
  d_conv positions after a patch of its input (the queries then in closed form),
  patches that make a block's whole input the source's copied from the source run,
  the source run itself resumed where its tokens leave the base's, logits only at
  the query: ``ssmlens.probes.resumed``);
- ``batched, no shortcuts``: stacking alone (``causal=skip_noop=resume=False``);
- with ``--generic``, also ``generic``: the defaults with the blocks' ``resume_hooks``
  hidden, so the sweep takes the path of a model that cannot resume at a position
  (forwards resumed at the patched block only): what resuming at a position saves.

Every result is checked against the reference: the largest difference of the raw
metrics (logit difference, p(answer), log p, KL, accuracy) and of the restored
fractions' numerators must be ≤ 1e-5. Times are the best of ``--repeats`` runs, as
wall clock and as CPU seconds of this process (the machine may be shared: CPU time
is what the neighbours do not change). One torch thread, so both sides do the same
work per core. Prints a markdown table and writes it into the ``## Patching``
section of ``benchmarks/RESULTS.md`` (other sections are left alone).

    python benchmarks/patching.py              # all configurations
    python benchmarks/patching.py --quick      # the first two only
    python benchmarks/patching.py --family mamba2 --generic --no-write   # Mamba-2, vs the generic path
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import Mamba, Mamba2, Transformer
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Patching"


@dataclass
class Config:
    name: str
    model: str
    model_kwargs: dict
    task_kwargs: dict
    n: int
    hooks: str = "resid_pre,ssm_state"
    extra: dict = field(default_factory=dict)


CONFIGS = [
    Config("mamba d64 n16, AR 8 pairs (L=21), 32 ex", "mamba", dict(d_model=64, d_state=16),
           dict(n_keys=64, n_values=64, n_pairs=8), 32),
    Config("mamba d16 n4, AR 8 pairs (L=21), 8 ex", "mamba", dict(d_model=16, d_state=4),
           dict(n_keys=64, n_values=64, n_pairs=8), 8),
    Config("mamba d64 n16, AR paper (L=37, V=8195), 16 ex", "mamba", dict(d_model=64, d_state=16), {}, 16),
    Config("transformer d64, AR 8 pairs (L=21), 32 ex", "transformer", dict(d_model=64, n_heads=4),
           dict(n_keys=64, n_values=64, n_pairs=8), 32, hooks="resid_pre,attn.hook_out"),
    # One prompt pair (the TransformerLens-tutorial setting): per-forward overhead dominates.
    Config("mamba d16 n4, AR 8 pairs (L=21), 1 prompt pair", "mamba", dict(d_model=16, d_state=4),
           dict(n_keys=64, n_values=64, n_pairs=8), 1),
    Config("mamba2 d64 n16 (8 heads of 16), AR 8 pairs (L=21), 32 ex", "mamba2",
           dict(d_model=64, d_state=16, d_head=16), dict(n_keys=64, n_values=64, n_pairs=8), 32),
    Config("mamba2 d16 n4 (4 heads of 8), AR 8 pairs (L=21), 8 ex", "mamba2", dict(d_model=16, d_state=4, d_head=8),
           dict(n_keys=64, n_values=64, n_pairs=8), 8),
    Config("mamba2 d64 n16 (8 heads of 16), AR paper (L=37, V=8195), 16 ex", "mamba2",
           dict(d_model=64, d_state=16, d_head=16), {}, 16),
]
MODELS = {"mamba": Mamba, "mamba2": Mamba2, "transformer": Transformer}


def build(cfg: Config):
    task = make_task("ar", **cfg.task_kwargs)
    torch.manual_seed(0)
    model = MODELS[cfg.model](vocab_size=task.vocab_size, n_layers=2, **cfg.model_kwargs).eval()
    clean = task.sample(cfg.n, 0)
    return model, clean, corrupt(clean, "value", 1)


def timed(fn, repeats: int):
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return out, best_wall, best_cpu


def max_diff(a, b) -> tuple[float, float]:
    """(raw metrics, restored numerators): largest absolute differences."""
    raw = ["logit_diff", "p_answer", "logp_answer", "kl", "accuracy"]
    d_raw = float(np.nanmax(np.abs(a.sel(metric=raw).values - b.sel(metric=raw).values)))
    d_rest = 0.0
    for metric, base in (("restored", "p_answer"), ("restored_logit_diff", "logit_diff")):
        den = abs(b.attrs[f"clean_{base}"] - b.attrs[f"corrupted_{base}"])
        diff = np.abs(a.sel(metric=metric).values - b.sel(metric=metric).values) * den
        d_rest = max(d_rest, float(np.nanmax(diff)))
    assert np.array_equal(np.isnan(a.values), np.isnan(b.values)), "NaN pattern differs"
    return d_raw, d_rest


@contextmanager
def position_resume_hidden(model):
    """The model's blocks without ``resume_hooks`` (``ssmlens.models.resume.resumable``
    false): the sweep takes the generic path, forwards resumed at the patched block only."""
    for block in model.blocks:
        block.resume_hooks = None
    try:
        yield model
    finally:
        for block in model.blocks:
            del block.resume_hooks


def run_config(cfg: Config, repeats: int, generic: bool = False) -> dict:
    model, clean, corr = build(cfg)
    common = dict(hooks=cfg.hooks, positions="all")
    ref, ref_wall, ref_cpu = timed(lambda: patching_sweep_reference(model, clean, corr, **common), repeats)
    fast, fast_wall, fast_cpu = timed(lambda: patching_sweep(model, clean, corr, progress=False, **common), repeats)
    plain, plain_wall, plain_cpu = timed(lambda: patching_sweep(
        model, clean, corr, progress=False, causal=False, skip_noop=False, resume=False, **common), repeats)
    d_fast, d_plain = max_diff(fast, ref), max_diff(plain, ref)
    worst = max(*d_fast, *d_plain)
    times = {}
    if generic:
        with position_resume_hidden(model):
            slow, times["generic_wall"], times["generic_cpu"] = timed(
                lambda: patching_sweep(model, clean, corr, progress=False, **common), repeats)
        assert slow.attrs["engine_rows_resumed"] == 0 < fast.attrs["engine_rows_resumed"]
        worst = max(worst, *max_diff(slow, ref))
    assert worst <= 1e-5, f"{cfg.name}: batched and reference differ by {worst:.2e}"
    n_sites = len(ref.attrs["hook_names"])
    return {
        "config": cfg.name, "hooks": cfg.hooks, "patches": n_sites * ref.sizes["pos"],
        "ref_forwards": ref.attrs["engine_forwards"], "rows": fast.attrs["engine_rows"],
        "rows_total": fast.attrs["engine_rows_total"], "forwards": fast.attrs["engine_forwards"],
        "ref_wall": ref_wall, "ref_cpu": ref_cpu, "fast_wall": fast_wall, "fast_cpu": fast_cpu,
        "plain_wall": plain_wall, "plain_cpu": plain_cpu, "diff": worst, **times,
    }


def table(rows: list[dict]) -> str:
    generic = all("generic_wall" in r for r in rows)
    head = ("| configuration | hooks | patches | reference: forwards, wall / CPU s | batched: rows run / total, "
            "forwards, wall / CPU s | speedup wall (CPU) | stacking alone: wall / CPU s, speedup CPU | "
            + ("generic path: wall / CPU s, batched's speedup over it wall (CPU) | " if generic else "")
            + "max diff |\n|---|---|---|---|---|---|---|" + ("---|" if generic else "") + "---|\n")
    lines = []
    for r in rows:
        over = (f"{r['generic_wall']:.2f} / {r['generic_cpu']:.2f}, **{r['generic_wall'] / r['fast_wall']:.1f}×** "
                f"({r['generic_cpu'] / r['fast_cpu']:.1f}×) | " if generic else "")
        lines.append(
            f"| {r['config']} | {r['hooks']} | {r['patches']} | {r['ref_forwards']}, "
            f"{r['ref_wall']:.2f} / {r['ref_cpu']:.2f} | {r['rows']} / {r['rows_total']}, {r['forwards']}, "
            f"{r['fast_wall']:.2f} / {r['fast_cpu']:.2f} | **{r['ref_wall'] / r['fast_wall']:.1f}×** "
            f"({r['ref_cpu'] / r['fast_cpu']:.1f}×) | {r['plain_wall']:.2f} / {r['plain_cpu']:.2f}, "
            f"{r['ref_cpu'] / r['plain_cpu']:.1f}× | {over}{r['diff']:.1e} |")
    return head + "\n".join(lines) + "\n"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores visible, 1 torch thread, torch {torch.__version__}, "
            f"load average {load:.1f} at start")


def write_section(text: str) -> None:
    """Replace the ``## Patching`` section of RESULTS.md, leaving every other section
    as it is on disk at that moment (others edit them): the file is re-read just
    before writing and replaced atomically."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = f"{SECTION}\n\n{text.rstrip()}\n\n"
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip() + "\n\n" + body
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip() + "\n")
    os.replace(tmp, RESULTS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the first two configurations (of --family) only")
    p.add_argument("--family", choices=sorted(MODELS), help="only the configurations of this model family")
    p.add_argument("--generic", action="store_true",
                   help="also time the generic path (no resuming at a position), and the batched speed-up over it")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", dest="write", action="store_false", help="do not touch RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    where = machine()
    rows = []
    configs = [c for c in CONFIGS if args.family in (None, c.model)]
    for cfg in configs[:2] if args.quick else configs:
        rows.append(run_config(cfg, args.repeats, args.generic))
        print(f"done: {cfg.name}", flush=True)
    md = table(rows)
    print(md)
    if args.write:
        write_section(
            f"`python benchmarks/patching.py` — {time.strftime('%Y-%m-%d')}, {where}.\n\n"
            "Full sweep: every layer × every position of the hooks listed (value corruption, "
            "denoising). Reference = one full forward of the whole batch per (hook, layer, position). "
            "Batched = `patching_sweep` defaults; *stacking alone* = the same without the exact "
            "shortcuts. Max diff: largest |batched − reference| over raw metrics and restored-fraction "
            "numerators (checked ≤ 1e-5).\n\n" + md + "\n" + NOTES)
        print(f"wrote the {SECTION!r} section of {RESULTS}")


NOTES = """Reading the numbers:

- The batched sweep returns the reference's numbers (max difference ≤ 1e-5, checked)
  and every patched row is a *resumed forward* (`ssmlens.probes.resumed`, `ssmlens.models.resume`): a
  patch at block l, position p computes only positions p … query of blocks ≥ l, from
  the unpatched run's cached residual, SSM state at p − 1, conv window and attention
  keys/values; a single-position `hook_ssm_state` patch adds its closed-form effect
  C·exp(A·ΣΔ)·(h′ − h) to the cached output without a scan; a last Mamba block reads
  only the queries (a patch of its input computes d_conv positions, then the same
  closed form); a patch making a block's whole input the source's copies the source
  run's metrics; the source run is itself resumed where its tokens leave the base's.
- Resumed Mamba windows run `ssmlens.models.resume_scan` (the `torch` backend's arithmetic
  without its per-chunk stack and batched-matmul readout, Ā by exp2); resumed Mamba-2
  windows run `ssd_scan` from the cached state, one chunk per window (the conv's input
  before the window rebuilt from the cached `hook_resid_pre`).
- The ratio moves with the machine's load: the reference is one full forward per
  patch and pays more page faults and cache misses when neighbours are busy, so a
  quiet machine gives the lowest ratios. Small models and the Transformer are bound
  by per-forward overhead and the two unpatched runs.
"""


if __name__ == "__main__":
    main()
