"""Run-store write throughput vs. raw numpy files on the same disk (measures, asserts nothing).

Writes ``--mb`` MB of float32 activations split over ``--hooks`` hook arrays
(``[batch=32, pos=256, d]``, standard-normal values: the hardest case for a codec)
once with ``RunWriter.write_cache`` and once as one ``np.save`` file per hook, in the
same temporary directory, alternating the two ``--repeats`` times; medians are
reported. Two clocks:

- buffered: until the write calls return (data in the OS page cache). Raw ``np.save``
  of a 20 MB array is one ``fallocate`` and one ``write()`` of memory the kernel
  copies at memcpy speed, so this mostly measures per-file and per-copy CPU cost;
- durable: until every file written has been ``fsync``-ed (the bytes are on the disk).

Each is given as wall-clock throughput and as throughput per CPU second of this
process (all its threads, user + system): on a shared machine whose cores are busy
the wall clock mostly measures the neighbours, the CPU cost does not.

Further rows vary the store alone: the old 4 MiB chunk size, streaming through
``append`` (4 examples a call, 1 example a call, and 1 example of narrow arrays
``[256, 16]`` a call: rows of 16 KB, where several appends share a chunk that each
append rewrites until it is full), and compression codecs. One warm-up round of each
variant is not counted (first-touch page faults of the process). Run:
``python benchmarks/store.py`` (``--only append`` for the streaming rows alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ssmlens.interp.store import create_run
from ssmlens.interp.store.encoding import CHUNK_BYTES


def make_cache(mb: float, hooks: int) -> dict[str, torch.Tensor]:
    """``hooks`` float32 arrays [32, 256, d] adding up to ~``mb`` MB."""
    d = max(1, round(mb * 1e6 / hooks / (32 * 256 * 4)))
    g = torch.Generator().manual_seed(0)
    kinds = ("hook_resid_pre", "mixer.hook_x", "mixer.hook_delta", "mixer.hook_ssm_out", "hook_resid_post")
    return {f"blocks.{i // len(kinds)}.{kinds[i % len(kinds)]}": torch.randn(32, 256, d, generator=g)
            for i in range(hooks)}


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def du(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(f, n)) for f, _, files in os.walk(root) for n in files)


def write_raw(cache: dict[str, torch.Tensor], out: Path, durable: bool) -> None:
    out.mkdir()
    for name, t in cache.items():
        with open(out / f"{name}.npy", "wb") as f:
            np.save(f, t.numpy())
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_store(cache: dict[str, torch.Tensor], out: Path, durable: bool, stream: int = 0, **kw) -> None:
    """``stream``: examples per ``append_cache`` call (0: one ``write_cache``)."""
    with create_run(out, {"benchmark": "store"}, **kw) as w:
        if stream:
            for lo in range(0, 32, stream):
                w.append_cache({name: t[lo : lo + stream] for name, t in cache.items()})
        else:
            w.write_cache(cache)
    if durable:
        fsync_tree(out)


def timed(fn: Callable[[Path], None], out: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, bytes on disk) of one write."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # start from a quiet disk: earlier rounds' writeback must not bill this one
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn(out)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    size = du(out)
    shutil.rmtree(out)
    return wall, cpu, size


def compare(cache, tmp: Path, repeats: int, durable: bool, **store_kw) -> dict[str, float]:
    """Medians over ``repeats`` rounds (after one warm-up round), each writing raw and
    store once, which one first alternating: raw/store wall and CPU seconds, store size."""
    rounds = []
    for i in range(repeats + 1):
        def raw() -> tuple[float, float, int]:
            return timed(lambda p: write_raw(cache, p, durable), tmp / "raw")

        def store() -> tuple[float, float, int]:
            return timed(lambda p: write_store(cache, p, durable, **store_kw), tmp / "store")

        if i % 2:
            s, r = store(), raw()
        else:
            r, s = raw(), store()
        if i:
            rounds.append((*r[:2], *s))
    med = [statistics.median(col) for col in zip(*rounds)]
    return dict(zip(("raw_wall", "raw_cpu", "store_wall", "store_cpu", "size"), med))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--hooks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: system temp)")
    ap.add_argument("--only", default=None, help="run the variants whose label contains this text")
    args = ap.parse_args()

    cache = make_cache(args.mb, args.hooks)
    nbytes = sum(t.numel() * t.element_size() for t in cache.values())
    shape = list(next(iter(cache.values())).shape)
    few = max(1, args.repeats // 2)
    default_mib = CHUNK_BYTES / 2**20
    variants = [
        (f"write_cache, defaults (raw floats, {default_mib:g} MiB chunks)", "buffered", {}, args.repeats),
        (f"write_cache, defaults (raw floats, {default_mib:g} MiB chunks)", "durable", {}, args.repeats),
        ("write_cache, 4 MiB chunks (the old default)", "buffered", {"chunk_bytes": 4 * 2**20}, args.repeats),
        ("write_cache, 4 MiB chunks (the old default)", "durable", {"chunk_bytes": 4 * 2**20}, few),
        ("append, 4 examples per call", "buffered", {"stream": 4}, args.repeats),
        ("append, 1 example per call", "buffered", {"stream": 1}, args.repeats),
        ("append, 1 example per call, [256, 16] arrays", "buffered", {"stream": 1, "narrow": 16}, args.repeats),
        ("write_cache, zstd level 1", "buffered", {"compression": "zstd"}, few),
        ("write_cache, blosc lz4 + shuffle", "buffered", {"compression": "lz4"}, few),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="ssmlens-bench-", dir=args.dir))
    print(f"{nbytes / 1e6:.0f} MB float32 in {len(cache)} arrays of {shape}; dir {tmp}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    print("| variant | clock | raw MB/s | store MB/s | store / raw "
          "| per CPU s: raw MB | per CPU s: store MB | CPU: store / raw | size / raw |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for label, clock, kw, repeats in variants:
            if args.only and args.only not in label:
                continue
            data = cache
            if "narrow" in kw:  # the same arrays cut to their first features: small rows
                width = kw.pop("narrow")
                data = {name: t[..., :width].contiguous() for name, t in cache.items()}
            nbytes = sum(t.numel() * t.element_size() for t in data.values())
            m = compare(data, tmp, repeats, clock == "durable", **kw)
            cells = [
                f"{nbytes / m['raw_wall'] / 1e6:,.0f}", f"{nbytes / m['store_wall'] / 1e6:,.0f}",
                f"{m['raw_wall'] / m['store_wall']:.0%}",
                f"{nbytes / m['raw_cpu'] / 1e6:,.0f}", f"{nbytes / m['store_cpu'] / 1e6:,.0f}",
                f"{m['raw_cpu'] / m['store_cpu']:.0%}", f"{m['size'] / nbytes:.2f}",
            ]
            print(f"| {label} | {clock} | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
