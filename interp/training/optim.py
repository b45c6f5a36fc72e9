"""Model construction and the AdamW optimizer of a training run."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssmlens.models.registry import build_model

# Parameters that are not weights in the usual sense and must not shrink towards 0:
# Mamba's A_log and D (mamba_ssm marks them ``_no_weight_decay``), norms and biases.
_NO_DECAY_SUFFIXES = ("A_log", ".D", "bias")


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def build_model_seeded(config, vocab_size: int) -> nn.Module:
    """The model of ``config`` initialised from ``config.seed`` alone.

    The global RNG is forked, so building a model neither depends on nor disturbs
    the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(
            config.model,
            vocab_size=vocab_size,
            d_model=config.d_model,
            n_layers=config.n_layers,
            **config.model_config,
        )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices (and embeddings) decay; vectors, norms and SSM dynamics do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.endswith(_NO_DECAY_SUFFIXES) or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; the fused CUDA kernel on GPUs (one launch per step)."""
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2), **kwargs
    )


def auxiliary_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The extra losses a model reports from its last forward (MoE load balancing,
    B'MOJO's innovation predictor); a model without ``auxiliary_losses`` has none."""
    fn = getattr(model, "auxiliary_losses", None)
    if fn is None:
        return {}
    losses = fn() or {}
    return {str(k): v for k, v in losses.items() if v is not None}
