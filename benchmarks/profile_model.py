"""Where a Mamba forward spends its GPU time: torch profiler, kernels grouped by op.

    python benchmarks/profile_model.py [--size 130m|1.4b] [--dtype bfloat16] [--batch 8] [--seq 2048]

Builds a random Mamba of the given size (130m: d_model 768, 24 layers; 1.4b: 2048, 48;
vocab 50280) on the GPU, times a no-grad forward with ``triton.testing.do_bench``
(median) and prints the profiler's top kernels by total device time, so a change to
the model's forward can be aimed at what costs (issue 16). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse

import torch

from ssmlens.models import Mamba, MambaConfig

SIZES = {"130m": dict(d_model=768, n_layers=24), "1.4b": dict(d_model=2048, n_layers=48)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="130m", choices=sorted(SIZES))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    import triton.testing

    dtype = getattr(torch, args.dtype)
    cfg = MambaConfig(vocab_size=50280, **SIZES[args.size])
    model = Mamba(cfg).to(device="cuda", dtype=dtype).eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device="cuda", generator=gen)

    def forward():
        with torch.no_grad():
            model(tokens)

    ms = triton.testing.do_bench(forward, warmup=200, rep=1000, return_mode="median")
    print(f"{args.size} {args.dtype} batch {args.batch} x {args.seq}: forward {ms:.2f} ms "
          f"({torch.cuda.get_device_name()})", flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(5):
            forward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=args.rows, max_name_column_width=70)
    print(table, flush=True)


if __name__ == "__main__":
    main()
