"""Random-weight Hugging Face checkpoints of real and tiny sizes, written locally.

Nothing can be downloaded here, so tests, the README, the notebook and the GPU benchmark
write their own checkpoint directories with transformers' ``save_pretrained``, from the
config dicts below (the published models' sizes: ``mamba-130m`` … ``pythia-1.4b``) or
tiny ones, next to a small byte-level BPE ``tokenizer.json`` trained on the spot with
the ``tokenizers`` library. A user with a real local copy loads that instead:
``ssmlens.load_model("path/to/mamba-130m-hf")``.

Needs ``transformers`` (imported on use).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# name -> (transformers class, config fields). Sizes of the published checkpoints
# (vocabularies padded as published: 50280 Mamba, 50288 Mamba-2, 50304 Pythia, 50257 GPT-2).
CONFIGS: dict[str, tuple[str, dict]] = {
    "mamba-130m": ("MambaForCausalLM", dict(hidden_size=768, num_hidden_layers=24, vocab_size=50280, state_size=16,
                                            expand=2, conv_kernel=4, tie_word_embeddings=True)),
    "mamba-1.4b": ("MambaForCausalLM", dict(hidden_size=2048, num_hidden_layers=48, vocab_size=50280, state_size=16,
                                            expand=2, conv_kernel=4, tie_word_embeddings=True)),
    "mamba2-130m": ("Mamba2ForCausalLM", dict(hidden_size=768, num_hidden_layers=24, vocab_size=50288,
                                              state_size=128, head_dim=64, num_heads=24, n_groups=1, expand=2,
                                              conv_kernel=4, chunk_size=256, tie_word_embeddings=True)),
    "mamba2-1.3b": ("Mamba2ForCausalLM", dict(hidden_size=2048, num_hidden_layers=48, vocab_size=50288,
                                              state_size=128, head_dim=64, num_heads=64, n_groups=1, expand=2,
                                              conv_kernel=4, chunk_size=256, tie_word_embeddings=True)),
    "pythia-160m": ("GPTNeoXForCausalLM", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                               intermediate_size=3072, vocab_size=50304, rotary_pct=0.25,
                                               max_position_embeddings=2048, use_parallel_residual=True,
                                               tie_word_embeddings=False)),
    "pythia-1.4b": ("GPTNeoXForCausalLM", dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                                               intermediate_size=8192, vocab_size=50304, rotary_pct=0.25,
                                               max_position_embeddings=2048, use_parallel_residual=True,
                                               tie_word_embeddings=False)),
    "gpt2": ("GPT2LMHeadModel", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    # tiny versions of each family, for tests, docs and --tiny runs (a CPU second or less)
    "tiny-mamba": ("MambaForCausalLM", dict(hidden_size=32, num_hidden_layers=2, vocab_size=1024, state_size=8,
                                            expand=2, conv_kernel=4, tie_word_embeddings=True)),
    "tiny-mamba2": ("Mamba2ForCausalLM", dict(hidden_size=32, num_hidden_layers=2, vocab_size=1024, state_size=8,
                                              head_dim=8, num_heads=8, n_groups=2, expand=2, conv_kernel=4,
                                              chunk_size=16, tie_word_embeddings=True)),
    "tiny-pythia": ("GPTNeoXForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, vocab_size=1024, rotary_pct=0.25,
                                               max_position_embeddings=512, use_parallel_residual=True,
                                               tie_word_embeddings=False)),
    "tiny-gpt2": ("GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=512, vocab_size=1024,
                                          bos_token_id=0, eos_token_id=0)),
}

BOS = "<|endoftext|>"


def hf_model(name: str | tuple[str, dict], device: str | torch.device = "cpu", seed: int = 0,
             perturb: float = 0.0, **overrides):
    """A randomly initialised transformers model of ``CONFIGS[name]`` (or a
    ``(class name, config fields)`` pair), built on ``device``, in eval mode.
    ``perturb``: add N(0, perturb²) to every parameter, so that norms, biases, D … are
    not their init values (tests compare every weight's role)."""
    import transformers

    cls_name, fields = CONFIGS[name] if isinstance(name, str) else name
    cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config").replace("LMHeadModel", "Config"))
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config_cls(**{**fields, **overrides}))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * perturb)
    return model.eval()


def write_random_checkpoint(name: str | tuple[str, dict], path: str | Path, *, dtype: torch.dtype | None = None,
                            device: str | torch.device = "cpu", seed: int = 0, perturb: float = 0.0,
                            tokenizer: bool = True, **overrides):
    """Write a random ``CONFIGS[name]`` checkpoint (config.json + model.safetensors) to
    ``path``, with a tiny trained ``tokenizer.json`` when ``tokenizer``; returns the
    transformers model (the reference to compare against)."""
    path = Path(path)
    model = hf_model(name, device=device, seed=seed, perturb=perturb, **overrides)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    if tokenizer:
        vocab = model.config.vocab_size
        write_tokenizer(path, vocab_size=min(vocab, 1024))
    return model


def corpus() -> list[str]:
    """Sentences to train a tiny tokenizer on: the fact templates of
    ``ssmlens.interp.tasks.text_prompts`` over its names and cities (so each becomes one
    token) and a little ordinary prose."""
    from ssmlens.interp.tasks.text_prompts import CITIES, FACT_TEMPLATE, NAMES, PREFIX

    prose = ("The quick brown fox jumps over the lazy dog. A state space model keeps a fading memory, "
             "and attention keeps every token. Mechanistic interpretability asks which parts carry recall. "
             "Where does the answer come from? The model reads the prompt and predicts the next token.")
    facts = [f"{PREFIX} " + FACT_TEMPLATE.format(key=n, value=c) for n in NAMES for c in CITIES]
    return [prose] * 20 + facts


def train_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE ``tokenizers.Tokenizer`` (GPT-2's scheme) with ``<|endoftext|>`` as
    token 0, trained on ``corpus()``: lossless on any text, whole words for the prompt sets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def write_tokenizer(path: str | Path, vocab_size: int = 1024) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (BOS/EOS/pad =
    ``<|endoftext|>``, as GPT-2 and the GPT-NeoX tokenizer have it) into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    train_tokenizer(vocab_size).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": BOS}, indent=2))
    return path / "tokenizer.json"
