"""Text in and out of a model, as TransformerLens users expect.

``model.to_tokens("The cat")`` -> int64 ``[1, pos]``, ``model.to_str_tokens(...)``,
``model.to_string(tokens)``, ``model.to_single_token(" Paris")``, with the tokenizer
that ``ssmlens.load_model`` found next to the weights (``tokenizer.json``, read by the
``tokenizers`` library) or one given by ``model.set_tokenizer(path)``.

Beginning of sequence: ``prepend_bos`` defaults per model family, as TransformerLens
has it for GPT-2 and Pythia (True: the ``<|endoftext|>`` token) and as Mamba was
trained and evaluated (False: mamba_ssm and lm-eval feed the text as it is). A list of
texts of unequal lengths is padded on the right with the pad token (the BOS/EOS token
when the tokenizer has no pad token), as TransformerLens does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

TOKENIZER_FILE = "tokenizer.json"

# model family (our model_type or Hugging Face's) -> prepend_bos default
PREPEND_BOS = {"gpt2": True, "gpt_neox": True, "transformer": True,
               "mamba": False, "mamba2": False, "mamba_ssm": False}


class NoTokenizerError(NotImplementedError):
    """A text method of a model that has no tokenizer attached (a NotImplementedError,
    as TransformerLens helpers that need one expect: they say what is missing)."""


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with the BOS / pad conventions of its model family."""

    def __init__(self, tokenizer, bos_id: int | None = None, pad_id: int | None = None,
                 prepend_bos: bool = False, source: str = "?"):
        self.tokenizer = tokenizer
        self.bos_id, self.prepend_bos, self.source = bos_id, bool(prepend_bos), source
        self.pad_id = pad_id if pad_id is not None else bos_id

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, vocab={self.vocab_size}, bos_id={self.bos_id}, "
                f"prepend_bos={self.prepend_bos})")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens added but the BOS, when asked)."""
        return self.encode_with_offsets(text, prepend_bos)[0]

    def encode_with_offsets(self, text: str, prepend_bos: bool | None = None) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's character span in ``text`` (the BOS gets ``(0, 0)``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
        if self.prepend_bos if prepend_bos is None else prepend_bos:
            if self.bos_id is None:
                raise ValueError(f"tokenizer {self.source} has no BOS token; use prepend_bos=False")
            ids, offsets = [self.bos_id, *ids], [(0, 0), *offsets]
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_str(self, token: int) -> str:
        """The text of one token as ``to_str_tokens`` shows it (``" Paris"``)."""
        return self.tokenizer.decode([int(token)], skip_special_tokens=False)


def find_tokenizer(directory: str | Path) -> Path | None:
    """``directory/tokenizer.json`` if it exists."""
    f = Path(directory) / TOKENIZER_FILE
    return f if f.is_file() else None


def _special_id(tok, directory: Path, key: str, config: dict) -> int | None:
    """A special token's id from tokenizer_config.json, else the model config's
    ``{key}_id`` when the tokenizer knows it, else ``<|endoftext|>`` (GPT-2 / NeoX)."""
    tc = directory / "tokenizer_config.json"
    if tc.is_file():
        try:
            value = json.loads(tc.read_text()).get(key)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return tok.token_to_id(value)
    value = config.get(f"{key}_id")
    if isinstance(value, int) and 0 <= value < tok.get_vocab_size(with_added_tokens=True):
        return value
    if key == "bos_token":
        return tok.token_to_id("<|endoftext|>")
    return None


def load_tokenizer(source: str | Path, family: str | None = None, config: dict | None = None,
                   prepend_bos: bool | None = None) -> Tokenizer:
    """A ``Tokenizer`` from a ``tokenizer.json`` file or a directory holding one.

    family: the model family whose BOS convention applies (``PREPEND_BOS``); config:
    the model's config.json (its ``bos_token_id`` / ``pad_token_id``)."""
    from tokenizers import Tokenizer as HFTokenizer

    source = Path(source)
    file = source / TOKENIZER_FILE if source.is_dir() else source
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer file {file}")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:  # the Rust library raises plain Exceptions for malformed files
        raise ValueError(f"corrupt tokenizer file {file}: {e}") from None
    config = config or {}
    bos = _special_id(tok, file.parent, "bos_token", config)
    pad = _special_id(tok, file.parent, "pad_token", config)
    default = PREPEND_BOS.get(family or "", False) and bos is not None
    return Tokenizer(tok, bos_id=bos, pad_id=pad, prepend_bos=default if prepend_bos is None else prepend_bos,
                     source=str(file))


class TextMixin:
    """Text methods of every ``LanguageModel``; they need ``model.tokenizer``."""

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The attached tokenizer, or None (as TransformerLens has it; the text methods
        then raise ``NoTokenizerError``)."""
        return self.__dict__.get("_tokenizer")

    def require_tokenizer(self) -> Tokenizer:
        """The tokenizer; a ``NoTokenizerError`` saying how to attach one if there is none."""
        tok = self.__dict__.get("_tokenizer")
        if tok is None:
            raise NoTokenizerError(
                f"this {type(self).__name__} has no tokenizer: load a checkpoint directory that holds "
                f"{TOKENIZER_FILE} with ssmlens.load_model(path), or attach one with "
                "model.set_tokenizer('path/to/tokenizer.json')")
        return tok

    @property
    def has_tokenizer(self) -> bool:
        return self.__dict__.get("_tokenizer") is not None

    def set_tokenizer(self, tokenizer: Tokenizer | str | Path | None, prepend_bos: bool | None = None) -> None:
        """Attach a tokenizer (a ``Tokenizer`` or a path to ``tokenizer.json`` / its
        directory); None removes it. ``prepend_bos`` overrides the family default."""
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            tokenizer = load_tokenizer(tokenizer, family=getattr(self, "model_type", None))
        if tokenizer is not None and prepend_bos is not None:
            tokenizer.prepend_bos = bool(prepend_bos)
        if tokenizer is not None and tokenizer.vocab_size > self.cfg.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens, more than the "
                             f"model's vocab_size {self.cfg.vocab_size}")
        self.__dict__["_tokenizer"] = tokenizer

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None,
                  move_to_device: bool = True) -> Int[Tensor, "batch pos"]:
        """int64 ``[batch, pos]`` token ids of a text or a list of texts (right-padded)."""
        tok = self.require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("to_tokens needs at least one text")
        rows = [tok.encode(t, prepend_bos) for t in texts]
        width = max(len(r) for r in rows)
        if width == 0:
            raise ValueError("to_tokens: the text has no tokens (an empty string without prepend_bos)")
        if any(len(r) < width for r in rows) and tok.pad_id is None:
            raise ValueError(f"texts of different lengths need a pad token; tokenizer {tok.source} has none")
        out = torch.full((len(rows), width), tok.pad_id if tok.pad_id is not None else 0, dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
        return out.to(self._device()) if move_to_device else out

    def to_str_tokens(self, input: str | Tensor | Sequence[int], prepend_bos: bool | None = None
                      ) -> list[str] | list[list[str]]:
        """Each token as text: a list for a text or a 1-D / ``[1, pos]`` tensor, a list of
        lists for a ``[batch, pos]`` tensor."""
        tok = self.require_tokenizer()
        if isinstance(input, str):
            return [tok.token_str(i) for i in tok.encode(input, prepend_bos)]
        ids = torch.as_tensor(input)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim == 1:
            return [tok.token_str(i) for i in ids.tolist()]
        if ids.ndim == 2:
            return [[tok.token_str(i) for i in row] for row in ids.tolist()]
        raise ValueError(f"to_str_tokens takes a text, ids [pos] or [batch, pos]; got shape {tuple(ids.shape)}")

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """The text of ids ``[pos]`` (a str) or ``[batch, pos]`` (a list of str)."""
        ids = torch.as_tensor(tokens)
        if ids.ndim == 1:
            return self.require_tokenizer().decode(ids.tolist())
        if ids.ndim == 2:
            return [self.require_tokenizer().decode(row) for row in ids.tolist()]
        raise ValueError(f"to_string takes ids [pos] or [batch, pos]; got shape {tuple(ids.shape)}")

    def to_single_token(self, text: str) -> int:
        """The id of a text that is exactly one token (``" Paris"``); else a ValueError."""
        tok = self.require_tokenizer()
        ids = tok.encode(text, prepend_bos=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {[tok.token_str(i) for i in ids]}")
        return ids[0]
