"""``ssmlens demo``: the main job on local defaults.

Builds a Mamba and a Transformer, caches their internals on a synthetic batch and
prints a short summary of what was cached (grows as the workbench grows).
"""

from __future__ import annotations

NAME = "demo"
HELP = "run the end-to-end demo on local defaults (CPU)"


def add_arguments(parser) -> None:
    parser.add_argument("--runs", default="runs", help="directory for checkpoints and run stores (default: runs)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import torch

    from models import Mamba, Transformer

    torch.manual_seed(args.seed)
    tokens = torch.randint(0, 64, (4, 32))
    for model in (Mamba(vocab_size=64, d_model=64, n_layers=2), Transformer(vocab_size=64, d_model=64, n_layers=2)):
        logits, cache = model.run_with_cache(tokens)
        print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"{len(cache)} cached hooks, logits {tuple(logits.shape)}")
        for name in list(cache.keys())[:3] + [k for k in cache.keys() if "ssm_state" in k or "pattern" in k][:1]:
            print(f"  {name:36s} {tuple(cache[name].shape)}")
    return 0
