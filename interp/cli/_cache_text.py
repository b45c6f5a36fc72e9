"""What ``ssmlens cache`` needs for pretrained models and big prompt sets: text prompt
sets (``--prompts``), loading any local checkpoint (``ssmlens.load_model``: Hugging Face
directories too) in a ``--dtype`` on a ``--device``, forwards sized by a token budget,
and keeping only the positions of one role (``--positions``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ssmlens.interp.tasks.text_prompts import PROMPT_SETS

    p.add_argument("--prompts", choices=sorted(PROMPT_SETS), default=None,
                   help="a text prompt set instead of --task (CHECKPOINT may be any local checkpoint, "
                        "Hugging Face directories too)")
    p.add_argument("--seq-len", type=int, default=256, dest="seq_len",
                   help="tokens per prompt of --prompts (default: 256)")
    p.add_argument("--token-budget", type=int, default=None, dest="token_budget",
                   help="tokens per forward: rows = budget // sequence length (overrides --batch-size)")
    p.add_argument("--positions", default=None,
                   help="keep only the positions of this role (e.g. query, last) in every cached hook")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 (default: as stored)")
    p.add_argument("--device", default=None, help="e.g. cuda (default: cuda for --prompts when present, else cpu)")


def load_prompt_study(args) -> tuple:
    """(model, checkpoint path, prompt set name, its settings, batch) for ``--prompts``."""
    from ssmlens.interp.tasks.text_prompts import make_prompt_set
    from ssmlens.models.loader import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, dtype=args.dtype, device=device)
    settings = {"seq_len": args.seq_len, "seed": args.seed}
    batch = make_prompt_set(args.prompts, model, args.n, args.seq_len, args.seed)
    return model, Path(args.checkpoint), args.prompts, settings, batch


def rows_per_forward(args, seq_len: int) -> int:
    """Examples per forward: ``--token-budget // seq_len`` (at least one), else ``--batch-size``."""
    if args.token_budget is None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        return args.batch_size
    if args.token_budget < 1:
        raise ValueError(f"--token-budget must be >= 1, got {args.token_budget}")
    return max(1, args.token_budget // seq_len)


def check_role(batch, role: str | None) -> None:
    if role is not None and role not in batch.roles:
        raise ValueError(f"--positions {role!r}: the batch has no such role; roles: {', '.join(sorted(batch.roles))}")


def keep_positions(name: str, value: Tensor, where: Tensor | None, model_type: str) -> Tensor:
    """``value`` ``[rows, pos, ...]`` at the role positions ``where`` ``[rows, k]`` only
    (``[rows, k, ...]``; rows padded with -1 repeat position 0, the role array in the
    store says which are real)."""
    from ssmlens.interp.hook_names import dims_for

    if where is None:
        return value
    dims = dims_for(name, value.ndim, model_type)
    if len(dims) < 2 or dims[1] != "pos":
        raise ValueError(f"--positions needs hooks whose axis 1 is pos; {name} has axes {dims}")
    idx = where.clamp(min=0).to(value.device)
    return value.gather(1, idx.reshape(*idx.shape, *([1] * (value.ndim - 2))).expand(-1, -1, *value.shape[2:]))
