"""The execution engines on a GPU: many small AR trainings side by side as Ray tasks with
fractional GPUs, against the same trainings one after another with the local engine.

    python benchmarks/engine_gpu.py                      # one GPU: 16 trainings, 1/8 GPU each (< 4 min)
    python benchmarks/engine_gpu.py --skip-local --n-models 32 --num-gpus 2   # the same grid on 2 GPUs
    python benchmarks/engine_gpu.py --cpu --tiny         # a check of the script on the CPU (no GPU numbers)

The grid is ``--models`` × learning rates (``ssmlens.interp.training.grid``): d_model 64,
2 layers, AR with 64 keys and 8 pairs, ``--steps`` steps each, evaluated at the end. A tiny
warm-up training first fills Triton's kernel cache, so neither engine pays the compile.
For each engine it prints the wall time (Ray's start apart), trainings per minute and GPU
utilization and memory sampled every 0.5 s on every device (pynvml, else ``nvidia-smi``),
then whether both engines gave the same final eval accuracy and loss for every point.
``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class GpuSampler:
    """GPU utilization (%) and memory used (MiB) of every device, every ``period`` s, in a thread."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

            def read():
                return [(pynvml.nvmlDeviceGetUtilizationRates(h).gpu, pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
                        for h in handles]
            self.source = "pynvml"
        except Exception:  # no nvidia-ml-py: ask nvidia-smi
            def read():
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                return [tuple(float(x) for x in line.split(",")) for line in out.stdout.strip().splitlines()]
            self.source = "nvidia-smi"
        self._read = read

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._read())
            except Exception:
                pass
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> list[dict]:
        """Per device: mean and max utilization, peak memory."""
        if not self.samples:
            return []
        a = np.array(self.samples, dtype=float)  # [sample, device, (util, mem)]
        return [{"device": d, "util_mean": float(a[:, d, 0].mean()), "util_max": float(a[:, d, 0].max()),
                 "mem_peak_mib": float(a[:, d, 1].max())} for d in range(a.shape[1])]


def base_config(args, out_dir: Path):
    from ssmlens.interp.training import TrainConfig

    if args.tiny:
        task = {"n_keys": 8, "n_values": 8, "n_pairs": 2}
        size = dict(d_model=16, n_layers=1, batch_size=8, eval_size=32, eval_batch_size=32)
    else:
        task = {"n_keys": 64, "n_values": 64, "n_pairs": 8}
        size = dict(d_model=64, n_layers=2, batch_size=64, eval_size=512, eval_batch_size=512)
    return TrainConfig(task="ar", task_config=task, steps=args.steps, eval_every=args.steps, warmup_steps=0,
                       log_every=max(args.steps // 4, 1), device="cpu" if args.cpu else "cuda",
                       out_dir=str(out_dir), progress=False, **size)


def grid_of(args) -> dict:
    per_model = max(args.n_models // len(args.models), 1)
    lrs = [float(f"{x:.3g}") for x in np.geomspace(1e-3, 5e-3, per_model)]
    return {"model": list(args.models), "lr": lrs}


def run_engine(args, engine: str, out_dir: Path) -> dict:
    from ssmlens.interp.training.grid import run_grid

    gpus = 0.0 if args.cpu else args.gpus_per_task
    started = 0.0
    if engine == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), num_gpus=0 if args.cpu else args.num_gpus, include_dashboard=False,
                 log_to_driver=False)
        started = time.perf_counter() - t0
    sampler = None if args.cpu else GpuSampler()
    try:
        if sampler:
            sampler.__enter__()
        t0 = time.perf_counter()
        rows, _ = run_grid(base_config(args, out_dir), grid_of(args), progress=not args.no_progress,
                           engine={"engine": engine, "gpus_per_task": gpus if engine == "ray" else None,
                                   "retries": 0})
        wall = time.perf_counter() - t0
    finally:
        if sampler:
            sampler.__exit__()
        if engine == "ray":
            import ray

            ray.shutdown()
    failed = [r["name"] for r in rows if r["status"] != "done"]
    return {"engine": engine, "wall_s": wall, "ray_start_s": started, "n": len(rows), "failed": failed,
            "per_min": 60 * len(rows) / wall, "gpu": sampler.summary() if sampler else [],
            "gpu_source": sampler.source if sampler else None,
            "results": {r["name"]: (r["acc"], r["loss"]) for r in rows}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=lambda s: s.split(","), default=["mamba", "transformer"])
    p.add_argument("--n-models", type=int, default=16, help="trainings in the grid (default 16)")
    p.add_argument("--steps", type=int, default=600, help="training steps each (default 600)")
    p.add_argument("--gpus-per-task", type=float, default=0.125, help="GPU share of each Ray task (default 1/8)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs Ray may use (default: all it finds)")
    p.add_argument("--skip-local", action="store_true", help="Ray only (the multi-GPU run)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (checks the script; no GPU numbers)")
    p.add_argument("--tiny", action="store_true", help="tiny models and a few steps")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps = min(args.steps, 4)
        args.n_models = min(args.n_models, 4)
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: use --cpu", file=sys.stderr)
            return 2
        print(f"device: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}")
    import ray

    print(f"ray {ray.__version__}, {os.cpu_count()} CPUs; grid {grid_of(args)}, {args.steps} steps each")
    root = Path(tempfile.mkdtemp(prefix="engine_gpu_"))
    try:
        from ssmlens.interp.training import train

        warm = base_config(args, root / "warmup").replace(steps=2, eval_every=2, eval_size=8, eval_batch_size=8,
                                                         model="mamba")
        train(warm)  # fills the Triton cache (both engines then load the compiled kernels)
        runs = [] if args.skip_local else [run_engine(args, "local", root / "local")]
        runs.append(run_engine(args, "ray", root / "ray"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("\n| engine | trainings | wall (s) | trainings/min | Ray start (s) | GPU util mean / max (%) | GPU mem peak (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        util = "; ".join(f"{g['util_mean']:.0f} / {g['util_max']:.0f}" for g in r["gpu"]) or "n/a"
        mem = "; ".join(f"{g['mem_peak_mib']:.0f}" for g in r["gpu"]) or "n/a"
        label = r["engine"] + (f" ({args.gpus_per_task:g} GPU/task)" if r["engine"] == "ray" and not args.cpu else "")
        print(f"| {label} | {r['n']} | {r['wall_s']:.1f} | {r['per_min']:.1f} | {r['ray_start_s']:.1f} | {util} | {mem} |")
    for r in runs:
        if r["failed"]:
            print(f"{r['engine']}: failed trainings: {r['failed']}")
    if len(runs) == 2:
        a, b = runs[0]["results"], runs[1]["results"]
        same = a.keys() == b.keys()
        d_acc = max((abs(a[k][0] - b[k][0]) for k in a if k in b), default=float("nan"))
        d_loss = max((abs(a[k][1] - b[k][1]) for k in a if k in b), default=float("nan"))
        exact = same and all(a[k] == b[k] for k in a)
        print(f"\nresults equal: {'yes, bit for bit' if exact else 'no'} (same points: {same}; "
              f"max |d acc| {d_acc:.3g}, max |d loss| {d_loss:.3g}); speed-up {runs[0]['wall_s'] / runs[1]['wall_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
