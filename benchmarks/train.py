"""Training benchmarks of issue 5; prints markdown tables (and writes JSON with --json).

    python benchmarks/train.py --cpu          # demo setting on the CPU: Transformer >= 99%, Mamba >= 90% in 5 min
    python benchmarks/train.py --gpu-arora    # Arora et al. AR on CUDA: accuracy (--max-time s per model)
    python benchmarks/train.py --gpu-speed    # ... training-step time and tokens/s of each model alone
    python benchmarks/train.py --gpu-overhead # hook points vs nn.Identity on CUDA: ms per training step
    python benchmarks/train.py --overhead     # the same on the CPU

With no flag, ``--cpu --overhead`` run. ``--models`` and ``--lr`` pick GPU rows (several
learning rates can train side by side as separate processes; their tokens/s then share
the device, which is why ``--gpu-speed`` measures each model alone).
Every run trains from scratch into a temporary directory (``--out-dir`` keeps them).

``--gpu-arora`` trains the grid models × ``--widths`` × learning rates (``--lrs``, else
each model's ``ARORA_LRS``); with ``--parallel N`` > 1 the grid's runs train side by side
as separate processes (at most N at once), each writing its row to a JSON file that
this process gathers into one table. The zoo sanity check of issue 13 (Based near
attention, H3 and Hyena far below) in about 4-5 minutes of one H200::

    python benchmarks/train.py --gpu-arora --models based,h3,hyena,transformer \
        --widths 64,128 --parallel 14 --max-time 200 --json arora_zoo.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
import torch.nn as nn

from ssmlens.interp.demo_train import DEMO_TASK, demo_config
from ssmlens.interp.hooks import HookPoint
from ssmlens.interp.training import Trainer, TrainConfig, build_task
from ssmlens.interp.training.optim import build_model_seeded, make_optimizer

CPU_TARGETS = {"transformer": 0.99, "mamba": 0.90}
CPU_BUDGET_S = 300.0

ARORA_TASK = {"n_keys": 4096, "n_values": 4096, "n_pairs": 16}
ARORA_SEQ_LEN = 2 * ARORA_TASK["n_pairs"] + 5  # 37 tokens
# Pass marks: attention and Mamba as measured before; Based should come close to
# attention (Arora et al.); H3 and Hyena are expected far below it, so they have no
# pass mark (a row near attention's accuracy would point at a bug).
ARORA_TARGETS = {"transformer": 0.99, "mamba": 0.75, "based": 0.9, "h3": None, "hyena": None}
_ARORA_COMMON = dict(
    task="ar", task_config=ARORA_TASK, d_model=64, n_layers=2, batch_size=256, warmup_steps=300,
    weight_decay=0.0, steps=100_000, eval_every=1000, eval_size=2000, log_every=100, device="cuda",
)
ARORA_SETTINGS = {
    "transformer": dict(_ARORA_COMMON, model="transformer", model_config={"n_heads": 4}, lr=1e-3, stop_at_acc=0.995),
    "mamba": dict(_ARORA_COMMON, model="mamba", lr=1e-2, stop_at_acc=0.95),
    # zoology's defaults: Based feature dim 16, 1 head (+ a 4-token window, models/based.py);
    # H3 d_state 16, head_dim 1; Hyena order 2 with l_max = the sequence length
    "based": dict(_ARORA_COMMON, model="based", lr=3e-3, stop_at_acc=0.995),
    "h3": dict(_ARORA_COMMON, model="h3", lr=3e-3, stop_at_acc=0.995),
    "hyena": dict(_ARORA_COMMON, model="hyena", model_config={"l_max": ARORA_SEQ_LEN}, lr=3e-3, stop_at_acc=0.995),
}
# The learning-rate sweep of a grid run when --lrs is not given (zoology sweeps 1e-3 … 3e-2).
ARORA_LRS = {"transformer": (1e-3,), "mamba": (1e-2,), "based": (3e-3, 1e-2), "h3": (3e-3, 1e-2),
             "hyena": (3e-3, 1e-2)}


# -- helpers ------------------------------------------------------------------------------
def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def train_row(config: TrainConfig, target: float | None, budget_s: float | None = None) -> dict:
    """Train ``config`` from scratch; one table row with wall time, steps and accuracy
    (``target`` None: no pass mark, the row reports only)."""
    start = time.perf_counter()
    result = Trainer(config.replace(overwrite=True)).fit()
    wall = time.perf_counter() - start
    acc = result.accuracy
    first = None if target is None else next((r for r in result.metrics if r["eval_acc"] >= target), None)
    return {
        "model": config.model,
        "steps": result.step,
        "stop": result.stop_reason,
        "wall_s": round(wall, 1),
        "train_s": round(result.train_time_s, 1),
        "acc": round(acc, 4),
        "target": "-" if target is None else target,
        "step_at_target": first["step"] if first else "-",
        "s_at_target": round(first["train_time_s"], 1) if first else "-",
        "tokens_per_s": round(result.tokens_per_s),
        "pass": "-" if target is None else acc >= target and (budget_s is None or wall <= budget_s),
    }


def scan_backend_on_cuda() -> str:
    """'triton' when the fused kernel runs here (what backend='auto' picks on CUDA), else 'torch'."""
    from ssmlens.kernels import selective_scan

    x = torch.zeros(1, 4, 8, device="cuda")
    bc = torch.zeros(1, 4, 4, device="cuda")
    try:
        selective_scan(x, x, -torch.ones(8, 4, device="cuda"), bc, bc, backend="triton")
        return "triton"
    except Exception as e:  # missing module, no CUDA support, or a kernel that fails to compile
        print(f"triton scan unavailable ({type(e).__name__}: {str(e)[:200]}); Mamba uses the torch scan",
              file=sys.stderr)
        return "torch"


# -- targets ----------------------------------------------------------------------------------
def run_cpu(out_dir: Path, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for model, target in CPU_TARGETS.items():
        cfg = demo_config(model, out_dir=out_dir, device="cpu", name=f"bench-{model}", progress=False)
        rows.append(train_row(cfg, target, budget_s=CPU_BUDGET_S))
    return rows


def seconds_per_step(config: TrainConfig, probe_steps: int = 60, warmup: int = 10) -> float:
    """Measured seconds of one training step of ``config`` here (after warm-up: kernel
    compiles, allocator), from a throwaway run."""
    trainer = Trainer(config.replace(name=config.name + "-calibrate", overwrite=True))
    for step in range(warmup):
        trainer.train_step(step)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for step in range(warmup, probe_steps):
        trainer.train_step(step)
    sync()
    return (time.perf_counter() - start) / (probe_steps - warmup)


def steps_for_budget(config: TrainConfig, budget_s: float) -> tuple[int, float]:
    """Steps that fit ``budget_s`` seconds of training, so the cosine schedule ends when the
    budget does (a time cut-off in mid-schedule would leave the learning rate high).
    10% of the budget is kept for evaluations and checkpoints."""
    step_s = seconds_per_step(config)
    return max(int(0.9 * budget_s / step_s), config.warmup_steps + 1), step_s


def arora_config(model: str, out_dir: Path, max_time_s: float, backend: str, lr: float | None,
                 model_args: dict | None = None, width: int | None = None, device: str = "cuda") -> TrainConfig:
    cfg = TrainConfig(**ARORA_SETTINGS[model], name=f"arora-{model}", out_dir=str(out_dir),
                      max_time_s=max_time_s, progress=False)
    cfg = cfg.replace(device=device)
    if width is not None:
        cfg = cfg.replace(d_model=width, name=f"{cfg.name}-d{width}")
    if lr is not None:
        cfg = cfg.replace(lr=lr, name=f"{cfg.name}-lr{lr:g}")
    if model_args:
        tag = "-".join(f"{k}{v}" for k, v in model_args.items())
        cfg = cfg.replace(model_config={**cfg.model_config, **model_args}, name=f"{cfg.name}-{tag}")
    if model == "mamba":
        cfg = cfg.replace(model_config={**cfg.model_config, "scan_backend": backend})
    return cfg


def run_gpu_speed(out_dir: Path, backend: str, models: list[str]) -> list[dict]:
    """Training-step time and tokens/s of each Arora model alone on the device."""
    rows = []
    for model in models:
        cfg = arora_config(model, out_dir, 60.0, backend, None)
        step_s = seconds_per_step(cfg, probe_steps=210)
        tokens = cfg.batch_size * build_task(cfg.task, cfg.task_config).sample(1, seed=0).seq_len
        rows.append({"model": model, "scan": backend if model == "mamba" else "-", "batch": cfg.batch_size,
                     "ms_per_step": round(step_s * 1e3, 3), "tokens_per_s": round(tokens / step_s)})
    return rows


def arora_grid(models: list[str], widths: list[int] | None, lrs: list[float] | None) -> list[tuple]:
    """(model, width or None, lr or None) of every run: models × widths × learning rates
    (``lrs`` for every model, else each model's ``ARORA_LRS`` when widths are swept)."""
    grid = []
    for model in models:
        for width in widths or [None]:
            for lr in lrs or (ARORA_LRS[model] if widths else [None]):
                grid.append((model, width, lr))
    return grid


def run_gpu_arora(out_dir: Path, max_time_s: float, backend: str, models: list[str],
                  lr: float | None = None, model_args: dict | None = None, widths: list[int] | None = None,
                  lrs: list[float] | None = None, device: str = "cuda") -> list[dict]:
    rows = []
    for model, width, rate in arora_grid(models, widths, lrs or ([lr] if lr is not None else None)):
        target = ARORA_TARGETS[model]
        cfg = arora_config(model, out_dir, max_time_s, backend, rate, model_args, width, device)
        steps, step_s = steps_for_budget(cfg, max_time_s)
        print(f"{cfg.name}: {step_s * 1e3:.2f} ms per step here -> {steps} steps in {max_time_s:.0f} s", flush=True)
        row = train_row(cfg.replace(steps=steps), target)
        row["scan"] = backend if model == "mamba" else "-"
        row["width"] = cfg.d_model
        row["lr"] = cfg.lr
        row["model_args"] = model_args or {}
        row["ms_per_step"] = round(step_s * 1e3, 2)
        rows.append(row)
    return rows


def run_gpu_arora_parallel(out_dir: Path, args: argparse.Namespace, models: list[str], widths: list[int] | None,
                           lrs: list[float] | None) -> list[dict]:
    """Every run of the grid as its own process (this script with one model, width and lr),
    at most ``args.parallel`` at once on the one device; rows gathered from their JSON
    files, logs kept in ``out_dir/logs``. A run that fails is reported with its log's tail."""
    grid = arora_grid(models, widths, lrs or ([args.lr] if args.lr is not None else None))
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, rows = list(grid), [], []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            model, width, lr = pending.pop(0)
            tag = f"{model}-d{width or 'default'}-lr{lr if lr is not None else 'default'}"
            cmd = [sys.executable, __file__, "--gpu-arora", "--parallel", "1", "--models", model,
                   "--max-time", str(args.max_time), "--out-dir", str(out_dir / "runs"), "--device", args.device,
                   "--json", str(logs / f"{tag}.json")]
            cmd += ["--widths", str(width)] if width else []
            cmd += ["--lrs", repr(lr)] if lr is not None else []
            cmd += [f"--model-arg={a}" for a in args.model_arg]
            log = open(logs / f"{tag}.log", "w")
            running.append((tag, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ), log))
            print(f"[{time.perf_counter() - start:6.0f} s] started {tag}", flush=True)
        time.sleep(2)
        for item in list(running):
            tag, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            path = logs / f"{tag}.json"
            if proc.returncode == 0 and path.is_file():
                got = json.loads(path.read_text()).get("gpu_arora", [])
                rows.extend(got)
                summary = ", ".join(f"acc {r['acc']}" for r in got)
                print(f"[{time.perf_counter() - start:6.0f} s] finished {tag}: {summary}", flush=True)
            else:
                tail = (logs / f"{tag}.log").read_text()[-1500:]
                print(f"[{time.perf_counter() - start:6.0f} s] FAILED {tag} (exit {proc.returncode}):\n{tail}",
                      flush=True)
                rows.append({"model": tag, "stop": f"failed (exit {proc.returncode})"})
    return rows


# -- instrumentation overhead -------------------------------------------------------------------
class BareHook(nn.Identity):
    """What replaces a HookPoint in the bare model: identity, never listened to."""

    listened = False


def strip_hook_points(model: nn.Module) -> int:
    """Replace every HookPoint of ``model`` by ``BareHook``; returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                setattr(module, name, BareHook())
                count += 1
    return count


def step_times(model, tokens, mask, steps: int, device: torch.device) -> float:
    """Median seconds of one training step (forward, backward, AdamW)."""
    opt = make_optimizer(model, TrainConfig(), device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(tokens, return_type="loss", loss_mask=mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_overhead(device: str, task_config: dict, batch_size: int, steps: int, repeats: int,
                 scan_backend: str = "auto") -> list[dict]:
    dev = torch.device(device)
    task = build_task("ar", task_config)
    batch = task.sample(batch_size, seed=0)
    tokens, mask = batch.tokens.to(dev), batch.loss_mask.to(dev)
    rows = []
    for model_name in ("transformer", "mamba"):
        extra = {"scan_backend": scan_backend} if model_name == "mamba" else {}
        cfg = TrainConfig(model=model_name, task_config=task_config, device=device, model_config=extra)
        hooked = build_model_seeded(cfg, task.vocab_size).to(dev)
        bare = build_model_seeded(cfg, task.vocab_size).to(dev)
        n_hooks = strip_hook_points(bare)
        step_times(hooked, tokens, mask, 5, dev)  # warm-up (kernels, allocator)
        step_times(bare, tokens, mask, 5, dev)
        with_hooks, without = [], []
        for r in range(repeats):
            # alternate the order (ABBA...) so drift in machine load hits both alike
            pair = [(hooked, with_hooks), (bare, without)]
            for model, sink in (pair if r % 2 == 0 else pair[::-1]):
                sink.append(step_times(model, tokens, mask, steps, dev))
        # the least-disturbed repeat of each: load from other processes only adds time
        h, b = min(with_hooks), min(without)
        rows.append({"device": str(dev), "model": model_name, "hook_points": n_hooks,
                     "batch": f"{batch_size}x{batch.seq_len}", "hooked_ms": round(h * 1e3, 3),
                     "bare_ms": round(b * 1e3, 3), "overhead_pct": round((h / b - 1) * 100, 2)})
    return rows


# -- main ------------------------------------------------------------------------------------------
def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"## {title}\n\n{markdown(rows, columns)}\n", flush=True)


def cuda_backend() -> str:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu-arora / --gpu-speed / --gpu-overhead need a CUDA device")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls, as any GPU training run would use
    return scan_backend_on_cuda()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="CPU targets on the demo AR setting")
    p.add_argument("--gpu-arora", action="store_true", help="train on the Arora et al. AR setting on CUDA")
    p.add_argument("--gpu-speed", action="store_true", help="training-step time and tokens/s on CUDA, alone")
    p.add_argument("--gpu-overhead", action="store_true", help="hook-point overhead of a training step on CUDA")
    p.add_argument("--overhead", action="store_true", help="hook-point overhead of a training step on the CPU")
    p.add_argument("--models", default="transformer,mamba",
                   help=f"GPU rows' models (comma list of {', '.join(ARORA_TARGETS)}; default transformer,mamba)")
    p.add_argument("--lr", type=float, default=None, help="learning rate for --gpu-arora (default per model)")
    p.add_argument("--lrs", default=None, help="comma list of learning rates for every --gpu-arora model "
                                               "(default with --widths: each model's ARORA_LRS)")
    p.add_argument("--widths", default=None, help="comma list of d_model values for --gpu-arora (default 64)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="--gpu-arora only: cpu runs the grid on the CPU to check the script (accuracy means nothing)")
    p.add_argument("--parallel", type=int, default=1,
                   help="--gpu-arora: train up to N runs of the grid side by side as separate processes")
    p.add_argument("--model-arg", action="append", default=[], metavar="FIELD=VALUE",
                   help="model config override for --gpu-arora, e.g. n_heads=1 (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for --cpu (default 1)")
    p.add_argument("--max-time", type=float, default=140.0, help="training seconds per model for --gpu-arora")
    p.add_argument("--out-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write all rows to this JSON file")
    args = p.parse_args(argv)
    if not (args.cpu or args.gpu_arora or args.gpu_speed or args.gpu_overhead or args.overhead):
        args.cpu = args.overhead = True
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ARORA_TARGETS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {sorted(ARORA_TARGETS)}")
    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()] if args.widths else None
        lrs = [float(r) for r in args.lrs.split(",") if r.strip()] if args.lrs else None
    except ValueError as e:
        p.error(f"--widths takes integers and --lrs numbers, comma-separated: {e}")
    if args.parallel < 1:
        p.error(f"--parallel must be >= 1, got {args.parallel}")

    model_args = {}
    for item in args.model_arg:
        field, sep, value = item.partition("=")
        if not sep:
            p.error(f"--model-arg takes FIELD=VALUE, got {item!r}")
        model_args[field.strip()] = yaml.safe_load(value)

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        if args.cpu:
            results["cpu"] = run_cpu(out_dir, args.threads)
            print_table(f"CPU targets (AR {DEMO_TASK}, d_model 64, 2 layers; torch threads {args.threads})",
                        results["cpu"], ["model", "steps", "stop", "wall_s", "step_at_target", "s_at_target",
                                         "acc", "target", "tokens_per_s", "pass"])
        if args.gpu_arora and args.device == "cpu" and not (args.gpu_speed or args.gpu_overhead):
            backend, where = "torch", f"Arora et al. AR {ARORA_TASK}, d_model 64, 2 layers, CPU (script check)"
        elif args.gpu_arora or args.gpu_speed or args.gpu_overhead:
            backend = cuda_backend()
            where = f"Arora et al. AR {ARORA_TASK}, d_model 64, 2 layers, {torch.cuda.get_device_name()}"
        if args.gpu_arora or args.gpu_speed or args.gpu_overhead:
            if args.gpu_speed:
                results["gpu_speed"] = run_gpu_speed(out_dir, backend, models)
                print_table(f"GPU training step alone, {where}", results["gpu_speed"],
                            ["model", "scan", "batch", "ms_per_step", "tokens_per_s"])
            if args.gpu_arora:
                if args.parallel > 1:
                    results["gpu_arora"] = run_gpu_arora_parallel(out_dir, args, models, widths, lrs)
                else:
                    results["gpu_arora"] = run_gpu_arora(out_dir, args.max_time, backend, models, args.lr, model_args,
                                                         widths, lrs, args.device)
                where_w = where.replace("d_model 64", "d_model " + (args.widths or "64"))
                print_table(f"GPU training, {where_w}", results["gpu_arora"],
                            ["model", "width", "scan", "lr", "model_args", "ms_per_step", "steps", "stop", "train_s",
                             "step_at_target", "s_at_target", "acc", "target", "tokens_per_s", "pass"])
            if args.gpu_overhead:
                results["gpu_overhead"] = run_overhead("cuda", ARORA_TASK, 256, steps=30, repeats=6,
                                                       scan_backend=backend)
                print_table(f"GPU hook-point overhead, {where}", results["gpu_overhead"],
                            ["device", "model", "hook_points", "batch", "hooked_ms", "bare_ms", "overhead_pct"])
        if args.overhead:
            torch.set_num_threads(args.threads)
            results["cpu_overhead"] = run_overhead("cpu", DEMO_TASK, 32, steps=20, repeats=8)
            print_table("CPU hook-point overhead", results["cpu_overhead"],
                        ["device", "model", "hook_points", "batch", "hooked_ms", "bare_ms", "overhead_pct"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
