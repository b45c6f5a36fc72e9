"""Mamba-2's two scan paths at a real layer size: time and peak memory.

One ``Mamba2Mixer`` of mamba2-130m (d_model 768: 24 heads of 64, d_state 128) or
mamba2-1.3b (d_model 2048: 64 heads) forward on ``[batch, L]`` inputs, without
gradients, through:

- ``ssd``: ``ssmlens.kernels.ssd.ssd_scan`` (chunked matrix products; what the model
  runs when no hidden state is listened to);
- ``expanded``: ``ssmlens.kernels.selective_scan`` with Δ and A expanded from heads to
  their channels (the Mamba-1 scan; what runs when ``hook_ssm_state`` is listened to),
  without states, and ``expanded+states``: with every state ``[b, L, head, d_head, d_state]``.

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the growth of
the process's peak RSS, each variant measured in its own subprocess.

    python benchmarks/mamba2_scan.py --size 130m --batch 1 --length 512     # CPU
    python benchmarks/mamba2_scan.py --size 1.3b --batch 8 --length 1024    # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SIZES = {"130m": dict(d_model=768, d_head=64, d_state=128), "1.3b": dict(d_model=2048, d_head=64, d_state=128)}
VARIANTS = ("ssd", "expanded", "expanded+states")


def measure(size: str, variant: str, batch: int, length: int, device: str, repeats: int) -> dict:
    from ssmlens.models.mamba2_mixer import Mamba2Mixer, Mamba2MixerConfig

    torch.manual_seed(0)
    backend = "auto" if variant == "ssd" else ("triton" if device == "cuda" else "torch")
    mixer = Mamba2Mixer(Mamba2MixerConfig(**SIZES[size], scan_backend=backend)).to(device).eval()
    if variant == "expanded+states":
        mixer.hook_ssm_state.add_hook(lambda h, hook: h)
    x = torch.randn(batch, length, mixer.cfg.d_model, device=device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first is a warm-up (Triton compiles)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            mixer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return {"size": size, "variant": variant, "batch": batch, "length": length, "device": device,
            "ms": 1e3 * min(times[1:]), "peak_mb": peak / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="130m")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="measure one variant in this process")
    p.add_argument("--timeout", type=float, default=300, help="seconds per variant (default 300)")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(measure(args.size, args.variant, args.batch, args.length, args.device, args.repeats)))
        return 0
    print(f"Mamba2Mixer {args.size} ({SIZES[args.size]}), batch {args.batch} x L {args.length}, {args.device}")
    print(f"{'variant':18s} {'ms':>10s} {'peak MB':>10s}")
    for variant in VARIANTS:
        try:
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--size", args.size, "--batch",
                                  str(args.batch), "--length", str(args.length), "--repeats", str(args.repeats),
                                  "--device", args.device], capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{variant:18s} stopped after {args.timeout:.0f} s", flush=True)
            continue
        if out.returncode:
            print(f"{variant:18s} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant:18s} {r['ms']:10.1f} {r['peak_mb']:10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
