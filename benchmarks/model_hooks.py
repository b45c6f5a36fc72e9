"""Cost of listening to Δ/B/C hooks in a Mamba model (issue 3's model-level target).

    python benchmarks/model_hooks.py [--batch 8] [--dtype bfloat16]

A 2-layer Mamba (d_model 768, L 2048) on the GPU, scan backend "auto" (the Triton
kernels): forward time with no hooks, with a hook on every layer's ``hook_delta``,
``hook_B`` and ``hook_C`` (read, not edited), and, for scale, with ``hook_ssm_state``
listened (every hidden state materialized). Target: the Δ/B/C row within 5% of the
no-hook row. Medians of ``triton.testing.do_bench``; its
subsection of ``## Selective scan (Triton)`` in ``benchmarks/RESULTS.md`` is rewritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from scan import write_section  # benchmarks/scan.py: this script's folder is on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--results", default=str(ROOT / "benchmarks/RESULTS.md"))
    args = ap.parse_args()
    import triton.testing

    from ssmlens import models

    dtype = getattr(torch, args.dtype)
    cfg = models.MambaConfig(d_model=768, n_layers=2, vocab_size=50280)
    model = models.Mamba(cfg).to(device="cuda", dtype=dtype).eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda", generator=gen)
    seen = []

    def listen(x, hook):  # reads the value, as a probe or a cache would
        seen.append(x.shape)

    names = [f"blocks.{l}.mixer.hook_{k}" for l in range(cfg.n_layers) for k in ("delta", "B", "C")]
    states = [f"blocks.{l}.mixer.hook_ssm_state" for l in range(cfg.n_layers)]

    def bench(hooks):
        def run():
            seen.clear()
            with torch.no_grad():
                if hooks:
                    model.run_with_hooks(tokens, fwd_hooks=[(n, listen) for n in hooks])
                else:
                    model(tokens)
        return triton.testing.do_bench(run, warmup=100, rep=500, return_mode="median")

    rows = []
    t0 = bench([])
    t1 = bench(names)
    t0b = bench([])  # again: the spread of the baseline itself
    t2 = bench(states)
    base = min(t0, t0b)
    rows.append(("no hooks", t0, ""))
    rows.append(("no hooks (repeat)", t0b, f"{t0b / t0:.3f}× first run"))
    verdict = "met" if t1 <= 1.05 * base else f"missed: {t1 / base:.3f}×"
    rows.append(("Δ, B, C hooks listened", t1, f"{t1 / base:.3f}× no hooks (target ≤ 1.05×: {verdict})"))
    rows.append(("hook_ssm_state listened (all states)", t2, f"{t2 / base:.3f}× no hooks"))
    dev = torch.cuda.get_device_name()
    lines = [f"Device: **{dev}**. 2-layer Mamba, d_model 768, vocab {cfg.vocab_size}, batch {args.batch}, "
             f"L {args.seq}, {args.dtype} weights and activations, forward without grad, scan backend "
             f"`{cfg.scan_backend}` (Triton on CUDA).", "",
             "| hooks | ms (median) | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.3f} | {note} |" for name, ms, note in rows]
    table = "\n".join(lines)
    print(table)
    write_section(Path(args.results), "### Mamba model: cost of listening to Δ/B/C hooks", table,
                  "benchmarks/model_hooks.py")


if __name__ == "__main__":
    main()
