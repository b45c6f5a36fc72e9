"""One loader for every local checkpoint: ``ssmlens.load_model(path, dtype=, device=)``.

A directory is recognised by its ``config.json``:

- an ssmlens checkpoint (``"format": "ssmlens-checkpoint-1"``, written by ``model.save``);
- a Hugging Face directory (``config.json`` + ``*.safetensors`` or ``pytorch_model.bin``,
  sharded or not): the model comes from the config's ``model_type`` (or, without one,
  ``architectures``) through the importer table of ``ssmlens.models.registry``
  (``mamba``, ``mamba2``, ``gpt_neox``, ``gpt2``);
- state-spaces' original mamba_ssm format (``d_model``, ``n_layer``, ``ssm_cfg`` and a
  ``pytorch_model.bin``: ``state-spaces/mamba-130m``, ``mamba2-130m``, …).

Nothing is downloaded. ``.bin`` files are read with ``torch.load(weights_only=True)``.
Models are built on the meta device and the checkpoint's tensors are assigned to them,
so a 1.4B-parameter model is neither initialised randomly nor held twice. A
``tokenizer.json`` next to the weights (or the ``tokenizer=`` argument) is attached as
``model.tokenizer`` (``ssmlens.models.text``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssmlens.models.checkpoint import CONFIG_FILE, FORMAT, CheckpointError, load_state_checked

# Hugging Face class names -> model_type, for config.json files without a model_type.
HF_ARCHITECTURES = {
    "MambaForCausalLM": "mamba",
    "Mamba2ForCausalLM": "mamba2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPT2LMHeadModel": "gpt2",
}
MAMBA_SSM = "mamba_ssm"  # the pseudo model_type of state-spaces' original format


def _json_constant(obj: dict) -> Any:
    """transformers 5 writes non-finite floats as ``{"__float__": "Infinity"}``."""
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    return obj


def read_json_config(path: Path) -> dict:
    """``config.json`` of a checkpoint directory, with named errors."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"missing {cfg_file} (a checkpoint directory has config.json next to its weights)")
    try:
        cfg = json.loads(cfg_file.read_text(), object_hook=_json_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {cfg_file}: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"corrupt {cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def hf_model_type(cfg: dict, source: str) -> str:
    """The importer key of a non-ssmlens config: its ``model_type``, else the
    ``model_type`` of its first known ``architectures`` entry, else ``mamba_ssm`` for
    state-spaces' original format. An unknown one raises naming it and the supported."""
    from ssmlens.models.registry import hf_model_types

    if "model_type" in cfg:
        kind = cfg["model_type"]
    elif any(a in HF_ARCHITECTURES for a in cfg.get("architectures") or ()):
        kind = next(HF_ARCHITECTURES[a] for a in cfg["architectures"] if a in HF_ARCHITECTURES)
    elif "d_model" in cfg and "n_layer" in cfg:
        kind = MAMBA_SSM
    else:
        kind = None
    if kind not in hf_model_types():
        archs = cfg.get("architectures")
        what = f"model_type {kind!r}" if kind else "no model_type"
        what += f" (architectures {archs})" if archs else ""
        raise CheckpointError(f"{source}: unsupported architecture: {what}; supported model types: "
                              f"{', '.join(hf_model_types())} (Hugging Face classes: "
                              f"{', '.join(sorted(HF_ARCHITECTURES))})")
    return kind


def _load_file(f: Path) -> dict[str, torch.Tensor]:
    """Tensors of one weights file (safetensors, or a pickled state dict read with
    ``weights_only=True``), with the file named in any error."""
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle raise their own types for truncated files
        raise CheckpointError(f"corrupt weights file {f}: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{f} does not hold a state dict of tensors")
    return state


def weight_files(path: Path) -> list[Path]:
    """The weights files of a Hugging Face directory: the shards an index names, else
    every ``*.safetensors``, else ``pytorch_model*.bin``."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"corrupt {index}: {e}") from None
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise CheckpointError(f"{index} names missing weights file(s): {', '.join(missing)}")
            return [path / n for n in names]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"no weights in {path}: expected *.safetensors or pytorch_model.bin")
    return files


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face / mamba_ssm directory's weights files (CPU)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(path)):
        state.update(_load_file(f))
    return state


def build_loaded(cls, cfg, state: dict[str, torch.Tensor], source: str,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A ``cls(cfg)`` holding ``state`` (every tensor checked by name and shape), on
    ``device`` in ``dtype`` (default: CPU, the checkpoint's dtype). Built on the meta
    device, so nothing is initialised randomly."""
    with torch.device("meta"):
        model = cls(cfg)
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
             for k, v in state.items()}
    load_state_checked(model, state, source=source, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - load_state_checked names missing tensors first
        raise CheckpointError(f"{source}: tensors not in the checkpoint: {', '.join(left[:5])}")
    return model.eval()


def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
               tokenizer: str | Path | bool | None = None):
    """Load a local checkpoint directory (module docstring) in eval mode.

    dtype: e.g. ``torch.bfloat16`` or ``"bfloat16"`` (default: as stored); device:
    e.g. ``"cuda"`` (default: CPU). tokenizer: a directory or ``tokenizer.json`` to
    attach instead of the one next to the weights; ``False``: none.
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    cfg = read_json_config(path)
    if cfg.get("format") == FORMAT:
        from ssmlens.models.checkpoint import load_model as load_ssmlens

        model = load_ssmlens(path, device=device or "cpu")
        model = model.to(dtype=dtype) if dtype is not None else model
        family = model.model_type
    else:
        from ssmlens.models.registry import hf_importer

        family = hf_model_type(cfg, source=str(path / CONFIG_FILE))
        model = hf_importer(family, source=str(path))(path, device=device, dtype=dtype)
    if tokenizer is not False:
        from ssmlens.models.text import find_tokenizer, load_tokenizer

        source = Path(tokenizer) if tokenizer not in (None, True) else find_tokenizer(path)
        if source is not None:
            model.set_tokenizer(load_tokenizer(source, family=family, config=cfg))
        elif tokenizer is True:
            raise CheckpointError(f"no tokenizer.json in {path}")
    return model.eval()


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or its name (``"bfloat16"``, ``"bf16"``, ``"fp16"`` …)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype (bfloat16, float16, float32), got {dtype!r}")
    return value
