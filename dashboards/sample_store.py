"""A small, realistic set of run stores for the dashboard's tests, benchmark and
screenshots: tiny random Mamba, Transformer and B'MOJO models run with
``run_with_cache`` on an MQAR batch, written with ``ssmlens.interp.store`` like the demo's runs
(batch, activation cache, checkpoint, metrics, patching / attribution / probe results
and an ablation table); ``write_study_runs`` adds runs written by the demo's own patching
study (``ssmlens.probes.study``) for tiny random models.

This is tooling, not request-time code: it builds torch models, which the dashboard
itself never does. ``models`` may also name ``based``, ``h3`` and ``hyena``.
``python -m dashboards.sample_store DIR`` writes one.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssmlens.interp.store import create_run
from ssmlens.interp.tasks.corrupt import corrupt
from ssmlens.interp.tasks.registry import make_task

KEEP = ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "mixer.hook_delta", "mixer.hook_B",
        "mixer.hook_C", "mixer.hook_ssm_state", "mixer.hook_out", "attn.hook_pattern", "attn.hook_out",
        "memory.hook_innovation", "memory.hook_write", "mlp.hook_out",
        # Based, H3, Hyena (ssmlens.dashboards.figures_zoo)
        "mixer.hook_kv_state", "mixer.hook_window_pattern", "mixer.hook_filter")
ZOO = {"based": {"n_heads": 2, "feature_dim": 8, "window": 8}, "h3": {"d_state": 8}, "hyena": {}}


def build(name: str, vocab: int, d_model: int, n_layers: int, seed: int, seq_len: int = 256):
    """A random model of family ``name`` (B'MOJO: a random innovation predictor and τ at
    the 80th percentile of its scores, so that some tokens are written; Hyena: filters
    on ``seq_len`` lags)."""
    from ssmlens.models import Mamba, Transformer, build_model
    from ssmlens.models.bmojo import BMojo

    torch.manual_seed(seed)
    common = {"vocab_size": vocab, "d_model": d_model, "n_layers": n_layers}
    if name in ZOO:
        return build_model(name, **common, **ZOO[name], **({"l_max": seq_len} if name == "hyena" else {}))
    if name == "mamba":
        return Mamba(**common)
    if name == "transformer":
        return Transformer(**common, n_heads=4)
    if name == "bmojo":
        model = BMojo(**common, n_heads=4, window=32, memory_size=16)
        with torch.no_grad():
            for block in model.blocks:
                block.memory.W_p.normal_(0, 1.0 / d_model ** 0.5)
        return model
    raise ValueError(f"unknown sample model {name!r}; use mamba, transformer, bmojo, {', '.join(ZOO)}")


def calibrate_writes(model, tokens: torch.Tensor, quantile: float = 0.8) -> None:
    """Set B'MOJO's τ so that about 1 − quantile of the tokens are written."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_innovation"))
    z = torch.cat([v.flatten() for v in cache.values()])
    tau = float(torch.quantile(z.float(), quantile))
    model.cfg.threshold = tau
    for block in model.blocks:
        block.memory.threshold = tau


def answer_stats(logits: torch.Tensor, batch) -> tuple[float, float]:
    """(accuracy, loss) of next-token predictions at supervised positions."""
    targets = batch.targets
    mask = batch.loss_mask
    pred = logits.argmax(-1)
    acc = float((pred[mask] == targets[mask]).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits[mask], targets[mask]))
    return acc, loss


def logit_diff(logits: torch.Tensor, batch, corrupted) -> torch.Tensor:
    """Per example: logit of the clean answer minus that of the corrupted answer, at the first query."""
    q = batch.roles["query"][:, 0]
    rows = logits[torch.arange(len(q)), q]
    clean_ans = batch.tokens_at("answer")[:, 0]
    corr_ans = corrupted.tokens_at("queried_value")[:, 0]
    return rows.gather(1, clean_ans[:, None])[:, 0] - rows.gather(1, corr_ans[:, None])[:, 0]


def activation_patching(model, batch, corrupted, clean_cache, positions: list[int]) -> np.ndarray:
    """``[layer, len(positions)]``: mean logit difference when clean resid_pre is patched
    into the corrupted run at (layer, position), minus the corrupted run's."""
    n_layers = model.cfg.n_layers
    with torch.no_grad():
        base = logit_diff(model(corrupted.tokens), batch, corrupted)
    out = np.zeros((n_layers, len(positions)))
    P = len(positions)
    tokens = corrupted.tokens.repeat_interleave(P, dim=0)  # [b·P, L]: example-major
    pos = torch.tensor(positions).repeat(len(batch))
    rows = torch.arange(len(tokens))
    big = corrupted.select(torch.arange(len(batch)).repeat_interleave(P))
    clean_big = batch.select(torch.arange(len(batch)).repeat_interleave(P))
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        clean = clean_cache[name].repeat_interleave(P, dim=0)

        def patch(act, hook, clean=clean):
            act = act.clone()
            act[rows, pos] = clean[rows, pos]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])
        diff = logit_diff(logits, clean_big, big).reshape(len(batch), P) - base[:, None]
        out[layer] = diff.mean(0).numpy()
    return out


def attribution_patching(model, batch, corrupted, hook: str = "hook_resid_pre") -> np.ndarray:
    """``[layer, pos]``: gradient of the logit difference (at the corrupted run) times
    (clean − corrupted) activation: the linear estimate of activation patching."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.{hook}" for l in range(n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
    acts = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act
        return act

    model.zero_grad(set_to_none=True)
    logits = model.run_with_hooks(corrupted.tokens, fwd_hooks=[(n, keep) for n in names])
    logit_diff(logits, batch, corrupted).sum().backward()
    out = np.stack([((clean[n] - acts[n].detach()) * acts[n].grad).sum(-1).mean(0).numpy() for n in names])
    model.zero_grad(set_to_none=True)
    return out


def ablation_rows(model, batch, name: str) -> list[dict]:
    """Zero-ablate each block's mixer / attention output: acc and loss per cell."""
    cells = [("none", [])]
    for l in range(model.cfg.n_layers):
        for part in ("mixer", "attn"):
            hook = f"blocks.{l}.{part}.hook_out"
            if hook in model.hook_dict:
                cells.append((f"zero_{part}@{l}", [(hook, lambda act, hook: torch.zeros_like(act))]))
    rows = []
    for label, hooks in cells:
        with torch.no_grad():
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        acc, loss = answer_stats(logits, batch)
        n = int(batch.loss_mask.sum())
        rows += [{"model": name, "task": batch.task, "ablation": label, "metric": "acc", "value": acc, "n": n},
                 {"model": name, "task": batch.task, "ablation": label, "metric": "loss", "value": loss, "n": n}]
    return rows


def write_one(root: Path, prefix: str, name: str, *, n_layers: int, seq_len: int, n_examples: int,
              d_model: int, vocab: int, n_pairs: int, seed: int, patch_positions: int) -> str:
    """Write the run ``<prefix>/<name>`` (and its checkpoint) under ``root``; returns the run id."""
    task_config = {"vocab_size": vocab, "seq_len": seq_len, "n_pairs": n_pairs}
    batch = make_task("mqar", **task_config).sample(n_examples, seed=seed)
    corrupted = corrupt(batch, "value", seed=seed + 1)
    # a seed of its own per model: same-seed Mamba and B'MOJO mixers would start identical
    model = build(name, vocab, d_model, n_layers, seed + zlib.crc32(name.encode()) % 10_000, seq_len).eval()
    if name == "bmojo":
        calibrate_writes(model, batch.tokens)
    ckpt = model.save(root / "checkpoints" / prefix / name)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.tokens)
    acc, loss = answer_stats(logits, batch)
    # patch at the context pairs (up to patch_positions) and the patched examples' first
    # queries: where recall can be carried
    positions = sorted({*range(min(2 * n_pairs, seq_len, patch_positions)), *batch.roles["query"][:2, 0].tolist()})
    patching = activation_patching(model, batch.select(slice(0, 2)), corrupted.select(slice(0, 2)),
                                   {k: v[:2] for k, v in cache.items()}, positions)
    attribution = attribution_patching(model, batch, corrupted)
    run_id = f"{prefix}/{name}"
    config = {"model_type": model.model_type, "model_config": model.config_dict(), "task": "mqar",
              "task_config": task_config, "kind": "sample", "seed": seed}
    with create_run(root / run_id, config, overwrite=True) as w:
        w.write_batch(batch)
        w.write_cache({k: v for k, v in cache.items() if any(k.endswith(s) for s in KEEP)})
        layers = list(range(n_layers))
        meta = {"metric": "logit diff (patched − corrupted)", "corruption": "value"}
        w.write_result("patching/resid_pre", patching, ("layer", "pos"),
                       coords={"layer": layers, "pos": positions}, attrs=meta)
        w.write_result("attribution/resid_pre", attribution, ("layer", "pos"),
                       coords={"layer": layers, "pos": list(range(seq_len))}, attrs=meta)
        w.write_result("probe/accuracy", probe_sweep(cache, batch, seed))
        w.write_table("ablation", pd.DataFrame(ablation_rows(model, batch, name)))
        w.set_metrics(accuracy=acc, loss=loss)
        w.set_checkpoint(str(ckpt))
    return run_id


def probe_sweep(cache, batch, seed: int):
    """Linear probes for the queried value on the residual stream (``ssmlens.probes.linear_sweep``)."""
    from ssmlens.probes.linear_sweep import probe_sweep as sweep

    return sweep({k: v for k, v in cache.items() if k.endswith("hook_resid_post")}, batch, "resid_post",
                 "queried_value", positions=["queried_key", "queried_value", "query"], seed=seed)


def write_sample_store(root: str | Path, *, models=("mamba", "transformer", "bmojo"), prefix: str = "sample",
                       n_layers: int = 2, seq_len: int = 64, n_examples: int = 4, d_model: int = 32,
                       vocab: int = 64, n_pairs: int = 4, seed: int = 0, patch_positions: int = 12) -> list[str]:
    """Write one run per model under ``root/prefix``; returns the run ids."""
    root = Path(root)
    return [write_one(root, prefix, m, n_layers=n_layers, seq_len=seq_len, n_examples=n_examples,
                      d_model=d_model, vocab=vocab, n_pairs=n_pairs, seed=seed, patch_positions=patch_positions)
            for m in models]


STUDY_TASK = {"n_keys": 8, "n_values": 8, "n_pairs": 3}  # AR, 11 tokens: a patching study in seconds


def write_study_runs(root: str | Path, *, models=("bmojo", "mamba", "transformer"), prefix: str = "demo",
                     n_examples: int = 4, d_model: int = 16, seed: int = 0) -> list[str]:
    """Runs written as ``ssmlens demo`` writes them (``ssmlens.probes.study.run_patching_study``:
    patching by position and role, attribution, a cached clean run, the checkpoint) for
    tiny random models saved under ``root/checkpoints/<prefix>/``; returns the run ids."""
    from ssmlens.interp.tasks.registry import make_task as task_of
    from ssmlens.probes.study import run_patching_study

    root = Path(root)
    vocab = task_of("ar", **STUDY_TASK).vocab_size
    ids = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small only lose time to threads on a shared machine
    try:
        for name in models:
            model = build(name, vocab, d_model, 2, seed + zlib.crc32(name.encode()) % 10_000).eval()
            ckpt = model.save(root / "checkpoints" / prefix / name)
            run_patching_study(ckpt, root / prefix / name, STUDY_TASK, n_examples, task="ar", seed=seed,
                               cache_examples=n_examples, overwrite=True, progress=False)
            ids.append(f"{prefix}/{name}")
    finally:
        torch.set_num_threads(threads)
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    args = p.parse_args(argv)
    ids = write_sample_store(args.root, seq_len=args.seq_len, n_examples=args.examples, n_layers=args.layers,
                             d_model=args.d_model, n_pairs=8 if args.seq_len >= 64 else 4)
    print("\n".join(ids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
