"""Checkpoints: ``model.save(dir)`` writes ``config.json`` + ``model.safetensors``;
``load_model(dir)`` rebuilds any registered model and checks every tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "ssmlens-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or does not fit the model."""


def weights_digest(directory: str | Path) -> str:
    """sha256 of a checkpoint's tensors (names, dtypes, shapes and bytes, in name order):
    tells a retrained checkpoint at the same path from the one a stored result was
    computed on. Not of the file's bytes: safetensors' header order can differ between
    processes for the same weights."""
    from safetensors import safe_open

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in checkpoint directory {directory}")
    digest = hashlib.sha256()
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):
                t = f.get_tensor(name).contiguous()
                digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"corrupt weights file {path}: {e}") from None
    return digest.hexdigest()


def save_model(model, directory: str | Path) -> Path:
    """Write the model's config and weights; returns the directory.

    Files are written under temporary names and renamed, so an interrupted save
    never leaves a directory that looks like a whole checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "model_type": model.model_type, "config": model.config_dict()}
    tmp_w, tmp_c = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": FORMAT, "model_type": model.model_type})
    tmp_c.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_w, directory / WEIGHTS_FILE)
    os.replace(tmp_c, directory / CONFIG_FILE)
    return directory


def read_config(directory: str | Path) -> dict:
    """The ``config.json`` of an ssmlens checkpoint, with clear errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"missing checkpoint file {cfg_path}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt {cfg_path}: {e}") from None
    if meta.get("format") != FORMAT or "model_type" not in meta:
        raise CheckpointError(f"{cfg_path} is not an ssmlens checkpoint config (format {meta.get('format')!r})")
    return meta


def read_hf_config(path: str | Path) -> dict:
    """``config.json`` of a local Hugging Face checkpoint directory, checked."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"Hugging Face checkpoint directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"missing {cfg_file} (a Hugging Face checkpoint directory has config.json)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt {cfg_file}: {e}") from None


def load_state_checked(model, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load ``state`` into ``model``, naming every missing, unexpected or mis-shaped tensor
    (``assign``: the tensors become the parameters, as a model built on the meta device needs)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:10]))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state, strict=True, assign=assign)


def load_model(directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model saved in ``directory`` (any registered model type)."""
    from ssmlens.models.registry import model_class

    directory = Path(directory)
    meta = read_config(directory)
    cls = model_class(meta["model_type"])
    try:
        cfg = cls.config_class(**meta["config"])
    except TypeError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: config does not fit {cls.__name__}: {e}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"missing checkpoint file {weights}")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"corrupt weights file {weights}: {e}") from None
    model = cls(cfg)
    load_state_checked(model, state, source=str(directory))
    return model.to(device)
