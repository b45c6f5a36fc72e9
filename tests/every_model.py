"""Build a small, fully exercised instance of any registered model, for the tests that
must hold for every model (``ssmlens.models.model_names()``, so models registered
later are covered without editing the tests)."""

from __future__ import annotations

import dataclasses

import torch

from ssmlens.models import model_class

V = 40

# Small settings, applied where the model's config has the field.
SMALL = dict(vocab_size=V, d_model=16, n_layers=2, d_state=4, n_heads=2, n_experts=4, d_ff=32,
             capacity_factor=1.0, window=3, memory_size=2, threshold=1.0, n_ctx=64, scan_backend="torch",
             d_head=8)  # Mamba-2: 4 heads of 8 channels at d_model 16


def build_small(name: str, seed: int = 0, **overrides):
    """A small ``name`` model in eval mode whose data-dependent paths all run: parameters
    that start at zero (B'MOJO's innovation predictor) are randomized, so tokens get
    written to its memory, and MoE routers are sharpened, so experts overflow."""
    cls = model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    cfg = {k: v for k, v in {**SMALL, **overrides}.items() if k in fields}
    torch.manual_seed(seed)
    model = cls(cls.config_class(**cfg))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2 and not bool(p.any()):
                p.normal_(0, 0.4)
            if pname.endswith("router.weight"):
                p.normal_(0, 2.0)
    return model.eval()


def tokens(b: int = 2, L: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))
